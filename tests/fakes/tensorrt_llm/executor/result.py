"""Contract fake of `tensorrt_llm/executor/result.py` (TensorRT-LLM 1.2.1; not TensorRT-LLM).

`GenerationResult` as in result.py @ a678b91a. Whether a result is sync or async is fixed when it is
created:
- Created inside a running event loop, it has an asyncio queue. `async for`, `await` and `aresult()`
  work on it.
- Created anywhere else, it has a `queue.Queue`. `for`, `result()` work on it, and the async API
  fails with the real assertion.
Stricter than the real one: the sync API on an async-mode result raises here. The real one warns,
then busy-waits on the event loop's thread and "taints" the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from dataclasses import dataclass, field
from typing import Any, Literal

from tensorrt_llm.executor.utils import RequestError, has_event_loop

NO_LOOP = (
    "The asyncio event loop was not present during initialization, so async operations are not available."
)


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] | None = field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list[Any] | None = field(default_factory=list)
    prompt_logprobs: list[Any] | None = field(default_factory=list)
    finish_reason: Literal["stop", "length", "timeout", "cancelled"] | None = None
    stop_reason: int | str | None = None
    generation_logits: Any = None
    additional_context_outputs: dict[str, Any] | None = None
    additional_generation_outputs: dict[str, Any] | None = None
    disaggregated_params: Any = None
    request_perf_metrics: Any = None
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)
    _last_logprobs_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]

    @property
    def logprobs_diff(self) -> list[Any]:
        return self.logprobs[self._last_logprobs_len :]


@dataclass(frozen=True)
class FakeResponse:
    """What the fake executor hands a result: new tokens, or a per-request error."""

    token_ids: list[int] = field(default_factory=list)
    is_final: bool = False
    finish_reason: str | None = None
    error: str | None = None


class _SyncApiInAsyncMode:
    def get(self, timeout: float | None = None) -> Any:
        raise RuntimeError(
            "fake tensorrt_llm: sync API (for/result()) on a result created inside an event loop; the real "
            "LLM API then busy-waits on the loop's thread and taints the queue (MixedSyncAsyncAPIError)"
        )


class GenerationResult:
    def __init__(
        self, request_id: int, sampling_params: Any, streaming: bool, executor: Any, tokenizer: Any
    ) -> None:
        self._request_id = request_id
        self.sampling_params = sampling_params
        self._streaming = streaming
        self._executor = executor
        self.tokenizer = tokenizer
        self._done = False
        self._aborted = False
        if has_event_loop():
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self.aqueue: asyncio.Queue[FakeResponse] | None = asyncio.Queue()
            self.queue: Any = _SyncApiInAsyncMode()
        else:
            self._loop, self.aqueue, self.queue = None, None, queue.Queue()
        self._outputs = [CompletionOutput(i) for i in range(sampling_params.best_of)]

    # --- the executor side -------------------------------------------------------------------------
    def _put(self, response: FakeResponse) -> None:
        """Called from the executor thread."""
        if self.aqueue is None:
            self.queue.put(response)
            return
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody reads this result any more
            self._loop.call_soon_threadsafe(self.aqueue.put_nowait, response)

    def _handle_response(self, response: FakeResponse) -> None:
        if response.error is not None:  # GenerationExecutor._handle_background_error: this request only
            raise RequestError(response.error)
        output = self._outputs[0]
        output._last_token_ids_len = len(output.token_ids)
        output.token_ids.extend(response.token_ids)
        self._done = response.is_final
        if response.finish_reason is not None:
            output.finish_reason = response.finish_reason
        if self.sampling_params.detokenize and self.tokenizer is not None:
            output._last_text_len = len(output.text)
            output.text = self.tokenizer.decode(output.token_ids)

    # --- the public surface ------------------------------------------------------------------------
    @property
    def request_id(self) -> int:
        return self._request_id

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs[: self.sampling_params.n]

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self._executor.abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def _result_step(self, timeout: float | None = None) -> None:
        self._handle_response(self.queue.get(timeout=timeout))

    async def _aresult_step(self) -> None:
        assert self.aqueue is not None, NO_LOOP
        self._handle_response(await self.aqueue.get())

    def result(self, timeout: float | None = None) -> GenerationResult:
        while not self._done:
            self._result_step(timeout)
        return self

    async def aresult(self) -> GenerationResult:
        while not self._done:
            await self._aresult_step()
        return self

    def __await__(self) -> Any:
        return self.aresult().__await__()

    def __iter__(self) -> GenerationResult:
        return self

    def __next__(self) -> GenerationResult:
        if self._done:
            raise StopIteration
        self._result_step()
        return self

    def __aiter__(self) -> GenerationResult:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        await self._aresult_step()
        return self
