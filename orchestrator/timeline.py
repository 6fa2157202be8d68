"""Stage timestamps relative to the request's start: the response's timings and the stage metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from navig.orchestrator.metrics import Metrics
from navig.orchestrator.results import Emit, StageTiming


class Timeline:
    def __init__(self, emit: Emit, metrics: Metrics) -> None:
        self._start = time.perf_counter()
        self._emit = emit
        self._metrics = metrics
        self.stages: list[StageTiming] = []

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self._start) * 1000

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the block; a stage that fails or is cancelled is recorded too."""
        start = self.elapsed_ms()
        try:
            yield
        finally:
            timing = StageTiming(name, round(start, 3), round(self.elapsed_ms() - start, 3))
            self.stages.append(timing)
            self._metrics.stage_latency.labels(name).observe(timing.duration_ms / 1000)
            self._emit(timing)
