"""`navig ocr` against the real server, and its errors as messages with exit codes."""

from __future__ import annotations

import subprocess
import sys

from navig.export.samples import SAMPLES_DIR
from navig.orchestrator.embedded_triton import TritonPorts


def navig(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "navig.client.cli_main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_ocr_reads_a_sign_through_triton(triton, samples):
    result = navig("ocr", str(SAMPLES_DIR / samples[4].file), "--triton-url", triton.grpc_url)
    assert result.returncode == 0, result.stderr
    assert samples[4].place in result.stdout


def test_ocr_of_a_non_image_exits_2(triton, tmp_path):
    bogus = tmp_path / "notes.jpg"
    bogus.write_text("not a photo")
    result = navig("ocr", str(bogus), "--triton-url", triton.grpc_url)
    assert result.returncode == 2
    assert "not a readable image" in result.stderr and "Traceback" not in result.stderr


def test_ocr_without_a_server_exits_1(tmp_path):
    url = f"127.0.0.1:{TritonPorts.free().grpc}"
    result = navig("ocr", str(SAMPLES_DIR / "sign_000_de.jpg"), "--triton-url", url)
    assert result.returncode == 1
    assert f"Triton at {url}" in result.stderr and "Traceback" not in result.stderr
