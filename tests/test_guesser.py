"""The GUESSER's decisions against a fake `Models`: fast, no Triton.

Every branch of `guesser.decide`: the accepted VLM answer with each confidence rule, a truncated or
malformed answer, a failing model (degraded), Triton gone or the deadline passed (raised), the VLM
switched off, and no component able to place the photo.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

from navig.model_repository import contract
from navig.orchestrator import prompts
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded, PipelineError, Unavailable
from navig.orchestrator.guesser import EVIDENCE_LINES, VLM_CONFIDENCE, Verdict, decide, evidence_lines
from navig.orchestrator.results import Component, Evidence
from navig.orchestrator.searcher.search import Findings
from navig.orchestrator.tools.base import Place

PHOTO = np.zeros((32, 32, 3), np.uint8)
ORDER = ("map", "ocr", "language", "guidebook", "describer")
COLOGNE = Place("Köln", "DE", 50.94, 6.96, 0.95, "Köln")


class FakeModels:
    """Answers every `generate` with `answer` (text) or raises it (an exception); records the calls."""

    def __init__(self, answer: str | Exception) -> None:
        self.answer = answer
        self.calls: list[dict] = []

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline) -> dict:
        raise AssertionError("the GUESSER only generates")

    async def generate(
        self, model: str, prompt: str, deadline: Deadline, image=None, max_tokens=None, json_schema=None
    ) -> AsyncIterator[str]:
        self.calls.append({"model": model, "max_tokens": max_tokens, "json_schema": json_schema})
        if isinstance(self.answer, Exception):
            raise self.answer
        yield self.answer[: len(self.answer) // 2]  # in two pieces, as a streaming model sends it
        yield self.answer[len(self.answer) // 2 :]


def answer(country: str, city: str, latitude: float, longitude: float) -> str:
    return json.dumps({"country": country, "city": city, "latitude": latitude, "longitude": longitude})


def run(models: FakeModels, findings: Findings, use_vlm: bool = True) -> Verdict:
    return asyncio.run(decide(models, PHOTO, "reasoning", findings, use_vlm, Deadline.after(10), ORDER))


@pytest.mark.parametrize(
    ("text", "places", "rule"),
    [
        (answer("Germany", "Köln", 50.93, 6.95), [COLOGNE], "city"),
        (answer("Germany", "Berlin", 52.52, 13.40), [COLOGNE], "country"),
        (answer("France", "Paris", 48.86, 2.35), [COLOGNE], "disagrees"),
        (answer("France", "Paris", 48.86, 2.35), [], "alone"),
    ],
)
def test_an_accepted_answer_gets_its_confidence_from_the_evidence(text: str, places: list[Place], rule: str):
    models = FakeModels(text)
    verdict = run(models, Findings(places=places))
    assert verdict.answered_by == Component.VLM_GUESSER and not verdict.degraded
    assert verdict.location is not None and verdict.location.confidence == VLM_CONFIDENCE[rule]
    assert verdict.guesser_output == text
    assert models.calls == [
        {
            "model": contract.VLM,
            "max_tokens": prompts.GUESS_MAX_TOKENS,
            "json_schema": prompts.GUESS_SCHEMA_JSON,
        }
    ]


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ('{"country": "Germany", "city": "Kö', "truncated"),
        ('{"country": "Germany", "city": "K\tln"}', "not JSON"),
        (answer("Atlantis", "x", 1, 2), "unknown country"),
        (answer("Germany", "Köln", 95, 6.95), "latitude 95"),
        (PipelineError("Triton model 'vlm' failed: out of memory"), "out of memory"),
    ],
)
def test_a_rejected_answer_or_a_failing_model_falls_back_to_the_evidence(output, reason: str):
    verdict = run(FakeModels(output), Findings(places=[COLOGNE]))
    assert verdict.answered_by == Component.EVIDENCE_GUESSER and verdict.location is not None
    assert verdict.location.country_code == "DE"
    (degraded,) = verdict.degraded
    assert degraded.component == "vlm_guesser" and reason in degraded.reason
    assert verdict.reasons[0].startswith("VLM GUESSER answer rejected")


@pytest.mark.parametrize("failure", [Unavailable("Triton is gone"), DeadlineExceeded("time is up")])
def test_triton_gone_or_the_deadline_passed_fail_the_request(failure: PipelineError):
    with pytest.raises(type(failure)):
        run(FakeModels(failure), Findings(places=[COLOGNE]))


def test_the_vlm_switched_off_is_never_called():
    models = FakeModels(answer("France", "Paris", 48.86, 2.35))
    verdict = run(models, Findings(places=[COLOGNE]), use_vlm=False)
    assert verdict.answered_by == Component.EVIDENCE_GUESSER and not verdict.degraded and not models.calls


def test_no_evidence_and_no_usable_answer_places_nothing():
    verdict = run(FakeModels('{"country": "Ger'), Findings())
    assert verdict.answered_by == Component.NONE and verdict.location is None
    assert [d.component for d in verdict.degraded] == ["vlm_guesser"]


def test_the_prompt_carries_evidence_by_tool_rank_then_score_without_the_detector():
    evidence = [
        Evidence("detector", "house", "house at [0, 0, 9, 9]", "detector", 0.99),
        Evidence("ocr", "photo", "Köln 3 km", "ocr", 0.8),
        Evidence("map", "Köln", "Köln, DE", "geonames:1", 0.5),
        Evidence("map", "Köln", "Köln, US", "geonames:2", 0.7),
        Evidence("plugin", "photo", "not in the order", "test", 1.0),
    ]
    lines = evidence_lines(Findings(evidence=evidence), ORDER)
    assert lines == ["map: Köln -> Köln, US", "map: Köln -> Köln, DE", "ocr: photo -> Köln 3 km"]
    many = Findings(evidence=[Evidence("ocr", "photo", str(i), "ocr", i / 100) for i in range(40)])
    assert len(evidence_lines(many, ORDER)) == EVIDENCE_LINES
