"""`navig profile` against the real running stack, and its load generator and reports on their own."""

from __future__ import annotations

import asyncio
import csv
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from navig.client.cli import app
from navig.client.profile.load import Budget, Level, Sample, run_level
from navig.client.profile.report import compare, summarise
from navig.export.samples import SAMPLES_DIR

runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three sample signs: enough variety, short runs."""
    folder = tmp_path_factory.mktemp("images")
    for name in ("sign_000_de.jpg", "sign_006_pl.jpg", "sign_011_fr.jpg"):
        (folder / name).write_bytes((SAMPLES_DIR / name).read_bytes())
    return folder


def test_profile_against_the_running_stack(geolocator, triton, images: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = ["profile", "--address", geolocator.address, "--triton-url", triton.grpc_url, "--images",
            str(images), "--concurrency", "1,2", "--requests", "4", "--warmup", "1", "--max-new-tokens", "8",
            "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 10_000
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert [r["level"] for r in rows] == ["c=1", "c=2"]

    for level, row in zip(report["levels"], rows):
        assert level["requests"] == level["ok"] == 4 and not level["errors"]
        latencies = [s["latency_ms"] for s in level["samples"] if s["status"] == "OK"]
        for q in (50, 90, 95, 99):  # the summary is what the recorded samples say
            assert level["latency_ms"][f"p{q}"] == pytest.approx(np.percentile(latencies, q))
        assert float(row["latency_p99_ms"]) == pytest.approx(level["latency_ms"]["p99"], abs=1e-3)
        assert level["ttfe_ms"]["p50"] <= level["latency_ms"]["p50"]
        if level["ttft_ms"]:  # placeholder weights may write no REASONER text at all
            assert level["ttfe_ms"]["p50"] <= level["ttft_ms"]["p50"] <= level["latency_ms"]["p50"]
        assert {"queue", "decode", "reasoner", "searcher", "detector", "guesser"} <= set(level["stages_ms"])
        path = level["critical_path_ms"]
        assert sum(path.values()) == pytest.approx(np.mean(latencies), rel=1e-6)
        # inside Triton: exactly this level's requests reached the detector, once each
        assert level["triton"]["detector"]["requests"] == 4
        assert level["triton"]["detector"]["compute_ms"] > 0 and level["triton"]["vlm"]["queue_ms"] >= 0
    assert report["config"]["target"].startswith("Geolocator at") and report["machine"]["cores"] >= 1

    again = tmp_path / "again"
    runner.invoke(app, [*args[:-1], str(again)])
    compared = runner.invoke(app, ["profile", "compare", str(out.with_suffix(".json")),
                                   str(again.with_suffix(".json"))])  # fmt: skip
    assert compared.exit_code == 0 and "c=2" in compared.output, compared.output


def test_profile_one_triton_model(triton, images: Path, tmp_path: Path):
    out = tmp_path / "ocr"
    result = runner.invoke(app, ["profile", "--triton-url", triton.grpc_url, "--triton-model", "ocr",
                                 "--images", str(images), "--concurrency", "2", "--requests", "4",
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    (level,) = json.loads(out.with_suffix(".json").read_text())["levels"]
    assert level["ok"] == 4 and level["triton"]["ocr"]["requests"] == 4
    assert {"ocr_det", "ocr_rec"} <= set(level["triton"])  # the BLS hops show up as models of their own


def test_profile_refuses_what_it_cannot_measure(triton, images: Path, tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    nobody = runner.invoke(app, ["profile", "--address", closed, "--images", str(images), "--out",
                                 str(tmp_path / "x")])  # fmt: skip
    assert nobody.exit_code == 3 and "no Geolocator" in nobody.output
    tokens = runner.invoke(app, ["profile", "--triton-url", triton.grpc_url, "--triton-model", "clip_text",
                                 "--images", str(images), "--out", str(tmp_path / "y")])  # fmt: skip
    assert tokens.exit_code == 2 and "input_ids" in tokens.output
    assert runner.invoke(app, ["profile", "--images", str(tmp_path / "none")]).exit_code == 2
    assert runner.invoke(app, ["profile", "--concurrency", "0"]).exit_code == 2
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{}")
    assert runner.invoke(app, ["profile", "compare", str(garbage), str(garbage)]).exit_code == 2


def test_open_loop_keeps_the_rate_however_slow_the_answers():
    starts: list[float] = []

    async def slow(n: int) -> Sample:
        loop = asyncio.get_running_loop()
        starts.append(loop.time())
        await asyncio.sleep(0.3)  # slower than the arrival interval: requests overlap
        return Sample(loop.time(), 300.0, "OK")

    samples = asyncio.run(run_level(slow, Level(rate=20), Budget(requests=10), lambda _: None))
    assert len(samples) == 10
    gaps = np.diff(starts)
    assert gaps.min() > 0.035 and abs(gaps.mean() - 0.05) < 0.01


def test_closed_loop_stops_on_its_duration():
    async def quick(n: int) -> Sample:
        await asyncio.sleep(0.01)
        return Sample(0.0, 10.0, "OK" if n % 5 else "UNAVAILABLE")

    samples = asyncio.run(run_level(quick, Level(concurrency=3), Budget(duration_s=0.3), lambda _: None))
    assert 30 <= len(samples) <= 100
    summary = summarise(Level(concurrency=3), samples, 0.3, {})
    assert summary["errors"]["UNAVAILABLE"] == sum(1 for s in samples if s.status != "OK")
    assert summary["ok"] + summary["errors"]["UNAVAILABLE"] == len(samples)


def test_compare_gives_ratios_per_shared_level():
    def report(rps: float, p50: float) -> dict:
        level = {"level": "c=4", "throughput_rps": rps, "latency_ms": {"p50": p50, "p99": 2 * p50},
                 "ttfe_ms": {}}  # fmt: skip
        return {"levels": [level, {**level, "level": "c=8"}]}

    (row, _) = compare(report(1.0, 100.0), report(2.0, 50.0))
    assert (
        row["throughput_ratio"] == 2.0 and row["latency_p50_ratio"] == 0.5 and row["ttfe_p50_ratio"] is None
    )
