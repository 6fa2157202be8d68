"""Pipeline results <-> `navig.v1` protobuf messages, both directions: the only module that knows both.

The server writes responses with `response`/`event`; the client reads them back into the same value
types (`navig.orchestrator.results`) with the `*_from_proto` functions. Light on purpose (protobuf
and dataclasses only): the client imports it without the serving stack.
"""

from __future__ import annotations

import dataclasses

from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.results import (
    Component,
    Degradation,
    Event,
    Evidence,
    Location,
    Outcome,
    ReasoningDelta,
    StageTiming,
)

PIPELINES = {"fast": pb.FAST, "reference": pb.REFERENCE}  # settings.PIPELINES <-> pb.PipelineMode
_PIPELINE_NAMES = {mode: name for name, mode in PIPELINES.items()}

COMPONENTS = {
    Component.VLM_GUESSER: pb.VLM_GUESSER,
    Component.EVIDENCE_GUESSER: pb.EVIDENCE_GUESSER,
    Component.NONE: pb.NONE,
}
_COMPONENT_NAMES = {wire: component.value for component, wire in COMPONENTS.items()}


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
    pipeline: str = "fast",
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
        pipeline=PIPELINES[pipeline],
    )
    if outcome.location is not None:
        message.location.CopyFrom(pb.Location(**dataclasses.asdict(outcome.location)))
    return message


def _degradation(item: Degradation) -> pb.Degradation:
    return pb.Degradation(component=item.component, reason=item.reason)


# --- reading: protobuf -> the same value types ------------------------------------------------------


def component_name(value: int) -> str:
    """The wire enum as "vlm_guesser", "evidence_guesser" or "none" ("unspecified" for anything else)."""
    return _COMPONENT_NAMES.get(value, "unspecified")


def pipeline_name(mode: int) -> str:
    """ "fast" or "reference"; "" from a server that does not say (older than pipeline modes)."""
    return _PIPELINE_NAMES.get(mode, "")


def location_from_proto(response: pb.LocateResponse) -> Location | None:
    """None when no component placed the photo."""
    loc = response.location
    if response.answered_by == pb.NONE or not loc.country_code:
        return None
    return Location(loc.country, loc.country_code, loc.city, loc.latitude, loc.longitude, loc.confidence)


def evidence_from_proto(e: pb.Evidence) -> Evidence:
    return Evidence(
        e.tool, e.query, e.result, e.source, e.score, e.country_code,
        e.latitude if e.HasField("latitude") else None,
        e.longitude if e.HasField("longitude") else None,
    )  # fmt: skip


def timing_from_proto(t: pb.StageTiming) -> StageTiming:
    return StageTiming(t.stage, t.start_ms, t.duration_ms)


def degradation_from_proto(d: pb.Degradation) -> Degradation:
    return Degradation(d.component, d.reason)
