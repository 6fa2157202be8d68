"""Who may call: TLS, mTLS and bearer tokens on the real orchestrator (the session Triton), the bind rule,
and the security settings.

Certificates are made here with `cryptography`: a CA, a server certificate for localhost and 127.0.0.1,
a client certificate from that CA, and a client certificate from an unrelated CA. Calls that are refused
never reach the pipeline, so only three tests pay for a real Locate.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from typer.testing import CliRunner

from navig.client.cli import app
from navig.client.geolocator import GeolocatorClient, LocateError
from navig.export.samples import SAMPLES_DIR
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.api import geolocator_pb2_grpc as pb_grpc
from navig.orchestrator.security import (
    bind_allowed,
    check_exposure,
    is_loopback,
    metrics_bind_host,
    token_problem,
)
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings, SettingsError, load_settings, read_tokens

Code = grpc.StatusCode
CHEAP = {"max_new_tokens": 8, "use_reasoner": False, "use_describer": False}
IMAGE = SAMPLES_DIR / "sign_000_de.jpg"
TOKENS_FILE = "# deploy tokens\n\nfile-token-1\n  file-token-2  \n"
ENV_TOKEN = "env-token"
runner = CliRunner()


# --- a throwaway PKI --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _issue(
    name: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A P-256 key and a certificate for it: self-signed CA when `issuer` is None, else a leaf."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(
    folder: Path, name: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[Path, Path]:
    cert, key = pair
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _issue("navig test CA", None)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _issue("localhost", ca, ExtendedKeyUsageOID.SERVER_AUTH, san)
    client = _issue("navig client", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue = _issue("rogue client", _issue("unrelated CA", None), ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_path, _ = _write(folder, "ca", ca)
    return Pki(ca_path, *_write(folder, "server", server), *_write(folder, "client", client),
               *_write(folder, "rogue", rogue))  # fmt: skip


# --- servers on the session Triton ------------------------------------------------------------------


def secure_settings(base: Settings, **overrides: object) -> Settings:
    """The session service's settings (Triton, gazetteer, guidebook, free ports) plus `overrides`."""
    keep = ("triton_url", "port", "metrics_port", "log_json", "gazetteer_dir", "guidebook_dir")
    return load_settings(**{k: getattr(base, k) for k in keep}, **overrides)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(TOKENS_FILE)
    return path


@pytest.fixture(scope="module")
def tls_server(geolocator_settings: Settings, pki: Pki, tokens_file: Path) -> Iterator[OrchestratorThread]:
    """TLS with tokens from a file and from `auth_tokens`; reflection on (behind the token check)."""
    settings = secure_settings(
        geolocator_settings,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        auth_tokens_file=tokens_file,
        auth_tokens=ENV_TOKEN,
    )
    with OrchestratorThread(settings) as server:
        with GeolocatorClient(server.address, root_certificates=pki.ca.read_bytes()) as client:
            client.wait_ready(120)  # health needs no token
        yield server


@pytest.fixture(scope="module")
def mtls_server(geolocator_settings: Settings, pki: Pki) -> Iterator[OrchestratorThread]:
    """Client certificates required, no tokens, no reflection."""
    settings = secure_settings(
        geolocator_settings,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
        reflection=False,
    )
    with OrchestratorThread(settings) as server:
        yield server


def localhost(server: OrchestratorThread) -> str:
    return f"localhost:{server.orchestrator.port}"


def auth_failures(server: OrchestratorThread, reason: str) -> float:
    registry = server.orchestrator.metrics.registry
    return registry.get_sample_value("navig_auth_failures_total", {"reason": reason}) or 0.0


def list_services(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] | None = None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    responses = list(stub.ServerReflectionInfo(requests, timeout=10, metadata=metadata))
    return [s.name for s in responses[0].list_services_response.service]


# --- TLS + bearer tokens ------------------------------------------------------------------------------


