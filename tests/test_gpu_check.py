"""`navig gpu-check` against the session's real Triton (cpu profile): what can run here of the check a GPU
user runs first. The gpu profile itself has not run: these runs hold the tool, not the GPU path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from navig.client.cli import app
from navig.client.gpu_check.probes import Reference
from navig.export.triton_config import set_streaming
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts

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
    assert "all 22 checks passed" in result.output and len(rows) == 22 and all(r["ok"] for r in rows.values())
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
    assert result.exit_code == 1 and "4 of 22 checks failed" in result.output, result.output
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


@pytest.fixture(scope="module")
def streaming_vlms(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EmbeddedTriton]:
    """The session's VLMs made decoupled (streaming), as the gpu profile's are, on their own Triton."""
    repository = tmp_path_factory.mktemp("streaming_vlms")
    for model in contract.VLM_MODELS:
        (repository / model / "1").mkdir(parents=True)
        for item in ("model.py", "weights"):
            (repository / model / "1" / item).symlink_to(model_repository / model / "1" / item)
        config = text_format.Parse((model_repository / model / "config.pbtxt").read_text(), mc.ModelConfig())
        set_streaming(config, True)
        (repository / model / "config.pbtxt").write_text(text_format.MessageToString(config))
    with EmbeddedTriton(TritonConfig(repository, ports=TritonPorts.free())) as server:
        yield server


def test_decoupled_vlms_stream_and_are_cancelled_mid_stream(
    triton: EmbeddedTriton, streaming_vlms: EmbeddedTriton, reference: Path
):
    """The gpu profile's path through gpu-check: stream API, final flags, a stream cancelled by the client."""
    result, rows = check(triton, reference, vlms_url=streaming_vlms.grpc_url)  # streaming expected
    assert result.exit_code == 0, result.output
    for model in contract.VLM_MODELS:
        assert rows[(model, "streaming")]["measured"].endswith("(decoupled)")
        assert int(rows[(model, "streaming")]["measured"].split()[0]) > 1
        assert rows[(model, "cancelled")]["measured"] == "cancelled after the first piece; next call answered"
        assert rows[(model, "first tokens")]["measured"] == "8/8 tokens agree"


def test_a_file_that_is_no_reference_is_a_usage_error(triton: EmbeddedTriton, tmp_path: Path):
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not numpy")
    result, _ = check(triton, bogus)
    assert result.exit_code == 2 and "is not a gpu-check reference" in result.output
