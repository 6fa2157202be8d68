"""Contract fake (not TensorRT-LLM): the release whose API this fake follows."""

__version__ = "1.2.1"