def test_a_valid_token_gets_an_answer_over_tls_by_name_and_by_ip(tls_server: OrchestratorThread, pki: Pki):
    ca = pki.ca.read_bytes()
    with GeolocatorClient(localhost(tls_server), root_certificates=ca, token="file-token-2") as client:
        result = client.locate(IMAGE, CHEAP, timeout_s=120)
    assert client.tls and len(result.location.country_code) == 2
    with GeolocatorClient(tls_server.address, root_certificates=ca, token=ENV_TOKEN) as client:
        assert tls_server.address.startswith("127.0.0.1:")  # the certificate's IP SAN is checked
        events = list(client.locate_stream(IMAGE, CHEAP, timeout_s=120))
    assert events[-1].WhichOneof("event") == "result"


def test_missing_wrong_and_malformed_tokens_are_unauthenticated(tls_server: OrchestratorThread, pki: Pki):
    before = {r: auth_failures(tls_server, r) for r in ("missing", "invalid", "malformed")}
    ca = pki.ca.read_bytes()
    with GeolocatorClient(localhost(tls_server), root_certificates=ca, retries=0) as client:
        with pytest.raises(LocateError) as missing:
            client.locate(b"never decoded")
        with pytest.raises(LocateError) as missing_stream:
            list(client.locate_stream(b"never decoded"))
    secret = "file-token-1-but-not-quite"
    wrong_client = GeolocatorClient(localhost(tls_server), root_certificates=ca, token=secret, retries=0)
    with wrong_client, pytest.raises(LocateError) as wrong:
        wrong_client.locate(b"never decoded")
    channel = grpc.secure_channel(localhost(tls_server), grpc.ssl_channel_credentials(ca))
    with channel, pytest.raises(grpc.RpcError) as malformed:
        metadata = (("authorization", "Basic file-token-1"),)
        pb_grpc.GeolocatorStub(channel).Locate(pb.LocateRequest(image=b"x"), timeout=10, metadata=metadata)

    assert missing.value.code == missing_stream.value.code == wrong.value.code == Code.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in missing.value.details
    assert wrong.value.details == "invalid bearer token" and secret not in str(wrong.value)
    assert malformed.value.code() == Code.UNAUTHENTICATED and "Bearer" in malformed.value.details()
    assert auth_failures(tls_server, "missing") == before["missing"] + 2
    assert auth_failures(tls_server, "invalid") == before["invalid"] + 1
    assert auth_failures(tls_server, "malformed") == before["malformed"] + 1


def test_health_needs_no_token_but_reflection_does(tls_server: OrchestratorThread, pki: Pki):
    ca = pki.ca.read_bytes()
    with GeolocatorClient(localhost(tls_server), root_certificates=ca) as client:
        client.wait_ready(10)
    channel = grpc.secure_channel(localhost(tls_server), grpc.ssl_channel_credentials(ca))
    with channel:
        with pytest.raises(grpc.RpcError) as refused:
            list_services(channel)
        services = list_services(channel, (("authorization", "Bearer file-token-1"),))
    assert refused.value.code() == Code.UNAUTHENTICATED
    assert "navig.v1.Geolocator" in services and "grpc.health.v1.Health" in services


def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_server: OrchestratorThread):
    client = GeolocatorClient(tls_server.address, retries=0, timeout_s=10, token="file-token-1")
    with client, pytest.raises(LocateError) as info:
        client.locate(b"never decoded")
    assert info.value.code == Code.UNAVAILABLE


def test_navig_locate_over_tls_with_a_token(tls_server: OrchestratorThread, pki: Pki):
    common = [str(IMAGE), "--address", localhost(tls_server), "--ca-file", str(pki.ca), "--retries", "0"]
    refused = runner.invoke(app, ["locate", *common])
    result = runner.invoke(
        app,
        ["locate", *common, "--json", "--max-new-tokens", "8", "--no-reasoner", "--skip", "describer"],
        env={"NAVIG_TOKEN": "file-token-1"},
    )
    assert refused.exit_code == 4 and "UNAUTHENTICATED" in refused.stderr, refused.output
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["location"]["country_code"]) == 2


# --- mutual TLS ---------------------------------------------------------------------------------------


