"""vlm: Qwen2-VL generation (transformers on cpu, TensorRT-LLM's LLM API on gpu)."""

from navig.model_repository.vlm_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
