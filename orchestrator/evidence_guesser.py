"""The evidence guesser: map candidates + language prior + guidebook hits -> one answer, deterministically.

It answers when the VLM GUESSER is off or writes something invalid (and with placeholder VLM
weights, always). Each country collects votes:

    vote(country) = sum of its map candidates' scores, each x RANK_DECAY^rank
                    + PRIOR_WEIGHT x language prior + GUIDE_WEIGHT x its best guidebook hit

The city is the country's best map candidate; a country with no candidate is answered with its
capital (GeoNames) and a low confidence. Confidence is the winner's
share of all votes, scaled down when it rests on the prior or guidebook alone. Ties break on the
country code, so the same evidence always gives the same answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from navig.orchestrator.tools.base import GuideHit, Place
from navig.orchestrator.tools.countries import capitals, country_name

RANK_DECAY = 0.7  # the k-th best candidate counts 0.7^k: namesakes further down vote less
PRIOR_WEIGHT = 0.3
GUIDE_WEIGHT = 0.2  # CLIP-to-clue similarity is the weakest signal
WITHOUT_PLACE = 0.5  # confidence factor when no map candidate lies in the chosen country


@dataclass(frozen=True)
class Guess:
    country_code: str
    country: str
    city: str
    latitude: float
    longitude: float
    confidence: float
    reasons: list[str] = field(default_factory=list)


def guess(places: Sequence[Place], prior: Mapping[str, float], hits: Sequence[GuideHit]) -> Guess | None:
    votes: dict[str, float] = defaultdict(float)
    why: dict[str, list[str]] = defaultdict(list)
    for rank, place in enumerate(sorted(places, key=lambda p: (-p.score, p.country_code, p.name))):
        votes[place.country_code] += place.score * RANK_DECAY**rank
        why[place.country_code].append(f"map: '{place.matched}' -> {_where(place)} (score {place.score:.2f})")
    for code, weight in prior.items():
        votes[code] += PRIOR_WEIGHT * weight
    if prior:
        for code, weight in sorted(prior.items(), key=lambda kv: (-kv[1], kv[0]))[:1]:
            why[code].append(f"language prior {weight:.2f} for {code}")
    best_hit: dict[str, GuideHit] = {}
    for hit in hits:
        if hit.country_code and hit.score > best_hit.get(hit.country_code, hit).score - 1e-9:
            best_hit[hit.country_code] = hit
    for code, hit in best_hit.items():
        votes[code] += GUIDE_WEIGHT * max(hit.score, 0.0)
        why[code].append(f"guidebook: {hit.text[:80]} (similarity {hit.score:.2f})")
    votes = {code: v for code, v in votes.items() if v > 0}
    if not votes:
        return None
    country = min(votes, key=lambda code: (-votes[code], code))
    confidence = votes[country] / sum(votes.values())
    in_country = [p for p in places if p.country_code == country]
    name = country_name(country)
    reasons = [f"evidence guesser: {name} got {confidence:.0%} of the votes", *why[country]]
    if in_country:
        city = max(in_country, key=lambda p: p.score)
        return Guess(country, name, city.name, city.latitude, city.longitude, round(confidence, 3), reasons)
    capital = capitals().get(country)
    if capital is None:
        return None
    reasons.append(f"no place found in {name}: answering with its capital, {capital.name}")
    return Guess(country, name, capital.name, capital.latitude, capital.longitude,
                 round(confidence * WITHOUT_PLACE, 3), reasons)  # fmt: skip


def _where(place: Place) -> str:
    return ", ".join(part for part in (place.name, place.admin1, place.country_code) if part)