def test_mtls_accepts_only_certificates_from_the_client_ca(mtls_server: OrchestratorThread, pki: Pki):
    ca = pki.ca.read_bytes()
    address = localhost(mtls_server)
    for cert_and_key in ({}, {"cert_file": pki.rogue_cert, "key_file": pki.rogue_key}):
        with (
            GeolocatorClient(
                address, root_certificates=ca, retries=0, timeout_s=10, **cert_and_key
            ) as client,
            pytest.raises(LocateError) as info,
        ):
            client.locate(b"never decoded")
        assert info.value.code == Code.UNAVAILABLE, cert_and_key
    mine = {"cert_file": pki.client_cert, "key_file": pki.client_key}
    with GeolocatorClient(address, root_certificates=ca, **mine) as client:
        client.wait_ready(120)
        result = client.locate(IMAGE, CHEAP, timeout_s=120)
    assert len(result.location.country_code) == 2


def test_mtls_through_navig_locate_and_reflection_off(
    mtls_server: OrchestratorThread, pki: Pki, tmp_path: Path
):
    too_small = tmp_path / "too_small.png"  # the handshake is what is tested; the server rejects 8x8 px
    Image.new("RGB", (8, 8)).save(too_small)
    common = [
        str(too_small),
        "--address",
        localhost(mtls_server),
        "--ca-file",
        str(pki.ca),
        "--retries",
        "0",
    ]
    without = runner.invoke(app, ["locate", *common])
    with_cert = runner.invoke(
        app, ["locate", *common, "--cert-file", str(pki.client_cert), "--key-file", str(pki.client_key)]
    )
    half = runner.invoke(app, ["locate", *common, "--cert-file", str(pki.client_cert)])
    assert without.exit_code == 3 and "UNAVAILABLE" in without.stderr, without.output
    assert with_cert.exit_code == 4 and "INVALID_ARGUMENT" in with_cert.stderr, with_cert.output  # it got in
    assert half.exit_code == 2 and "--key-file" in half.stderr, half.output

    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    channel = grpc.secure_channel(localhost(mtls_server), credentials)
    with channel, pytest.raises(grpc.RpcError) as info:
        list_services(channel)
    assert info.value.code() == Code.UNIMPLEMENTED


def test_client_certificate_and_key_go_together(pki: Pki):
    with pytest.raises(ValueError, match="cert_file and key_file"):
        GeolocatorClient("localhost:1", cert_file=pki.client_cert)
    with GeolocatorClient("localhost:1", cert_file=pki.client_cert, key_file=pki.client_key) as client:
        assert client.tls


# --- the token check and the bind rule, as pure functions ------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ((), "missing"),
        ((("x-other", "Bearer good"),), "missing"),
        ((("authorization", "Basic good"),), "malformed"),
        ((("authorization", "Bearer "),), "malformed"),
        ((("authorization", "Bearer goo"),), "invalid"),
        ((("authorization", "Bearer good2"),), "invalid"),
        ((("authorization", "Bearer good"),), None),
        ((("authorization", "bearer  other "),), None),
        ((("authorization", b"Bearer other"),), None),
    ],
)
def test_token_problem(metadata: tuple, problem: str | None):
    assert token_problem(metadata, [b"good", b"other"]) == problem


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LocalHost", "::ffff:127.0.0.1"]
)
def test_loopback_hosts_may_serve_without_tls_or_tokens(host: str):
    assert is_loopback(host) and bind_allowed(host, tls=False, auth=False, insecure=False)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "[::]", "", "192.168.1.20", "10.0.0.5", "fe80::1", "geo.example.org"]
)
def test_other_hosts_need_tls_tokens_or_insecure(host: str):
    assert not is_loopback(host)
    assert not bind_allowed(host, tls=False, auth=False, insecure=False)
    assert bind_allowed(host, tls=True, auth=False, insecure=False)
    assert bind_allowed(host, tls=False, auth=True, insecure=False)
    assert bind_allowed(host, tls=False, auth=False, insecure=True)


