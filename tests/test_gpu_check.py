"""`navig gpu-check` against the session's real Triton (cpu profile): what can run here of the check a GPU
user runs first. The gpu profile itself has not run: these runs hold the tool, not the GPU path."""

from __future__ import annotations

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
    args = ["gpu-check", "run", "--encoders-url", triton.grpc_url, "--vlms-url", vlms_url or triton.grpc_url,
            "--reference", str(reference), "--cancel-after", "0.1", *extra]  # fmt: skip
    return runner.invoke(app, args, terminal_width=200)


def test_the_cpu_profile_passes_against_its_own_reference(triton: EmbeddedTriton, reference: Path):
    recorded = Reference.load(reference)
    compared = {contract.DETECTOR, contract.CLIP_IMAGE, contract.CLIP_TEXT, *contract.OCR_MODELS[:2]}
    assert set(recorded.outputs) == compared
    assert recorded.ocr_texts and all(len(t) == 8 for t in recorded.vlm_tokens.values())
    result = check(triton, reference, "--no-expect-streaming")
    assert result.exit_code == 0, result.output
    assert (
        "all 21 checks passed" in result.output and "DEADLINE_EXCEEDED; next call answered" in result.output
    )


def test_a_wrong_answer_a_missing_stream_and_a_dead_server_each_fail(
    triton: EmbeddedTriton, reference: Path, tmp_path: Path
):
    recorded = Reference.load(reference)
    recorded.outputs[contract.CLIP_TEXT] = recorded.outputs[contract.CLIP_TEXT] + np.float32(0.2)
    recorded.vlm_tokens[contract.VLM] = [t + 1 for t in recorded.vlm_tokens[contract.VLM]]
    wrong = tmp_path / "wrong.npz"
    recorded.save(wrong)
    result = check(triton, wrong)  # the cpu profile's VLMs are not decoupled: no streaming either
    assert result.exit_code == 1, result.output
    failed = [line for line in result.output.splitlines() if "FAIL" in line]
    assert len(failed) == 4, result.output
    assert any("clip_text" in line and "max diff 2.00e-01" in line for line in failed)
    assert any("vlm" in line and "first tokens" in line and "0/8" in line for line in failed)
    assert sum("streaming" in line for line in failed) == 2
    dead = check(triton, reference, "--no-expect-streaming", vlms_url="127.0.0.1:1")
    assert dead.exit_code == 1 and "Traceback" not in dead.output
    assert "FAIL" in next(line for line in dead.output.splitlines() if "reasoner" in line and "ready" in line)


def test_a_file_that_is_no_reference_is_a_usage_error(triton: EmbeddedTriton, tmp_path: Path):
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not numpy")
    result = check(triton, bogus)
    assert result.exit_code == 2 and "is not a gpu-check reference" in result.output
