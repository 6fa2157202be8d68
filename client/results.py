"""Typed, plain-Python views of the Geolocator's answers, for callers that should not touch protobuf.

The value types are the orchestrator's own (`navig.orchestrator.results`): one definition of a
location or a piece of evidence on both sides of the wire.

`LocateResult.from_proto` reads the wire messages with `navig.orchestrator.wire` (the one module that
converts both ways); everything in the client (`navig locate`, `navig eval`, `navig profile`) works on
these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from navig.orchestrator import wire
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.results import Degradation, Evidence, Location, StageTiming

__all__ = ["Degradation", "Evidence", "LocateResult", "Location", "StageTiming"]


@dataclass(frozen=True)
class LocateResult:
    location: Location | None  # None when no component could place the photo
    answered_by: str  # "vlm_guesser", "evidence_guesser" or "none"
    reasoning: str
    evidence: list[Evidence]
    timings: list[StageTiming]
    models: dict[str, str]  # model name -> version
    degraded: list[Degradation]
    reasons: list[str]
    request_id: str
    guesser_output: str
    total_ms: float  # server-side, from acceptance to answer
    pipeline: str = ""  # "fast" or "reference"; "" from a server older than pipeline modes
    cached: bool = False  # answered from the server's result cache (an earlier run's answer)
    extra: dict[str, Any] = field(default_factory=dict)  # client-side measurements (latency, ttfe)

    @classmethod
    def from_proto(cls, response: pb.LocateResponse) -> LocateResult:
        return cls(
            location=wire.location_from_proto(response),
            answered_by=wire.component_name(response.answered_by),
            reasoning=response.reasoning,
            evidence=[wire.evidence_from_proto(e) for e in response.evidence],
            timings=[wire.timing_from_proto(t) for t in response.timings],
            models={m.name: m.version for m in response.models},
            degraded=[wire.degradation_from_proto(d) for d in response.degraded],
            reasons=list(response.reasons),
            request_id=response.request_id,
            guesser_output=response.guesser_output,
            total_ms=response.total_ms,
            pipeline=wire.pipeline_name(response.pipeline),
            cached=response.cached,
        )

    def stage_ms(self) -> dict[str, float]:
        """Stage -> duration; a stage that ran more than once (it does not today) adds up."""
        out: dict[str, float] = {}
        for timing in self.timings:
            out[timing.stage] = out.get(timing.stage, 0.0) + timing.duration_ms
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
