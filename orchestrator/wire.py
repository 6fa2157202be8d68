"""Pipeline results <-> `navig.v1` protobuf messages: the only module that knows both."""

from __future__ import annotations

import dataclasses

from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.results import (
    Component,
    Degradation,
    Event,
    Evidence,
    Outcome,
    ReasoningDelta,
    StageTiming,
)

COMPONENTS = {
    Component.VLM_GUESSER: pb.VLM_GUESSER,
    Component.EVIDENCE_GUESSER: pb.EVIDENCE_GUESSER,
    Component.NONE: pb.NONE,
}


def evidence(item: Evidence) -> pb.Evidence:
    return pb.Evidence(
        tool=item.tool, query=item.query, result=item.result, source=item.source, score=item.score,
        country_code=item.country_code, latitude=item.latitude, longitude=item.longitude,
    )  # fmt: skip


def timing(item: StageTiming) -> pb.StageTiming:
    return pb.StageTiming(stage=item.stage, start_ms=item.start_ms, duration_ms=item.duration_ms)


def event(item: Event) -> pb.LocateEvent:
    if isinstance(item, ReasoningDelta):
        return pb.LocateEvent(reasoning=pb.ReasoningDelta(text=item.text))
    if isinstance(item, Evidence):
        return pb.LocateEvent(evidence=evidence(item))
    return pb.LocateEvent(stage=timing(item))


def response(
    outcome: Outcome,
    request_id: str,
    total_ms: float,
    models: dict[str, str],
    with_reasoning: bool,
    with_evidence: bool,
) -> pb.LocateResponse:
    message = pb.LocateResponse(
        answered_by=COMPONENTS[outcome.answered_by],
        reasoning=outcome.reasoning if with_reasoning else "",
        evidence=[evidence(e) for e in outcome.evidence] if with_evidence else [],
        timings=[timing(t) for t in outcome.timings],
        models=[pb.ModelVersion(name=name, version=version) for name, version in models.items()],
        degraded=[_degradation(d) for d in outcome.degraded],
        request_id=request_id,
        reasons=outcome.reasons,
        guesser_output=outcome.guesser_output,
        total_ms=round(total_ms, 3),
    )
    if outcome.location is not None:
        message.location.CopyFrom(pb.Location(**dataclasses.asdict(outcome.location)))
    return message


def _degradation(item: Degradation) -> pb.Degradation:
    return pb.Degradation(component=item.component, reason=item.reason)
