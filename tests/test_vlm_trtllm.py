"""The TensorRT-LLM engine's cancellation, against the LLM API's documented result surface.

TensorRT-LLM cannot be installed here, so `FakeResult` stands in for
`tensorrt_llm.executor.result.GenerationResult` with the members our engine uses: `result(timeout)`
(raises `queue.Empty` when nothing arrived in time), `abort()`, and synchronous iteration over
streaming steps whose `outputs[0]` carries `token_ids_diff` / `text_diff`. Not run on a GPU.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from navig.model_repository.vlm_trtllm import TrtLlmVlm


@dataclass
class FakeResult:
    steps: int  # decode steps until it finishes by itself
    done_steps: int = 0
    was_aborted: bool = False
    outputs: list = field(default_factory=list)

    def _step(self) -> None:
        self.done_steps += 1
        tokens = list(range(self.done_steps))
        diff = [self.done_steps - 1]
        self.outputs = [SimpleNamespace(token_ids=tokens, text="x" * len(tokens), token_ids_diff=diff,
                                        text_diff="x")]  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.was_aborted or self.done_steps >= self.steps

    def result(self, timeout: float | None = None) -> FakeResult:
        if not self.finished:
            self._step()
            if not self.finished:
                raise queue.Empty
        return self

    def abort(self) -> None:
        self.was_aborted = True

    def aborted(self) -> bool:
        return self.was_aborted

    def __iter__(self) -> FakeResult:
        return self

    def __next__(self) -> FakeResult:
        if self.finished:
            raise StopIteration
        self._step()
        return self


def engine(results: list[FakeResult]) -> TrtLlmVlm:
    vlm = object.__new__(TrtLlmVlm)  # no tensorrt_llm here: only what generate_batch/stream touch
    pending = iter(results)

    def generate_async(prompt: dict, sampling_params: dict, streaming: bool = False) -> FakeResult:
        if (result := next(pending, None)) is None:
            raise RuntimeError("the executor refused the request")
        return result

    vlm.llm = SimpleNamespace(generate_async=generate_async)
    vlm._sampling = lambda **kwargs: kwargs
    vlm._guided = lambda **kwargs: kwargs
    vlm.tokenizer = SimpleNamespace(apply_chat_template=lambda *args, **kwargs: "prompt")
    return vlm


def test_batch_rows_are_aborted_when_their_request_is_cancelled_whatever_runs_beside_them():
    long_row, cancelled_row = FakeResult(steps=50), FakeResult(steps=1000)
    long_row_progress_at_abort = []

    def cancel_on_third_check() -> bool:
        long_row_progress_at_abort.append(long_row.done_steps)
        return len(long_row_progress_at_abort) >= 3

    first, second = engine([long_row, cancelled_row]).generate_batch(
        ["a", "b"], [None, None], [50, 1000], [None, None], [lambda: False, cancel_on_third_check]
    )
    assert cancelled_row.was_aborted and second.cancelled and len(second.token_ids) < 10
    assert long_row_progress_at_abort[-1] < 50  # aborted while the long row was still generating
    assert not long_row.was_aborted and not first.cancelled and first.token_ids == list(range(50))


def test_a_failure_while_submitting_aborts_the_rows_already_running():
    running = FakeResult(steps=1000)
    vlm = engine([running])  # the second generate_async finds no result: StopIteration
    with pytest.raises(RuntimeError):
        vlm.generate_batch(["a", "b"], [None, None], [9, 9], [None, None])
    assert running.was_aborted


def test_stream_aborts_and_says_so():
    result = FakeResult(steps=1000)
    checks = iter([False, False, True])
    pieces = list(engine([result]).stream("a", None, 1000, None, lambda: next(checks)))
    assert result.was_aborted and [p.cancelled for p in pieces] == [False, False, True]
    assert [t for p in pieces for t in p.token_ids] == [0, 1, 2]
