"""Stage timestamps relative to the request's start: the response's timings and the stage metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from navig.orchestrator.metrics import Metrics
from navig.orchestrator.results import Emit, StageTiming


class Timeline:
    def __init__(self, emit: Emit, metrics: Metrics, started: float | None = None) -> None:
        """`started`: the perf_counter() at which the request was accepted (default: now)."""
        self._start = time.perf_counter() if started is None else started
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
            self.record(name, start, self.elapsed_ms() - start)

    def record(self, name: str, start_ms: float, duration_ms: float) -> None:
        timing = StageTiming(name, round(start_ms, 3), round(duration_ms, 3))
        self.stages.append(timing)
        self._metrics.stage_latency.labels(name).observe(timing.duration_ms / 1000)
        self._emit(timing)
