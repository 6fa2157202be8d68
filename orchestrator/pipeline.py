"""One photo through REASONER || SEARCHER -> GUESSER, as asyncio tasks over Triton.

REASONER and SEARCHER start together and run concurrently (the response's stage timings show
the overlap); the GUESSER waits for both. Structured concurrency (TaskGroup): when the deadline
passes or the client goes away every call still running is cancelled, none is leaked.
"""

from __future__ import annotations

import asyncio

import numpy as np

from navig.model_repository import contract
from navig.orchestrator import guesser, prompts
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded, InvalidInput, first_error
from navig.orchestrator.images import ImageRejected, decode_image, downscale
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.models import Models
from navig.orchestrator.options import RunOptions, server_defaults
from navig.orchestrator.results import Emit, Outcome, ReasoningDelta
from navig.orchestrator.searcher.search import Findings, Searcher
from navig.orchestrator.settings import Settings
from navig.orchestrator.timeline import Timeline


class Pipeline:
    def __init__(self, settings: Settings, models: Models, searcher: Searcher, metrics: Metrics) -> None:
        self.settings = settings
        self.models = models
        self.searcher = searcher
        self.metrics = metrics

    def required_models(self) -> list[str]:
        """The Triton models a request that sets no option calls: health depends on them."""
        defaults = server_defaults(self.settings, self.searcher.tools)
        reference = defaults.pipeline == "reference"
        models = [contract.DETECTOR_REFERENCE if reference else contract.DETECTOR]
        for tool in self.searcher.tools:
            if tool.name in defaults.tools:
                models += tool.models_in(defaults.pipeline)
        models += [contract.REASONER] if defaults.use_reasoner else []
        models += [contract.VLM] if defaults.use_vlm_guesser else []
        return list(dict.fromkeys(models))

    async def run(
        self, data: bytes, options: RunOptions, deadline: Deadline, emit: Emit, accepted: float | None = None
    ) -> Outcome:
        """`accepted`: perf_counter() when the call arrived; the wait until now is the "queue" stage."""
        timeline = Timeline(emit, self.metrics, accepted)
        timeline.record("queue", 0.0, timeline.elapsed_ms())  # waiting for an admission slot
        s = self.settings
        with timeline.stage("decode"):
            try:
                image = await asyncio.to_thread(
                    decode_image, data, s.max_image_bytes, s.max_image_pixels, s.min_image_side
                )
            except ImageRejected as exc:
                raise InvalidInput(str(exc)) from None
        vlm_view = downscale(image, s.vlm_image_max_side, s.min_image_side)
        try:
            async with asyncio.timeout_at(_loop_time(deadline)):
                reasoning, findings = await self._reason_and_search(
                    image, vlm_view, options, deadline, timeline, emit
                )
                with timeline.stage("guesser"):
                    verdict = await guesser.decide(
                        self.models,
                        vlm_view,
                        reasoning,
                        findings,
                        options.use_vlm_guesser,
                        deadline,
                        self.searcher.evidence_order(),
                        options.pipeline,
                        options.max_new_tokens,
                    )
        except TimeoutError:
            raise DeadlineExceeded("deadline exceeded") from None
        return Outcome(
            location=verdict.location,
            answered_by=verdict.answered_by,
            reasoning=reasoning,
            evidence=findings.evidence,
            timings=timeline.stages,
            degraded=findings.degraded + verdict.degraded,
            reasons=verdict.reasons,
            guesser_output=verdict.guesser_output,
        )

    async def _reason_and_search(
        self, image: np.ndarray, vlm_view: np.ndarray, options: RunOptions, deadline: Deadline,
        timeline: Timeline, emit: Emit,
    ) -> tuple[str, Findings]:  # fmt: skip
        try:
            async with asyncio.TaskGroup() as tasks:
                reasoning = tasks.create_task(self._reason(vlm_view, options, deadline, timeline, emit))
                with timeline.stage("searcher"):
                    findings = await self.searcher.run(image, options, deadline, timeline, emit)
        except BaseExceptionGroup as group:  # the first failure tells the story; the rest were cancelled
            raise first_error(group) from None
        return reasoning.result(), findings

    async def _reason(
        self, image: np.ndarray, options: RunOptions, deadline: Deadline, timeline: Timeline, emit: Emit
    ) -> str:
        if not options.use_reasoner:
            return ""
        text = []
        with timeline.stage("reasoner"):
            async for piece in self.models.generate(
                contract.REASONER, prompts.REASONER, deadline, image, options.max_new_tokens
            ):
                text.append(piece)
                emit(ReasoningDelta(piece))
        return "".join(text)


def _loop_time(deadline: Deadline) -> float:
    """The deadline on the event loop's clock (both are monotonic, their origins may differ)."""
    return asyncio.get_running_loop().time() + deadline.remaining()
