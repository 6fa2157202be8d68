"""The interfaces the pipeline talks to; each tool backend implements one of them.

Backends are chosen by settings; the pipeline never knows which one answers. A backend that
fails raises `ToolUnavailable`: the pipeline records the tool as degraded and carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class ToolUnavailable(RuntimeError):
    """A tool backend could not answer (network down, rate limited, index missing)."""


@dataclass(frozen=True)
class Place:
    """One map-search candidate. Same-named places are separate candidates, never merged."""

    name: str  # the place's own name as the source spells it
    country_code: str  # ISO 3166-1 alpha-2, upper case
    latitude: float
    longitude: float
    score: float  # 0..1, higher is better; comparable within one backend's answer
    matched: str  # the query text (n-gram of an OCR line) that matched
    admin1: str = ""  # first-level subdivision name, when known
    population: int = 0
    source: str = ""  # e.g. "geonames:2934246", "nominatim:relation/62578"


class MapSearch(Protocol):
    """Text read in the photo -> ranked candidate places."""

    name: str  # backend name reported in evidence, e.g. "gazetteer", "nominatim"

    async def search(self, lines: Sequence[str], limit: int = 5) -> list[Place]:
        """Candidates for the OCR lines of one photo, best first, at most `limit`."""
        ...

    async def aclose(self) -> None:
        """Releases connections; called once when the server stops."""
        ...


@dataclass(frozen=True)
class GuideHit:
    """A guidebook entry close to a crop embedding."""

    entry_id: str
    country_code: str  # "" when the entry is not tied to one country
    text: str  # the clue, e.g. "Drives on the left; yellow number plates at the rear"
    score: float  # cosine similarity of L2-normalised vectors
    source: str = ""  # where the clue comes from (e.g. "CLDR", "phonenumbers", a user file)


class Guidebook(Protocol):
    """Crop embeddings (from the served `clip_image`) -> matching clues."""

    def search(self, embeddings: np.ndarray, k: int, threshold: float) -> list[list[GuideHit]]:
        """Per row of `embeddings` (float32 [N, D], L2-normalised): hits above threshold, best first."""
        ...


# OCR lines -> (detected language, {ISO country code: prior weight}); from the gazetteer's language model.
LanguagePrior = Callable[[Sequence[str]], tuple[str, dict[str, float]]]
