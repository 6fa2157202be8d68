"""`pip install navig-serve` without extras: the client verbs work, the heavy ones say what to install.

Each run is a subprocess whose import system refuses the [cpu] extra's modules, as if they were not
installed, and reports every attempt to import one (the light verbs must make none).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

BLOCKED = (
    "cv2 faiss onnx onnxruntime onnxscript peft pytriton rapidocr safetensors tokenizers torch transformers "
    "xgrammar"
).split()
ATTEMPTS = "blocked imports: "  # how BOOTSTRAP reports at exit
INSTALL_HINT = "pip install 'navig-serve[cpu]'"

# argv[1]: the blocked names, comma-separated; the rest: the `navig` arguments. The finder raises what a
# missing module raises (it also answers importlib.util.find_spec that way, where a real absence gives None).
BOOTSTRAP = """
import atexit, importlib.abc, json, sys

blocked = set(sys.argv[1].split(","))
attempts = sorted(set(sys.modules) & blocked)

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            attempts.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
atexit.register(lambda: print("blocked imports: " + json.dumps(sorted(set(attempts))), file=sys.stderr))
sys.argv = ["navig", *sys.argv[2:]]
from navig.client.cli import app
app()
"""


def light_navig(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs `navig ARGS` without the extra; returns the process and the blocked imports it attempted."""
    result = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, ",".join(BLOCKED), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = [line for line in result.stderr.splitlines() if line.startswith(ATTEMPTS)]
    assert report, f"the bootstrap did not report (exit {result.returncode}):\n{result.stderr}"
    return result, json.loads(report[-1].removeprefix(ATTEMPTS))


def unused_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (120, 30, 200)).save(path)
    return path


@pytest.mark.parametrize("verb", [[], ["locate"], ["profile"], ["eval"]])
def test_help_needs_no_extra(verb: list[str]) -> None:
    result, attempts = light_navig(*verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: navig" in result.stdout
    assert attempts == []


def test_locate_without_a_server_says_unavailable(photo: Path) -> None:
    result, attempts = light_navig("locate", str(photo), "--address", unused_address(), "--retries", "0")
    assert result.returncode == 3, result.stderr  # locate's Exit.UNAVAILABLE
    assert "UNAVAILABLE" in result.stderr and "Traceback" not in result.stderr
    assert attempts == []


def test_profile_without_a_server_says_unavailable(photo: Path, tmp_path: Path) -> None:
    address = unused_address()
    args = ["--address", address, "--images", str(photo), "--requests", "1", "--out", str(tmp_path / "p")]
    result, attempts = light_navig("profile", *args)
    assert result.returncode == 3, result.stderr
    assert f"no Geolocator at {address}" in result.stderr and "Traceback" not in result.stderr
    assert attempts == []


def test_eval_without_a_server_stops_unavailable(photo: Path, tmp_path: Path) -> None:
    rows = [f"{i}.jpg,47.37,8.54" for i in range(5)]  # 5 UNAVAILABLE in a row stop the run
    for i in range(5):
        (tmp_path / f"{i}.jpg").write_bytes(photo.read_bytes())
    dataset = tmp_path / "set.csv"
    dataset.write_text("image,latitude,longitude\n" + "\n".join(rows) + "\n")
    out = str(tmp_path / "results.jsonl")
    args = ["--address", unused_address(), "--out", out, "--timeout", "1", "--concurrency", "5"]
    result, attempts = light_navig("eval", str(dataset), *args)
    assert result.returncode == 3, result.stderr  # eval's EXIT_UNAVAILABLE
    assert "server unavailable" in result.stderr and "Traceback" not in result.stderr
    assert attempts == []


def test_a_heavy_verb_names_the_extra(tmp_path: Path) -> None:
    spec = tmp_path / "export.yaml"
    spec.write_text(f"profile: cpu\noutput: {tmp_path / 'repository'}\n")
    result, attempts = light_navig("export", "build", str(spec))
    assert result.returncode == 1, result.stderr
    assert INSTALL_HINT in result.stderr and "Traceback" not in result.stderr
    assert attempts  # it did need the extra
