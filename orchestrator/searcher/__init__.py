"""SEARCHER: the detector, then its tools (one module each, listed in `registry`)."""
