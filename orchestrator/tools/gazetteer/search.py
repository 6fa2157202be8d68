"""The offline map search: OCR lines -> ranked GeoNames places (the embedded default `MapSearch`).

Each line's n-grams are looked up exactly (normalised: case, accents, every alternate spelling
GeoNames knows, any script); a line with no exact hit gets a fuzzy look-up for OCR slips. Every
place a name matches is its own candidate (Mérida MX, ES and VE are three), ranked by

    score = match x (0.45 + 0.20 coverage + 0.20 population + 0.15 language prior)

match: 1 exact, the fuzzy ratio x 0.9 otherwise, x 0.9 for alternate names, x 0.5 for names of three
characters or fewer (codes like "DUS"); coverage: the share of the line's words the name covers;
population: log10(population) / 7, capped at 1; language prior: the weight of the place's country
for the language the lines are written in (CLDR shares, see `language.py`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from navig.orchestrator.tools.base import LanguagePrior, Place
from navig.orchestrator.tools.gazetteer.index import GazetteerIndex, Hit
from navig.orchestrator.tools.text import STOP_WORDS, candidates, normalise, words

WEIGHTS = {"base": 0.45, "coverage": 0.20, "population": 0.20, "prior": 0.15}
FUZZY_FACTOR = 0.9
ALTERNATE_FACTOR = 0.9
SHORT_NAME = 3  # characters; such names are mostly codes and abbreviations
SHORT_FACTOR = 0.5
FUZZY_MIN_CHARS = 4  # shorter words have too many close neighbours to fuzzy-match


class Gazetteer:
    name = "gazetteer"

    def __init__(self, index: GazetteerIndex, language_prior: LanguagePrior | None = None) -> None:
        self.index = index
        self.language_prior = language_prior

    async def search(self, lines: Sequence[str], limit: int = 5) -> list[Place]:
        return self.lookup(lines, limit)  # a few ms of CPU: cheaper inline than a thread hop

    async def aclose(self) -> None:
        """Nothing to release: the index is memory-mapped read-only."""

    def lookup(self, lines: Sequence[str], limit: int = 5) -> list[Place]:
        prior = self.language_prior(lines)[1] if self.language_prior else {}
        best: dict[int, tuple[float, str]] = {}  # place -> (score, matched text)
        for line in lines:
            for score, place, matched in self._line(line, prior):
                if score > best.get(place, (0.0, ""))[0]:
                    best[place] = (score, matched)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:limit]
        return [self._place(place, score, matched) for place, (score, matched) in ranked]

    def _line(self, line: str, prior: dict[str, float]) -> list[tuple[float, int, str]]:
        content = " ".join(w for w in words(line) if normalise(w) not in STOP_WORDS)
        size = max(len(normalise(content)), 1)
        matches = [(gram, hit) for gram in candidates([line]) for hit in self.index.exact(normalise(gram))]
        if not matches:
            matches = self._fuzzy(line)
        return [(self._score(hit, len(normalise(gram)) / size, prior), hit.place, gram)
                for gram, hit in matches]  # fmt: skip

    def _fuzzy(self, line: str) -> list[tuple[str, Hit]]:
        out: list[tuple[str, Hit]] = []
        for gram in candidates([line]):
            key = normalise(gram)
            if len(key) < FUZZY_MIN_CHARS:
                continue
            for name, ratio in self.index.fuzzy_keys(key):
                out.extend((gram, Hit(h.place, name, ratio * FUZZY_FACTOR, h.alternate))
                           for h in self.index.exact(name))  # fmt: skip
        return out

    def _score(self, hit: Hit, coverage: float, prior: dict[str, float]) -> float:
        match = hit.quality * (ALTERNATE_FACTOR if hit.alternate else 1.0)
        if len(hit.key) <= SHORT_NAME:
            match *= SHORT_FACTOR
        population = min(math.log10(max(int(self.index.population[hit.place]), 1)) / 7, 1.0)
        country = prior.get(self.index.country_code(hit.place), 0.0)
        w = WEIGHTS
        return match * (w["base"] + w["coverage"] * min(coverage, 1.0) + w["population"] * population
                        + w["prior"] * country)  # fmt: skip

    def _place(self, place: int, score: float, matched: str) -> Place:
        ix = self.index
        return Place(
            name=ix.name(place),
            country_code=ix.country_code(place),
            latitude=round(float(ix.lat[place]), 5),
            longitude=round(float(ix.lon[place]), 5),
            score=round(score, 4),
            matched=matched,
            admin1=ix.admin1_name(place),
            population=int(ix.population[place]),
            source=f"geonames:{int(ix.geonameid[place])}",
        )
