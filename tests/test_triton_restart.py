"""`navig serve` survives its embedded Triton being killed, and gives up loudly when it keeps dying.

A real `navig serve` process with its own embedded Triton (the session's exported repository),
real Locate calls in flight when tritonserver gets SIGKILL; then the restart limit is reached
and the process must exit 1 so that its own supervisor (Kubernetes, systemd) takes over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from navig.client.geolocator import GeolocatorClient, LocateError
from navig.export.samples import SAMPLES_DIR, Sample
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.embedded_triton import TritonPorts
from navig.orchestrator.tools.gazetteer.index import GazetteerIndex

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
FAST = pb.LocateOptions(max_new_tokens=16)
CALL_DEADLINE_S = 60.0


def health(address: str) -> int | None:
    try:
        with grpc.insecure_channel(address) as channel:
            request = health_pb2.HealthCheckRequest(service="navig.v1.Geolocator")
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
    except grpc.RpcError:
        return None


def wait_for(condition, what: str, timeout_s: float = 240.0) -> None:
    """Polls `condition` (a bound on waiting for an event, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.2)


def tritonserver(serve: subprocess.Popen) -> psutil.Process:
    (server,) = [p for p in psutil.Process(serve.pid).children() if p.name() == "tritonserver"]
    return server


def locate(address: str, image: bytes) -> str:
    """One call's outcome: OK or the status name (a call that hung past its deadline: DEADLINE_EXCEEDED)."""
    try:
        with GeolocatorClient(address, timeout_s=CALL_DEADLINE_S, retries=0) as client:
            client.locate_proto(image, FAST)
        outcome = "OK"
    except LocateError as exc:
        outcome = exc.code.name
    return outcome


def test_killed_triton_is_restarted_then_the_limit_exits_1(
    model_repository: Path, gazetteer_index: GazetteerIndex, default_guidebook: Path, samples: list[Sample]
):
    port = TritonPorts.free().grpc
    address = f"127.0.0.1:{port}"
    environment = {
        **os.environ,
        "NAVIG_GAZETTEER_DIR": str(gazetteer_index.path),
        "NAVIG_GUIDEBOOK_DIR": str(default_guidebook),
        "NAVIG_TRITON_MAX_RESTARTS": "1",
        "NAVIG_TRITON_RESTART_BACKOFF_S": "0.5",
        "NAVIG_LOG_JSON": "false",
    }
    command = [sys.executable, "-m", "navig.client.cli_main", "serve", "--model-repository",
               str(model_repository), "--port", str(port), "--metrics-port", "0"]  # fmt: skip
    serve = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    image = (SAMPLES_DIR / samples[0].file).read_bytes()
    try:
        wait_for(lambda: health(address) == SERVING, "SERVING after start")
        first = tritonserver(serve)
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(locate, address, image) for _ in range(4)]
            time.sleep(1.0)  # let the calls reach Triton
            first.send_signal(signal.SIGKILL)
            outcomes = [call.result() for call in calls]
        assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes  # never INTERNAL, never past the deadline
        killed = time.monotonic()
        wait_for(lambda: health(address) != SERVING, "NOT_SERVING while Triton is down", 30)
        wait_for(lambda: health(address) == SERVING, "SERVING again after the restart")
        print(f"\nin flight at the kill: {outcomes}; SERVING again {time.monotonic() - killed:.1f} s later")
        assert serve.poll() is None and tritonserver(serve).pid != first.pid
        assert locate(address, image) == "OK"
        tritonserver(serve).send_signal(signal.SIGKILL)  # a second exit in the window: over the limit of 1
        output = serve.communicate(timeout=120)[0]
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()
    assert serve.returncode == 1, output
    assert "triton exited unexpectedly" in output and "triton restarted" in output
    assert "Triton exited 2 times" in output and "a supervisor restarts navig serve" in output
    assert not orphaned_stubs(model_repository)


def orphaned_stubs(model_repository: Path) -> list[psutil.Process]:
    """Python-backend stubs of this repository whose server is gone (reparented to init)."""
    stubs = []
    for process in psutil.process_iter(["name", "cmdline", "ppid"]):
        command = " ".join(process.info["cmdline"] or [])
        if "triton_python_backend_stub" in command and str(model_repository) in command:
            stubs.append(process)
    return [p for p in stubs if p.info["ppid"] == 1]
