"""Typed, plain-Python views of the Geolocator's answers, for callers that should not touch protobuf.

The value types are the orchestrator's own (`navig.orchestrator.results`): one definition of a
location or a piece of evidence on both sides of the wire.

`LocateResult.from_proto` is the only place that reads the wire messages; everything in the client
(`navig locate`, `navig eval`, `navig profile`) works on these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.results import Component, Degradation, Evidence, Location, StageTiming

COMPONENTS = {getattr(pb, c.name): c.value for c in Component}  # wire enum -> "vlm_guesser", ...
__all__ = ["COMPONENTS", "Degradation", "Evidence", "LocateResult", "Location", "StageTiming"]


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
    extra: dict[str, Any] = field(default_factory=dict)  # client-side measurements (latency, ttfe)

    @classmethod
    def from_proto(cls, response: pb.LocateResponse) -> LocateResult:
        loc = response.location
        location = (
            Location(loc.country, loc.country_code, loc.city, loc.latitude, loc.longitude, loc.confidence)
            if response.answered_by != pb.NONE and loc.country_code
            else None
        )
        return cls(
            location=location,
            answered_by=COMPONENTS.get(response.answered_by, "unspecified"),
            reasoning=response.reasoning,
            evidence=[evidence_from_proto(e) for e in response.evidence],
            timings=[StageTiming(t.stage, t.start_ms, t.duration_ms) for t in response.timings],
            models={m.name: m.version for m in response.models},
            degraded=[Degradation(d.component, d.reason) for d in response.degraded],
            reasons=list(response.reasons),
            request_id=response.request_id,
            guesser_output=response.guesser_output,
            total_ms=response.total_ms,
        )

    def stage_ms(self) -> dict[str, float]:
        """Stage -> duration; a stage that ran more than once (it does not today) adds up."""
        out: dict[str, float] = {}
        for timing in self.timings:
            out[timing.stage] = out.get(timing.stage, 0.0) + timing.duration_ms
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evidence_from_proto(e: pb.Evidence) -> Evidence:
    return Evidence(
        e.tool, e.query, e.result, e.source, e.score, e.country_code,
        e.latitude if e.HasField("latitude") else None,
        e.longitude if e.HasField("longitude") else None,
    )  # fmt: skip
