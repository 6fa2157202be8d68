"""The evidence guesser: map candidates + language prior + guidebook hits -> one answer, deterministically.

It answers when the VLM GUESSER is off or writes something invalid (and with placeholder VLM
weights, always). Each country collects votes:

    vote(country) = sum over the independent texts read (each once) of its best candidate's score
                    + PRIOR_WEIGHT x language prior + GUIDE_WEIGHT x its best guidebook hit

Namesakes of one text in one country do not add up (Mexico has many places called Asunción; one
read of "Asunción" is one vote), but two different texts pointing to one country do. A text that
is part of another ("Med" read off a crop of "Medellín 10 km") is the same evidence and no vote.

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
from navig.orchestrator.tools.text import normalise

PRIOR_WEIGHT = 0.1  # the map scores include the prior already; here it mostly speaks when the map is silent
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
    voted: set[tuple[str, str]] = set()  # (country, text): a text votes once per country, with its best place
    texts = _independent_texts(places)
    for place in sorted(places, key=lambda p: (-p.score, p.country_code, p.name)):
        key = (place.country_code, normalise(place.matched))
        if key[1] in texts and key not in voted:
            voted.add(key)
            votes[place.country_code] += place.score
            why[place.country_code].append(f"map: '{place.matched}' -> {_where(place)} ({place.score:.2f})")
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


def _independent_texts(places: Sequence[Place]) -> set[str]:
    """Matched texts that are not part of another one ("Med" read off a crop of "Medellín 10 km")."""
    texts = {normalise(p.matched) for p in places}
    return {t for t in texts if not any(t != other and t in other for other in texts)}


def _where(place: Place) -> str:
    return ", ".join(part for part in (place.name, place.admin1, place.country_code) if part)
