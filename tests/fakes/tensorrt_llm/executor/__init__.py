"""Contract fake of `tensorrt_llm.executor` (TensorRT-LLM 1.2.1; not TensorRT-LLM)."""

from tensorrt_llm.executor.request import LoRARequest
from tensorrt_llm.executor.result import CompletionOutput, GenerationResult
from tensorrt_llm.executor.utils import RequestError

__all__ = ["CompletionOutput", "GenerationResult", "LoRARequest", "RequestError"]
