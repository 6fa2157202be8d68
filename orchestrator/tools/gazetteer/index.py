"""The gazetteer index on disk, memory-mapped: exact and fuzzy name lookups, place records.

Loading maps the arrays and reads two small text files; pages come in as lookups touch them, so a
server starts in well under a second and shares the pages with every other process on the host.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz, process

from navig.orchestrator.tools.cache import cache_root
from navig.orchestrator.tools.gazetteer.build import INDEX_VERSION, build_index, key_hash, source_versions

FUZZY_MIN_SCORE = 85.0  # rapidfuzz ratio, 0..100: "Dusseldrof" ~ "dusseldorf", not "dessau"
FUZZY_LENGTH_SLACK = 2  # names this many characters shorter or longer are compared


class GazetteerError(RuntimeError):
    """The index is missing, stale or unreadable; the message says how to rebuild it."""


def default_dir() -> Path:
    return cache_root() / "gazetteer"


@dataclass(frozen=True)
class Hit:
    place: int  # row in the index
    key: str  # the normalised name that matched
    quality: float  # 1.0 exact; the fuzzy ratio / 100 otherwise
    alternate: bool  # matched an alternate name, not the primary or ASCII one


class GazetteerIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            if self.meta.get("version") != INDEX_VERSION:
                found = self.meta.get("version")
                raise GazetteerError(f"gazetteer index {path} has version {found}, this code reads "
                                     f"{INDEX_VERSION}: run `navig gazetteer build`")  # fmt: skip

            def load(name: str) -> np.ndarray:
                return np.load(path / f"{name}.npy", mmap_mode="r")

            self.lat, self.lon, self.population = load("lat"), load("lon"), load("population")
            self.geonameid, self.country, self.admin1 = load("geonameid"), load("country"), load("admin1")
            self.key_hash, self.key_place, self.key_alternate = (
                load("key_hash"), load("key_place"), load("key_alternate"))  # fmt: skip
            self.names_offsets = load("names_offsets")
            self.names = np.memmap(path / "names.bin", dtype=np.uint8, mode="r")
            self.fuzzy = (path / "fuzzy.txt").read_text(encoding="utf-8").split("\n")
            self.fuzzy_buckets: dict[str, list[int]] = json.loads((path / "fuzzy_buckets.json").read_text())
            self.admin1_names: list[str] = json.loads((path / "admin1.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError) as exc:
            raise GazetteerError(f"cannot read the gazetteer index at {path} ({exc}): "
                                 "run `navig gazetteer build`") from exc  # fmt: skip
        self.countries: list[str] = self.meta["countries"]

    @classmethod
    def open(cls, path: Path | None = None, build: bool = True, progress=None) -> GazetteerIndex:
        """The index at `path` (default: the cache), built first when absent or stale and `build`."""
        path = path or default_dir()
        stale = not (path / "meta.json").is_file()
        if not stale:
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
            stale = meta.get("version") != INDEX_VERSION or meta.get("sources") != source_versions()
        if stale and build:
            build_index(path, progress)
        return cls(path)

    def __len__(self) -> int:
        return len(self.lat)

    def exact(self, key: str) -> list[Hit]:
        h = key_hash([key])[0]
        lo, hi = np.searchsorted(self.key_hash, h, "left"), np.searchsorted(self.key_hash, h, "right")
        rows = zip(self.key_place[lo:hi], self.key_alternate[lo:hi])
        return [Hit(int(place), key, 1.0, bool(alternate)) for place, alternate in rows]

    def fuzzy_keys(self, key: str, limit: int = 5) -> list[tuple[str, float]]:
        """Primary names spelt close to `key` (OCR slips), best first, as (name, ratio / 100)."""
        choices: list[str] = []
        for length in range(len(key) - FUZZY_LENGTH_SLACK, len(key) + FUZZY_LENGTH_SLACK + 1):
            start, stop = self.fuzzy_buckets.get(f"{key[:1]}{length}", (0, 0))
            choices.extend(self.fuzzy[start:stop])
        found = process.extract(key, choices, scorer=fuzz.ratio, score_cutoff=FUZZY_MIN_SCORE, limit=limit)
        return [(name, score / 100) for name, score, _ in found if name != key]

    def name(self, place: int) -> str:
        start, stop = self.names_offsets[place], self.names_offsets[place + 1]
        return bytes(self.names[start:stop]).decode("utf-8")

    def country_code(self, place: int) -> str:
        return self.countries[int(self.country[place])]

    def admin1_name(self, place: int) -> str:
        index = int(self.admin1[place])
        return self.admin1_names[index] if index >= 0 else ""
