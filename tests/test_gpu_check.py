"""`navig gpu-check` against the session's real Triton (cpu profile): what can run here of the check a GPU
user runs first. The gpu profile itself has not run: these runs hold the tool, not the GPU path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from navig.client.cli import app
from navig.client.gpu_check.probes import Reference
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton

runner = CliRunner()


@pytest.fixture(scope="module")
def reference(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpu_check") / "reference.npz"
    result = runner.invoke(
        app, ["gpu-check", "record", "--triton-url", triton.grpc_url, "--reference", str(path)]
    )
    assert result.exit_code == 0, result.output
    return path


def check(triton: EmbeddedTriton, reference: Path, *extra: str, vlms_url: str | None = None):
    """The exit code, the output, and the rows by (model, check) as `--json` wrote them."""
    rows_file = reference.parent / "rows.json"
    rows_file.unlink(missing_ok=True)
    urls = ["--encoders-url", triton.grpc_url, "--vlms-url", vlms_url or triton.grpc_url]
    options = ["--reference", str(reference), "--cancel-after", "0.1", "--json", str(rows_file)]
    args = ["gpu-check", "run", *urls, *options, *extra]
    result = runner.invoke(app, args)
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else []
    return result, {(row["model"], row["check"]): row for row in rows}


def test_the_cpu_profile_passes_against_its_own_reference(triton: EmbeddedTriton, reference: Path):
    recorded = Reference.load(reference)
    compared = {contract.DETECTOR, contract.CLIP_IMAGE, contract.CLIP_TEXT, *contract.OCR_MODELS[:2]}
    assert set(recorded.outputs) == compared
    assert recorded.ocr_texts and all(len(t) == 8 for t in recorded.vlm_tokens.values())
    result, rows = check(triton, reference, "--no-expect-streaming")
    assert result.exit_code == 0, result.output
    assert "all 21 checks passed" in result.output and len(rows) == 21 and all(r["ok"] for r in rows.values())
    for model in contract.VLM_MODELS:
        assert rows[(model, "cancelled")]["measured"] == "DEADLINE_EXCEEDED; next call answered"
        assert rows[(model, "first tokens")]["measured"] == "8/8 tokens agree"


def test_a_wrong_answer_a_missing_stream_and_a_dead_server_each_fail(
    triton: EmbeddedTriton, reference: Path, tmp_path: Path
):
    recorded = Reference.load(reference)
    recorded.outputs[contract.CLIP_TEXT] = recorded.outputs[contract.CLIP_TEXT] + np.float32(0.2)
    recorded.vlm_tokens[contract.VLM] = [t + 1 for t in recorded.vlm_tokens[contract.VLM]]
    wrong = tmp_path / "wrong.npz"
    recorded.save(wrong)
    result, rows = check(triton, wrong)  # the cpu profile's VLMs are not decoupled: no streaming either
    assert result.exit_code == 1 and "4 of 21 checks failed" in result.output, result.output
    failed = {key: row["measured"] for key, row in rows.items() if not row["ok"]}
    assert set(failed) == {
        (contract.CLIP_TEXT, "probe"), (contract.VLM, "first tokens"),
        (contract.REASONER, "streaming"), (contract.VLM, "streaming"),
    }  # fmt: skip
    assert failed[(contract.CLIP_TEXT, "probe")] == "embeddings max diff 2.00e-01"
    assert failed[(contract.VLM, "first tokens")] == "0/8 tokens agree"
    dead, rows = check(triton, reference, "--no-expect-streaming", vlms_url="127.0.0.1:1")
    assert dead.exit_code == 1 and "Traceback" not in dead.output
    assert not rows[(contract.REASONER, "ready")]["ok"] and rows[(contract.DETECTOR, "ready")]["ok"]


def test_a_file_that_is_no_reference_is_a_usage_error(triton: EmbeddedTriton, tmp_path: Path):
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not numpy")
    result, _ = check(triton, bogus)
    assert result.exit_code == 2 and "is not a gpu-check reference" in result.output
