"""Contract fake of `tensorrt_llm/executor/utils.py` (TensorRT-LLM 1.2.1; not TensorRT-LLM)."""

import asyncio


def has_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class RequestError(RuntimeError):
    """The error raised when the request is failed (one request; the executor runs on)."""
