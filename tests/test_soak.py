"""The soak runner measures what it says: RSS labelled by real Triton process (model stubs by model),
drift from the end of warm-up, lost requests counted, and a short real run against the session server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import psutil
import pytest

from benchmarks import soak
from navig.export.samples import SAMPLES_DIR, Sample
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.embedded_triton import EmbeddedTriton
from navig.orchestrator.server import OrchestratorThread

STUB = "/opt/triton/backends/python/triton_python_backend_stub"


def test_processes_are_labelled_by_model_and_instances_numbered():
    processes = [
        (30, "triton_python_backend_stub", [STUB, "/repo/ocr/1/model.py", "shm", "ocr_0_1"]),
        (10, "tritonserver", ["tritonserver", "--model-repository=/repo"]),
        (20, "triton_python_backend_stub", [STUB, "/repo/ocr/1/model.py", "shm", "ocr_0_0"]),
        (25, "triton_python_backend_stub", [STUB, "/repo/vlm/1/model.py", "shm", "vlm"]),
        (40, "sh", ["sh", "-c", "true"]),
    ]
    assert soak.labels(processes) == {10: "tritonserver", 20: "ocr", 25: "vlm", 30: "ocr#2", 40: "sh"}


def test_drift_is_per_process_and_in_total_over_processes_seen_at_both_ends():
    warm = {"orchestrator": 1000, "vlm": 600, "gone": 50}
    after = {"orchestrator": 1100, "vlm": 570, "new": 80}
    drift = soak.drift(warm, after)
    assert drift == pytest.approx({"orchestrator": 10.0, "vlm": -5.0, "total": 100 * 70 / 1600})
    assert soak.drift({}, after) == {"total": 0.0}


def test_a_call_that_ends_without_a_status_is_lost_not_fatal():
    async def broken(n: int) -> soak.Sample:
        raise ConnectionResetError("gone")

    sample = asyncio.run(soak.polite(broken, backoff_max_s=1.0)(0))
    assert sample.status == "LOST" and "gone" in sample.error
    result = soak.report([sample], requests=3, rss_samples=[], wall_s=1.0)
    assert result["lost"] == 3 and not result["passed"]  # one without a status, two never completed


@pytest.mark.timeout(600)
def test_short_soak_against_the_session_server(
    geolocator: OrchestratorThread, triton: EmbeddedTriton, samples: list[Sample], tmp_path: Path
):
    images = [(SAMPLES_DIR / s.file).read_bytes() for s in samples[:4]]
    watched = soak.Watched(psutil.Process(os.getpid()), psutil.Process(triton.pid))  # the orchestrator: here
    options = pb.LocateOptions(max_new_tokens=8)
    result = asyncio.run(soak.soak(geolocator.address, images, 20, 4, options, watched, every_s=1.0))

    assert result["statuses"] == {"OK": 20} and result["lost"] == 0 and result["crashes"] == 0
    assert set(result["latency_ms"]) == {"p50", "p99"}
    phases = [s["phase"] for s in result["rss_samples"]]
    assert phases[0] == "before" and phases[-1] == "after" and phases.count("warm") == 1
    after = result["rss_bytes"]["after"]
    assert {"orchestrator", "tritonserver", contract.DETECTOR, contract.VLM} <= set(after), after
    assert result["drift_measured"] and set(result["drift_pct"]) == set(after) | {"total"}
    soak.write_png(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    json.dumps(result)  # what --out writes
