"""The geo-localization metrics of the NAVIG papers, computed from `navig eval` result records.

Pure functions on plain dicts (one per image, as written to the results JSONL by `runner`), so a
summary can be recomputed from a results file without a server. Distances are great circles on the
sphere of `navig.orchestrator.geo` (radius 6371.0088 km); the service and the tests share it.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pycountry

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
SCALES = ("street", "city", "region", "country", "continent")  # the papers' names for THRESHOLDS_KM
GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7
OK = "OK"
# Common names pycountry does not resolve on its own (it knows official names and ISO codes).
COUNTRY_ALIASES = {"turkey": "TR", "uk": "GB", "great britain": "GB", "kosovo": "XK", "xk": "XK"}


def geoscore(d_km: float) -> float:
    """GeoGuessr-style score: 5000 at the spot, 5000/e at 1492.7 km, ~0 across the planet."""
    return GEOSCORE_MAX * math.exp(-d_km / GEOSCORE_SCALE_KM)


@functools.lru_cache(maxsize=4096)
def country_alpha2(name_or_code: str) -> str | None:
    """ISO 3166-1 alpha-2 for a country name or code ("France", "fr", "FRA"); None if unknown."""
    text = name_or_code.strip()
    if not text:
        return None
    if text.lower() in COUNTRY_ALIASES:
        return COUNTRY_ALIASES[text.lower()]
    try:
        return pycountry.countries.lookup(text).alpha_2
    except LookupError:
        pass
    try:
        matches = pycountry.countries.search_fuzzy(text)
    except LookupError:
        return None
    return matches[0].alpha_2 if len(matches) == 1 else None  # "Russia" yes; "Korea" is ambiguous


def is_answered(record: Mapping[str, Any]) -> bool:
    return record.get("status") == OK and record.get("error_km") is not None


def summarise(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy, distance and country metrics over result records (see docs/eval.md).

    Accuracy shares are over ALL records: an unanswered image or one whose request failed is a miss at
    every threshold, so a service cannot look better by declining to answer. Distance statistics are
    over answered records only; the mean GeoScore counts unanswered and failed images as 0.
    """
    records = list(records)
    total = len(records)
    ok = [r for r in records if r.get("status") == OK]
    answered = [r for r in ok if is_answered(r)]
    errors_km = [float(r["error_km"]) for r in answered]

    hits = {t: sum(1 for d in errors_km if d <= t) for t in THRESHOLDS_KM}
    country = _country_accuracy(records)
    components = Counter(str(r.get("answered_by") or "none") for r in ok)
    failures = Counter(str(r.get("status")) for r in records if r.get("status") != OK)
    return {
        "records": total,
        "ok": len(ok),
        "answered": len(answered),
        "unanswered": len(ok) - len(answered),
        "failed": total - len(ok),
        "accuracy": {str(t): _share(hits[t], total) for t in THRESHOLDS_KM},
        "within": {str(t): hits[t] for t in THRESHOLDS_KM},
        "scales": dict(zip((str(t) for t in THRESHOLDS_KM), SCALES)),
        "mean_error_km": statistics.fmean(errors_km) if errors_km else None,
        "median_error_km": statistics.median(errors_km) if errors_km else None,
        "geoscore": sum(float(r.get("geoscore") or 0.0) for r in answered) / total if total else None,
        "country": country,
        "answered_by": {name: _share(n, len(ok)) for name, n in sorted(components.items())},
        "answered_by_counts": dict(sorted(components.items())),
        "errors": dict(sorted(failures.items())),
    }


def _country_accuracy(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Answer's alpha-2 vs the truth's, over records whose ground truth names a country."""
    evaluated = correct = 0
    unresolved: set[str] = set()
    for record in records:
        truth = str(record.get("truth_country") or "").strip()
        if not truth:
            continue
        evaluated += 1
        code = country_alpha2(truth)
        if code is None:
            unresolved.add(truth)  # counted as a miss, and reported so the dataset can be fixed
            continue
        answer = str(record.get("answer_country_code") or "").strip().upper()
        correct += is_answered(record) and answer == code
    return {
        "evaluated": evaluated,
        "correct": correct,
        "accuracy": _share(correct, evaluated),
        "unresolved_truth": sorted(unresolved),
    }


def _share(count: int, total: int) -> float | None:
    return count / total if total else None
