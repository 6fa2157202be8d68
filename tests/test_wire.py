"""`orchestrator/wire.py` converts both ways: what the server writes, the client reads back unchanged."""

from __future__ import annotations

import pytest

from navig.client.results import LocateResult
from navig.orchestrator import wire
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.results import Component, Degradation, Evidence, Location, Outcome, StageTiming

KOELN = Location("Germany", "DE", "Köln", 50.9375, 6.9603, 0.75)  # values exact in float32 and double
EVIDENCE = [
    Evidence("ocr", "photo", "Köln Hbf", "ocr", 0.5),
    Evidence("map", "Köln", "Köln, NW", "geonames:2886242", 0.875, "DE", 50.9375, 6.9603),
]


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(KOELN, Component.VLM_GUESSER, "reasoning", EVIDENCE, [StageTiming("decode", 0.5, 1.25)],
                [Degradation("describer", "Triton model 'vlm' failed")], ["why"], '{"country": "Germany"}'),
        Outcome(None, Component.NONE, reasons=["no component could place the photo"]),
    ],
)  # fmt: skip
def test_a_response_reads_back_as_the_outcome_it_was_written_from(outcome: Outcome):
    message = wire.response(outcome, "req-1", 12.5, {"vlm": "1"}, with_reasoning=True, with_evidence=True)
    result = LocateResult.from_proto(pb.LocateResponse.FromString(message.SerializeToString()))
    assert result.location == outcome.location
    assert result.answered_by == outcome.answered_by.value
    assert (result.evidence, result.timings, result.degraded) == (outcome.evidence, outcome.timings,
                                                                   outcome.degraded)  # fmt: skip
    assert (result.reasoning, result.reasons, result.guesser_output) == (
        outcome.reasoning, outcome.reasons, outcome.guesser_output,
    )  # fmt: skip
    assert (result.request_id, result.total_ms, result.models) == ("req-1", 12.5, {"vlm": "1"})
    assert result.pipeline == "fast"  # the default


def test_the_response_names_the_pipeline_that_answered():
    outcome = Outcome(None, Component.NONE)
    for name in ("fast", "reference"):
        message = wire.response(outcome, "r", 1.0, {}, with_reasoning=True, with_evidence=True, pipeline=name)
        assert LocateResult.from_proto(message).pipeline == name
    assert LocateResult.from_proto(pb.LocateResponse()).pipeline == ""  # a server older than the modes


def test_every_component_has_a_wire_value_and_a_name():
    assert {wire.component_name(wire.COMPONENTS[c]) for c in Component} == {c.value for c in Component}
    assert wire.component_name(12345) == "unspecified"