def test_exposure_checks_grpc_and_metrics(pki: Pki):
    tls = {"tls_cert_file": pki.server_cert, "tls_key_file": pki.server_key}
    with pytest.raises(SettingsError, match=r"gRPC on '0\.0\.0\.0'"):
        check_exposure(load_settings(host="0.0.0.0"))
    exposed = load_settings(host="0.0.0.0", **tls)
    check_exposure(exposed)
    assert metrics_bind_host(exposed) == "127.0.0.1"  # /metrics has no TLS: it stays on loopback
    with pytest.raises(SettingsError, match=r"/metrics on '0\.0\.0\.0'"):
        check_exposure(load_settings(host="0.0.0.0", metrics_host="0.0.0.0", **tls))
    check_exposure(load_settings(host="0.0.0.0", metrics_port=None, **tls))
    open_all = load_settings(host="0.0.0.0", insecure=True)
    check_exposure(open_all)
    assert metrics_bind_host(open_all) == "0.0.0.0"
    assert metrics_bind_host(load_settings(host="::1")) == "::1"


def test_navig_serve_refuses_an_open_lan_bind_before_starting_anything(tmp_path: Path, pki: Pki):
    nothing = str(tmp_path / "no_model_repository")  # starting Triton on it would fail differently (exit 1)
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--model-repository", nothing], env={})
    assert result.exit_code == 2, result.output
    assert (
        "error:" in result.stderr
        and "refusing to expose" in result.stderr
        and "Traceback" not in result.output
    )
    half = runner.invoke(app, ["serve", "--tls-cert", str(pki.server_cert), "--model-repository", nothing])
    assert half.exit_code == 2 and "tls_key_file" in half.stderr, half.output
    empty = tmp_path / "tokens"
    empty.write_text("# nobody yet\n\n")
    no_tokens = runner.invoke(app, ["serve", "--auth-tokens-file", str(empty), "--model-repository", nothing])
    assert no_tokens.exit_code == 2 and "no tokens in" in no_tokens.stderr, no_tokens.output


# --- settings ---------------------------------------------------------------------------------------------


def test_tokens_from_a_file_and_the_environment_stay_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "tokens"
    path.write_text(TOKENS_FILE)
    assert read_tokens(path) == ["file-token-1", "file-token-2"]
    monkeypatch.setenv("NAVIG_AUTH_TOKENS", "alpha-1, beta-2,,")
    settings = load_settings(auth_tokens_file=path)
    assert [t.get_secret_value() for t in settings.auth_tokens] == ["alpha-1", "beta-2"]
    assert "alpha-1" not in repr(settings) and "alpha-1" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls_cert_file": "{cert}"}, "tls_key_file: .*go together"),
        ({"tls_key_file": "{key}"}, "tls_key_file: .*go together"),
        ({"tls_cert_file": "{missing}", "tls_key_file": "{key}"}, "tls_cert_file: .*does not exist"),
        ({"tls_client_ca_file": "{cert}"}, "tls_client_ca_file: .*needs tls_cert_file"),
        ({"auth_tokens_file": "{missing}"}, "auth_tokens_file: .*does not exist"),
        ({"auth_tokens_file": "{empty}"}, "auth_tokens_file: .*no tokens in"),
        ({"auth_tokens_file": "{spaced}"}, "auth_tokens_file: .*line 2 has spaces"),
        ({"auth_tokens": "ok,not ok"}, "auth_tokens: .*position 2 has spaces"),
    ],
)
def test_security_settings_are_validated(tmp_path: Path, pki: Pki, overrides: dict[str, str], message: str):
    (tmp_path / "empty").write_text("\n# only comments\n")
    (tmp_path / "spaced").write_text("fine\nhalf token # trailing comment\n")
    paths = {"cert": pki.server_cert, "key": pki.server_key, "missing": tmp_path / "missing.pem"}
    paths |= {"empty": tmp_path / "empty", "spaced": tmp_path / "spaced"}
    values = {k: v.format(**paths) if k != "auth_tokens" else v for k, v in overrides.items()}
    with pytest.raises(SettingsError, match=message) as info:
        load_settings(**values)
    assert "half token" not in str(info.value) and "not ok" not in str(info.value)
