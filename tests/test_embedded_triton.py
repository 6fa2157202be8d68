"""The launcher's promises: clear errors, loopback binding, clean stops with no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonLaunchError, TritonPorts

BROKEN_CONFIG = """
name: "broken"
backend: "python"
max_batch_size: 0
input [ { name: "x", data_type: TYPE_FP32, dims: [ 1 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 1 ] } ]
"""
BROKEN_MODEL = """
class TritonPythonModel:
    def initialize(self, args):
        raise ValueError("weights file is corrupt")
"""


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes containing `text` (tritonserver and its python stubs)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            found.append(cmdline)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 and ::ffff:127.0.0.1


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel prints them) of sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, _, state = row.split()[1:4]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(address)
    return found


@pytest.fixture
def broken_repository(tmp_path: Path) -> Path:
    model = tmp_path / "repo" / "broken"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(BROKEN_CONFIG)
    (model / "1" / "model.py").write_text(BROKEN_MODEL)
    return tmp_path / "repo"


def test_missing_binary_is_named(model_repository):
    config = TritonConfig(model_repository, ports=TritonPorts.free(), binary=Path("/nowhere/tritonserver"))
    with pytest.raises(TritonLaunchError, match=r"tritonserver binary not found.*/nowhere/tritonserver"):
        EmbeddedTriton(config).start()


def test_missing_repository_is_named(tmp_path):
    with pytest.raises(TritonLaunchError, match="model repository not found"):
        EmbeddedTriton(TritonConfig(tmp_path / "absent", ports=TritonPorts.free())).start()


def test_busy_port_is_named(model_repository):
    ports = TritonPorts.free()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.http))
        taken.listen()
        with pytest.raises(TritonLaunchError, match=f"HTTP port {ports.http} on 127.0.0.1 is already in use"):
            EmbeddedTriton(TritonConfig(model_repository, ports=ports)).start()


def test_model_that_fails_to_load_is_named_with_its_reason(broken_repository):
    server = EmbeddedTriton(TritonConfig(broken_repository, ports=TritonPorts.free()))
    with pytest.raises(TritonLaunchError) as info:
        server.start()
    message = str(info.value)
    assert "model 'broken'" in message
    assert "weights file is corrupt" in message
    assert not server.is_running()
    assert processes_mentioning(str(broken_repository)) == []


def test_binds_loopback_and_stops_without_orphans(triton, model_repository):
    # The session server: endpoints on 127.0.0.1 only, python stubs running for its models.
    assert triton.grpc_url.startswith("127.0.0.1:")
    assert len(processes_mentioning(str(model_repository))) >= 4  # server + a stub per instance
    ports = triton.config.ports
    for port in (ports.grpc, ports.http, ports.metrics):
        addresses = listening_addresses(port)
        assert addresses and addresses <= LOOPBACK, (port, addresses)


def test_stop_reaps_server_and_stubs(model_repository, tmp_path):
    log = tmp_path / "triton.log"
    server = EmbeddedTriton(TritonConfig(model_repository, ports=TritonPorts.free(), log_file=log))
    server.start()
    assert server.is_ready()
    pgid = server.pid
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert "successfully loaded 'ocr'" in log.read_text()


def test_cli_serves_until_sigterm_then_cleans_up(model_repository):
    ports = TritonPorts.free()
    command = [
        sys.executable, "-m", "navig.client.cli_main", "triton", "serve",
        "--model-repository", str(model_repository),
        "--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "Triton ready" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line or process.poll() is None, "CLI exited before Triton was ready"
        assert "Triton ready" in line
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    time.sleep(0.5)
    mentions = [c for c in processes_mentioning(str(model_repository)) if "cli_main" not in c]
    # The session-wide server (other fixture) also serves this repository: compare by port.
    assert not [c for c in mentions if f"--grpc-port={ports.grpc}" in c]


def test_cli_reports_busy_port_with_exit_code(model_repository):
    ports = TritonPorts.free()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.grpc))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "navig.client.cli_main", "triton", "serve",
             "--model-repository", str(model_repository), "--grpc-port", str(ports.grpc),
             "--http-port", str(ports.http), "--metrics-port", str(ports.metrics)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"gRPC port {ports.grpc} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr
