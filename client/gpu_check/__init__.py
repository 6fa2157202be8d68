"""`navig gpu-check`: one request to every model of a served repository, compared with the cpu profile."""
