"""The Geolocator clients and `navig locate` against a real gRPC server with a scripted fake servicer.

The fake is the boundary double: it fails with the status codes a test scripts and counts the calls,
so retry policy and exit codes are checked over real gRPC without Triton. The last two tests run
against the real stack (the session `geolocator` fixture).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image
from typer.testing import CliRunner

from navig.client.cli import app
from navig.client.geolocator import (
    HEALTH_SERVICE,
    AsyncGeolocatorClient,
    GeolocatorClient,
    LocateError,
    RetryPolicy,
)
from navig.export.samples import SAMPLES_DIR
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.api import geolocator_pb2_grpc as pb_grpc

Code = grpc.StatusCode
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.02}  # retries in milliseconds

RESPONSE = pb.LocateResponse(
    location=pb.Location(
        country="Germany", country_code="DE", city="Köln", latitude=50.94, longitude=6.96, confidence=0.8
    ),
    answered_by=pb.EVIDENCE_GUESSER,
    reasoning="German road sign, yellow background. " * 5,
    evidence=[pb.Evidence(tool="ocr", query="Köln 82 km", result="Köln", source="ocr", score=0.93)],
    timings=[
        pb.StageTiming(stage="decode", start_ms=0, duration_ms=2),
        pb.StageTiming(stage="reasoner", start_ms=2, duration_ms=40),
        pb.StageTiming(stage="searcher", start_ms=2, duration_ms=30),
        pb.StageTiming(stage="guesser", start_ms=42, duration_ms=5),
    ],
    degraded=[pb.Degradation(component="vlm_guesser", reason="JSON rejected")],
    reasons=["map: Köln"],
    request_id="req-1",
    total_ms=47.0,
)
NOT_PLACED = pb.LocateResponse(answered_by=pb.NONE, request_id="req-2", reasons=["no evidence"])


@dataclass
class FakeGeolocator(pb_grpc.GeolocatorServicer):
    """Fails with `failures` (in order) before answering `response`; records what arrived."""

    failures: list[Code] = field(default_factory=list)
    fail_after_first_event: Code | None = None
    response: pb.LocateResponse = field(default_factory=lambda: RESPONSE)
    calls: int = 0
    requests: list[pb.LocateRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)

    def _arrive(self, request: pb.LocateRequest, context: grpc.ServicerContext) -> None:
        self.calls += 1
        self.requests.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if self.failures:
            code = self.failures.pop(0)
            context.abort(code, f"scripted {code.name}")

    def Locate(self, request, context):
        self._arrive(request, context)
        return self.response

    def LocateStream(self, request, context):
        self._arrive(request, context)
        yield pb.LocateEvent(reasoning=pb.ReasoningDelta(text="German road sign"))
        if self.fail_after_first_event is not None:
            context.abort(self.fail_after_first_event, "scripted failure mid-stream")
        yield pb.LocateEvent(evidence=self.response.evidence[0] if self.response.evidence else None)
        yield pb.LocateEvent(stage=pb.StageTiming(stage="searcher", start_ms=2, duration_ms=30))
        yield pb.LocateEvent(result=self.response)


@dataclass
class FakeServer:
    fake: FakeGeolocator
    health: health.HealthServicer
    address: str


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeGeolocator()
    health_servicer = health.HealthServicer()
    health_servicer.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    grpc_server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_GeolocatorServicer_to_server(fake, grpc_server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield FakeServer(fake, health_servicer, f"127.0.0.1:{port}")
    grpc_server.stop(0)


def closed_address() -> str:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


# --- the sync client -----------------------------------------------------------------------------


def test_unavailable_is_retried_until_the_answer(server: FakeServer):
    server.fake.failures = [Code.UNAVAILABLE, Code.UNAVAILABLE]
    with GeolocatorClient(server.address, timeout_s=10, **FAST) as client:
        result = client.locate(b"jpeg")
    assert server.fake.calls == 3
    assert result.location is not None and result.location.country_code == "DE"
    assert result.answered_by == "evidence_guesser" and result.extra["latency_ms"] > 0


def test_retries_give_up_after_the_configured_count(server: FakeServer):
    server.fake.failures = [Code.UNAVAILABLE] * 5
    with GeolocatorClient(server.address, retries=2, **FAST) as client, pytest.raises(LocateError) as info:
        client.locate(b"jpeg")
    assert server.fake.calls == 3 and info.value.code == Code.UNAVAILABLE and info.value.attempts == 3


@pytest.mark.parametrize(
    "code", [Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED, Code.DEADLINE_EXCEEDED, Code.INTERNAL]
)
def test_other_errors_are_not_retried(server: FakeServer, code: Code):
    server.fake.failures = [code, code]
    with GeolocatorClient(server.address, **FAST) as client, pytest.raises(LocateError) as info:
        client.locate_proto(b"jpeg")
    assert server.fake.calls == 1
    assert info.value.code == code and info.value.details == f"scripted {code.name}"
    assert not isinstance(info.value, grpc.RpcError)


def test_a_deadline_shorter_than_the_backoff_stops_retrying(server: FakeServer):
    server.fake.failures = [Code.UNAVAILABLE] * 5
    with (
        GeolocatorClient(server.address, timeout_s=0.05, retries=5) as client,
        pytest.raises(LocateError) as info,
    ):
        client.locate(b"jpeg")  # the first backoff (>= 50 ms) would end after the deadline
    assert server.fake.calls == 1 and info.value.code == Code.UNAVAILABLE


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    policy = RetryPolicy(retries=10, base_s=0.1, cap_s=2.0)
    for retry in range(10):
        ceiling = min(2.0, 0.1 * 2**retry)
        assert all(ceiling / 2 <= policy.delay_s(retry) <= ceiling for _ in range(20))


def test_token_options_dict_and_path_arrive_at_the_server(server: FakeServer, tmp_path: Path):
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"jpeg bytes")
    with GeolocatorClient(server.address, token="s3cret") as client:
        response = client.locate_proto(image, {"max_new_tokens": 8, "use_reasoner": False})
    assert response == RESPONSE
    request = server.fake.requests[0]
    assert request.image == b"jpeg bytes"
    assert request.options.max_new_tokens == 8 and request.options.HasField("use_reasoner")
    assert not request.options.use_reasoner and not request.options.HasField("use_ocr")
    assert server.fake.metadata[0]["authorization"] == "Bearer s3cret"
    with GeolocatorClient(server.address) as client:
        client.locate(b"jpeg")
    assert "authorization" not in server.fake.metadata[1]


def test_a_stream_is_retried_only_before_its_first_event(server: FakeServer):
    server.fake.failures = [Code.UNAVAILABLE, Code.UNAVAILABLE]
    with GeolocatorClient(server.address, **FAST) as client:
        events = list(client.locate_stream(b"jpeg"))
    assert server.fake.calls == 3
    assert [e.WhichOneof("event") for e in events] == ["reasoning", "evidence", "stage", "result"]

    server.fake.calls, server.fake.fail_after_first_event = 0, Code.UNAVAILABLE
    received = []
    with GeolocatorClient(server.address, **FAST) as client, pytest.raises(LocateError) as info:
        for event in client.locate_stream(b"jpeg"):
            received.append(event)
    assert server.fake.calls == 1 and len(received) == 1 and info.value.code == Code.UNAVAILABLE


def test_wait_ready_follows_the_health_service(server: FakeServer):
    with GeolocatorClient(server.address) as client:
        client.wait_ready(5)
        server.health.set(HEALTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(LocateError, match="NOT_SERVING"):
            client.wait_ready(0.3)
    with GeolocatorClient(closed_address()) as client, pytest.raises(LocateError) as info:
        client.wait_ready(0.3)
    assert info.value.code == Code.UNAVAILABLE


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="needs the openssl command for a test certificate"
)
def test_tls_with_root_certificates_and_a_token(tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    fake = FakeGeolocator()
    grpc_server = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_GeolocatorServicer_to_server(fake, grpc_server)
    credentials = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
    grpc_server.start()
    try:
        with GeolocatorClient(f"localhost:{port}", root_certificates=cert.read_bytes(), token="t") as client:
            assert client.tls and client.locate(b"jpeg").location is not None
        plaintext = GeolocatorClient(f"127.0.0.1:{port}", retries=0, timeout_s=5)
        with plaintext, pytest.raises(LocateError) as info:
            plaintext.locate(b"jpeg")
        assert info.value.code == Code.UNAVAILABLE
        photo = tmp_path / "photo.png"
        Image.new("RGB", (32, 32)).save(photo)
        result = navig_locate(str(photo), "--address", f"localhost:{port}", "--ca-file", str(cert), "--json")
        assert result.exit_code == 0, result.output
    finally:
        grpc_server.stop(0)
    assert fake.calls == 2 and fake.metadata[0]["authorization"] == "Bearer t"


# --- the async client ----------------------------------------------------------------------------


def test_the_async_client_retries_the_same_way(server: FakeServer):
    async def run() -> tuple[object, LocateError, list[pb.LocateEvent]]:
        async with AsyncGeolocatorClient(server.address, timeout_s=10, token="t", **FAST) as client:
            await client.wait_ready(5)
            server.fake.failures = [Code.UNAVAILABLE, Code.UNAVAILABLE]
            result = await client.locate(b"jpeg")
            assert server.fake.calls == 3
            server.fake.failures = [Code.INVALID_ARGUMENT]
            try:
                await client.locate_proto(b"jpeg")
            except LocateError as exc:
                error = exc
            assert server.fake.calls == 4
            server.fake.failures = [Code.UNAVAILABLE]
            events = [event async for event in client.locate_stream(b"jpeg", {"max_new_tokens": 4})]
            assert server.fake.calls == 6
            return result, error, events

    result, error, events = asyncio.run(run())
    assert result.location.country_code == "DE" and result.extra["latency_ms"] > 0  # type: ignore[attr-defined]
    assert error.code == Code.INVALID_ARGUMENT
    assert events[-1].WhichOneof("event") == "result"
    assert server.fake.metadata[-1]["authorization"] == "Bearer t"


def test_the_async_client_respects_the_deadline_and_mid_stream_failures(server: FakeServer):
    async def run() -> tuple[LocateError, LocateError, int]:
        async with AsyncGeolocatorClient(server.address, timeout_s=0.05, retries=5) as client:
            server.fake.failures = [Code.UNAVAILABLE] * 5
            with pytest.raises(LocateError) as deadline:
                await client.locate(b"jpeg")
            assert server.fake.calls == 1
        server.fake.failures, server.fake.fail_after_first_event = [], Code.UNAVAILABLE
        received = 0
        async with AsyncGeolocatorClient(server.address, **FAST) as client:
            with pytest.raises(LocateError) as mid_stream:
                async for _ in client.locate_stream(b"jpeg"):
                    received += 1
        return deadline.value, mid_stream.value, received

    deadline, mid_stream, received = asyncio.run(run())
    assert deadline.code == Code.UNAVAILABLE and mid_stream.code == Code.UNAVAILABLE
    assert received == 1 and server.fake.calls == 2


# --- navig locate --------------------------------------------------------------------------------

runner = CliRunner()


def navig_locate(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["locate", *args], env=env)


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [folder / "a.jpg", folder / "b.png"]
    for path, fmt in zip(paths, ("JPEG", "PNG")):
        Image.new("RGB", (32, 32), (90, 120, 200)).save(path, fmt)  # the client checks the format only
    (folder / "notes.txt").write_text("not an image suffix: skipped in a directory")
    return paths


def test_json_lines_name_each_image(server: FakeServer, photos: list[Path]):
    result = navig_locate(str(photos[0].parent), "--address", server.address, "--json", "--no-reasoner")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in photos]
    assert records[0]["location"]["country_code"] == "DE" and records[0]["extra"]["latency_ms"] > 0
    assert records[0]["evidence"][0]["query"] == "Köln 82 km"
    assert server.fake.requests[0].options.HasField("use_reasoner")
    assert not server.fake.requests[0].options.HasField("use_map_search")
    assert server.fake.requests[0].options.pipeline == pb.PIPELINE_MODE_UNSPECIFIED  # the server's setting


def test_globs_token_env_and_switches(server: FakeServer, photos: list[Path]):
    pattern = str(photos[0].parent / "*.jpg")
    args = [
        pattern,
        "--address",
        server.address,
        "--json",
        "--max-new-tokens",
        "8",
        "--skip",
        "map",
        "--skip",
        "ocr",
        "--no-evidence",
        "--pipeline",
        "REFERENCE",
    ]
    result = navig_locate(*args, env={"NAVIG_TOKEN": "from-env"})
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(photos[0])]
    options = server.fake.requests[0].options
    assert options.max_new_tokens == 8 and dict(options.tools) == {"map": False, "ocr": False}
    assert not options.return_evidence and not options.HasField("use_map_search")
    assert options.pipeline == pb.REFERENCE
    assert server.fake.metadata[0]["authorization"] == "Bearer from-env"


def test_pretty_and_streamed_output(server: FakeServer, photos: list[Path]):
    result = navig_locate(str(photos[0]), "--address", server.address)
    assert result.exit_code == 0, result.output
    for text in ("Köln", "Germany", "evidence_guesser", "JSON rejected", "reasoner", "latency"):
        assert text in result.stdout
    streamed = navig_locate(str(photos[0]), "--address", server.address, "--stream")
    assert streamed.exit_code == 0, streamed.output
    assert "German road sign" in streamed.stdout and "Köln" in streamed.stdout


def test_an_image_nobody_could_place_exits_1(server: FakeServer, photos: list[Path]):
    server.fake.response = NOT_PLACED
    result = navig_locate(str(photos[0]), "--address", server.address, "--json")
    assert result.exit_code == 1, result.output
    record = json.loads(result.stdout)
    assert record["location"] is None and record["answered_by"] == "none"
    pretty = navig_locate(str(photos[0]), "--address", server.address)
    assert pretty.exit_code == 1 and "no location" in pretty.stdout


@pytest.mark.parametrize("missing", ["nowhere.jpg", "*.nothing-matches"])
def test_bad_inputs_exit_2_before_any_call(server: FakeServer, photos: list[Path], missing: str):
    result = navig_locate(str(photos[0]), str(photos[0].parent / missing), "--address", server.address)
    assert result.exit_code == 2 and server.fake.calls == 0
    assert "error" in result.stderr and "Traceback" not in result.output


def test_formats_the_server_refuses_exit_2_before_any_call(server: FakeServer, photos: list[Path]):
    bitmap, text = photos[0].parent / "c.bmp", photos[0].parent / "d.jpg"
    Image.new("RGB", (32, 32)).save(bitmap, "BMP")
    text.write_text("a JPEG in name only")
    for path, reason in ((bitmap, "BMP; the server reads JPEG/PNG/WEBP"), (text, "not an image")):
        result = navig_locate(str(path), "--address", server.address)
        assert result.exit_code == 2 and server.fake.calls == 0, result.output
        assert reason in result.stderr and "Traceback" not in result.output
    assert "c.bmp" not in navig_locate(str(photos[0].parent), "--address", server.address, "--json").stdout


def test_a_closed_port_exits_3(photos: list[Path]):
    result = navig_locate(str(photos[0]), "--address", closed_address(), "--retries", "1", "--json")
    assert result.exit_code == 3
    assert "UNAVAILABLE" in result.stderr and result.stdout == ""


def test_a_rejected_image_exits_4_and_the_others_still_run(server: FakeServer, photos: list[Path]):
    server.fake.failures = [Code.INVALID_ARGUMENT]
    result = navig_locate(*map(str, photos), "--address", server.address, "--json")
    assert result.exit_code == 4 and server.fake.calls == 2
    assert "INVALID_ARGUMENT" in result.stderr and str(photos[0]) in result.stderr
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == [str(photos[1])]


# --- against the real stack (Triton, tiny checkpoints): slow the first time ------------------------


def test_locate_cli_against_the_real_service(geolocator, samples):
    image = str(SAMPLES_DIR / "sign_000_de.jpg")
    result = navig_locate(image, "--address", geolocator.address, "--json", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["image"] == image and len(record["location"]["country_code"]) == 2


def test_async_stream_against_the_real_service(geolocator, samples):
    async def run() -> list[pb.LocateEvent]:
        async with AsyncGeolocatorClient(geolocator.address, timeout_s=120) as client:
            await client.wait_ready(60)
            stream = client.locate_stream(SAMPLES_DIR / samples[0].file, {"max_new_tokens": 8})
            return [event async for event in stream]

    events = asyncio.run(run())
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[-1] == "result" and kinds.count("result") == 1 and "evidence" in kinds
    assert len(events[-1].result.location.country_code) == 2
