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

from navig.model_repository.vlm_trtllm import TrtLlmVlm


@dataclass
class FakeResult:
    steps: int  # decode steps until it finishes by itself
    done_steps: int = 0
    aborted: bool = False
    outputs: list = field(default_factory=list)

    def _step(self) -> None:
        self.done_steps += 1
        tokens = list(range(self.done_steps))
        diff = [self.done_steps - 1]
        self.outputs = [SimpleNamespace(token_ids=tokens, text="x" * len(tokens), token_ids_diff=diff,
                                        text_diff="x")]  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.aborted or self.done_steps >= self.steps

    def result(self, timeout: float | None = None) -> FakeResult:
        if not self.finished:
            self._step()
            if not self.finished:
                raise queue.Empty
        return self

    def abort(self) -> None:
        self.aborted = True

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
    vlm.llm = SimpleNamespace(generate_async=lambda prompt, sampling_params, streaming=False: next(pending))
    vlm._sampling = lambda **kwargs: kwargs
    vlm._guided = lambda **kwargs: kwargs
    vlm.tokenizer = SimpleNamespace(apply_chat_template=lambda *args, **kwargs: "prompt")
    return vlm


def test_batch_rows_are_aborted_when_their_request_is_cancelled():
    cancelled_row, other_row = FakeResult(steps=1000), FakeResult(steps=5)
    asked = []

    def cancel_on_third_check() -> bool:
        asked.append(1)
        return len(asked) >= 3

    first, second = engine([cancelled_row, other_row]).generate_batch(
        ["a", "b"], [None, None], [1000, 5], [None, None], [cancel_on_third_check, lambda: False]
    )
    assert cancelled_row.aborted and first.cancelled and len(first.token_ids) < 10
    assert not other_row.aborted and not second.cancelled and second.token_ids == [0, 1, 2, 3, 4]


def test_stream_aborts_and_says_so():
    result = FakeResult(steps=1000)
    checks = iter([False, False, True])
    pieces = list(engine([result]).stream("a", None, 1000, None, lambda: next(checks)))
    assert result.aborted and [p.cancelled for p in pieces] == [False, False, True]
    assert [t for p in pieces for t in p.token_ids] == [0, 1, 2]
