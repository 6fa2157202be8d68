"""The Geolocator survives fuzzed input: a few hundred generated cases (`benchmarks.fuzz_cases`, every
kind) through the real server on the session Triton, as `python -m benchmarks.fuzz` sends them.

No INTERNAL or UNKNOWN, every invalid kind INVALID_ARGUMENT, every case a status its kind allows, and
health still SERVING. A damaged image that still decodes runs a lean pipeline (every tool off: decode
and detector); a handful of valid images run the whole of it.
"""

from __future__ import annotations

import asyncio

import pytest

from benchmarks import fuzz, fuzz_cases
from benchmarks.fuzz_cases import INVALID, OK, Case
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.server import OrchestratorThread

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow: "Corrupt EXIF data", expected
SEED, CASES, FULL_PIPELINE = 7, 300, 5
WEIGHTS = {name: 1.0 for name in fuzz_cases.KINDS} | {"oversize": 0.3}  # every kind, ~17 cases each
LEAN = {f"use_{tool}": False for tool in ("reasoner", "ocr", "map_search", "guidebook", "describer")}
LEAN |= {"use_vlm_guesser": False}


def make_cases() -> tuple[dict[int, Case], list[int]]:
    """Case index -> case, with the lean options on all but the first few cases that must be served."""
    cases = {i: fuzz_cases.case(SEED, i, WEIGHTS) for i in range(CASES)}
    full = [i for i, c in cases.items() if fuzz_cases.KINDS[c.kind].expect == {OK}][:FULL_PIPELINE]
    for i, c in cases.items():
        if i not in full:
            options = pb.LocateOptions(**LEAN)
            options.MergeFrom(c.options)  # keeps max_new_tokens, the bad ones included
            cases[i] = Case(c.kind, c.image, options)
    return cases, full


def test_fuzzed_requests_get_clear_statuses_and_health_stays_serving(geolocator: OrchestratorThread):
    cases, full = make_cases()
    assert len(full) == FULL_PIPELINE
    assert {c.kind for c in cases.values()} == set(fuzz_cases.KINDS)  # the seed reaches every kind

    result = asyncio.run(fuzz.fuzz(geolocator.address, cases.__getitem__, CASES, 4, health_every_s=2.0))

    assert result["cases"] == CASES
    assert result["crashes"] == [], result["crashes"]  # no INTERNAL, UNKNOWN or call without a status
    for kind, counts in result["by_kind"].items():
        allowed = fuzz_cases.KINDS[kind].expect
        assert set(counts) <= allowed, (kind, counts, [u for u in result["unexpected"] if u["kind"] == kind])
        if allowed == {INVALID}:
            assert set(counts) == {INVALID}, (kind, counts)
    assert not result["health_lost"] and result["health"][-1]["status"] == "SERVING", result["health"]
