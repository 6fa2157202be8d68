"""`navig profile`: load generation, Triton statistics and reports."""
