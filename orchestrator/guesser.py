"""GUESSER: the base VLM answers JSON under a grammar; the evidence guesser stands behind it.

The evidence guesser's answer is always computed (it is cheap). It is the answer when the VLM
GUESSER is off, fails, or writes something `answer.parse_answer` rejects; the response then says
so in `answered_by` and lists the VLM's rejection under `degraded`.

The reference pipeline asks with NAVIG's prompt assembly (`prompts.reference_guesser_prompt`, fed by
`reference_prompt`) and lets the VLM write freely (NAVIG has no grammar) within the request's token
budget; `answer.parse_lenient` reads it as NAVIG's parser would, then checks it as above. The evidence
guesser behind it is the product's safety net: NAVIG has none (an unparsable answer is a failure).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from navig.model_repository import contract
from navig.orchestrator import evidence_guesser, navig_reference, prompts
from navig.orchestrator.answer import InvalidAnswer, VlmAnswer, parse_answer, parse_lenient
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded, PipelineError, Unavailable
from navig.orchestrator.geo import haversine_km
from navig.orchestrator.models import Models
from navig.orchestrator.results import Component, Degradation, Location
from navig.orchestrator.searcher.search import Findings
from navig.orchestrator.tools.base import Place
from navig.orchestrator.tools.countries import country_name

# Confidence of a valid VLM answer: the model states none, so it is read off agreement with the evidence.
VLM_AGREES_CITY_KM = 25.0
VLM_CONFIDENCE = {"city": 0.9, "country": 0.7, "alone": 0.5, "disagrees": 0.3}
EVIDENCE_LINES = 24  # evidence lines the GUESSER prompt carries, most useful tools first


@dataclass
class Verdict:
    location: Location | None
    answered_by: Component
    reasons: list[str] = field(default_factory=list)
    guesser_output: str = ""
    degraded: list[Degradation] = field(default_factory=list)


async def decide(
    models: Models,
    image: np.ndarray,
    reasoning: str,
    findings: Findings,
    use_vlm: bool,
    deadline: Deadline,
    evidence_order: Sequence[str],
    pipeline: str = "fast",
    max_new_tokens: int = navig_reference.MAX_NEW_TOKENS,
) -> Verdict:
    """`evidence_order`: the SEARCHER tools whose evidence the fast prompt carries, most useful first.
    `max_new_tokens`: the reference GUESSER's budget (the fast one's is its grammar's bound)."""
    fallback = evidence_guesser.guess(findings.places, findings.country_prior, findings.guide_hits)
    verdict = _from_evidence(fallback)
    if not use_vlm:
        return verdict
    reference = pipeline == "reference"
    if reference:  # free text, as NAVIG asks; read leniently, then checked
        prompt, budget, schema = reference_prompt(reasoning, findings), max_new_tokens, None
        parse = parse_lenient
    else:  # the grammar bounds the answer's length: with this budget the JSON always completes
        prompt = prompts.guesser_prompt(reasoning, evidence_lines(findings, evidence_order))
        budget, schema, parse = prompts.GUESS_MAX_TOKENS, prompts.GUESS_SCHEMA_JSON, parse_answer
    try:
        pieces = models.generate(contract.VLM, prompt, deadline, image, budget, schema)
        verdict.guesser_output = "".join([piece async for piece in pieces])
        answer = parse(verdict.guesser_output)
    except (Unavailable, DeadlineExceeded):
        raise
    except (PipelineError, InvalidAnswer) as exc:
        verdict.degraded.append(Degradation("vlm_guesser", f"{type(exc).__name__}: {exc}"))
        verdict.reasons.insert(0, f"VLM GUESSER answer rejected ({exc}); answered from the evidence")
        return verdict
    return Verdict(
        _vlm_location(answer, fallback),
        Component.VLM_GUESSER,
        [_vlm_reason(answer, fallback, reference)],
        verdict.guesser_output,
    )


def reference_prompt(reasoning: str, findings: Findings) -> str:
    """The reference GUESSER's prompt from the reference SEARCHER's findings, selected as NAVIG does:
    texts read that are not exactly NO_TEXT, labels with none dropped; every place the map found, in
    the order of the texts; comments; guidebook clues deduplicated per label (NAVIG's `set` order
    depends on PYTHONHASHSEED: first seen here). Labels in NAVIG's PROMPT_ORDER."""
    order = navig_reference.PROMPT_ORDER
    texts = {}
    for label in order:
        kept = [t for t in findings.texts.get(label, []) if t and t != navig_reference.NO_TEXT]
        if kept:
            texts[label] = kept
    comments = {label: findings.comments[label] for label in order if findings.comments.get(label)}
    clues = {
        label: list(dict.fromkeys(hit.text for hit in findings.guide_by_label[label]))
        for label in order
        if findings.guide_by_label.get(label)
    }
    places = [_place(p) for p in findings.places]
    return prompts.reference_guesser_prompt(reasoning, texts, places, comments, clues)


def _place(place: Place) -> dict[str, Any]:
    """A map result as the reference prompt lists it (NAVIG: name, address, coordinates)."""
    address = ", ".join(p for p in (place.name, place.admin1, country_name(place.country_code)) if p)
    return {"name": place.name, "address": address, "latitude": place.latitude, "longitude": place.longitude}


def evidence_lines(findings: Findings, order: Sequence[str]) -> list[str]:
    rank = {tool: i for i, tool in enumerate(order)}
    ranked = sorted((e for e in findings.evidence if e.tool in rank), key=lambda e: (rank[e.tool], -e.score))
    return [f"{e.tool}: {e.query} -> {e.result}" for e in ranked[:EVIDENCE_LINES]]


def _from_evidence(guess: evidence_guesser.Guess | None) -> Verdict:
    if guess is None:
        return Verdict(None, Component.NONE, ["no component could place the photo: no usable evidence"])
    location = Location(guess.country, guess.country_code, guess.city, guess.latitude, guess.longitude,
                        guess.confidence)  # fmt: skip
    return Verdict(location, Component.EVIDENCE_GUESSER, list(guess.reasons))


def _vlm_location(answer: VlmAnswer, evidence: evidence_guesser.Guess | None) -> Location:
    return Location(answer.country, answer.country_code, answer.city, answer.latitude, answer.longitude,
                    VLM_CONFIDENCE[_agreement(answer, evidence)])  # fmt: skip


def _agreement(answer: VlmAnswer, evidence: evidence_guesser.Guess | None) -> str:
    if evidence is None:
        return "alone"
    if evidence.country_code != answer.country_code:
        return "disagrees"
    distance = haversine_km(answer.latitude, answer.longitude, evidence.latitude, evidence.longitude)
    return "city" if distance <= VLM_AGREES_CITY_KM else "country"


def _vlm_reason(answer: VlmAnswer, evidence: evidence_guesser.Guess | None, reference: bool = False) -> str:
    agreement = {
        "city": "the evidence points within 25 km",
        "country": "the evidence points to the same country",
        "alone": "no evidence to check it against",
        "disagrees": f"the evidence points to {evidence.country_code if evidence else ''} instead",
    }[_agreement(answer, evidence)]
    how = "reference prompt, free text read leniently" if reference else "grammar-constrained JSON"
    return f"VLM GUESSER ({how}): {answer.city or '?'}, {answer.country}; {agreement}"
