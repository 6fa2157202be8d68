"""Who may call the Geolocator: TLS (optionally mutual) credentials, bearer tokens, and where binding is safe.

Policy: with tokens configured every method needs `authorization: Bearer <token>`, reflection included
(it maps the whole API), except the gRPC health service, which load balancers and kubelet probes call
without credentials. mTLS is enforced by the TLS handshake itself, so there it covers health too. A
non-loopback bind needs TLS or tokens unless the operator says `insecure`; the metrics endpoint has
neither, so it stays on loopback unless `metrics_host` is set and `insecure` accepts it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from prometheus_client import Counter

from navig.orchestrator.settings import Settings, SettingsError, read_tokens

log = logging.getLogger("navig.security")

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})

MESSAGES = {
    "missing": "this server requires `authorization: Bearer <token>` metadata",
    "malformed": "the authorization metadata must be `Bearer <token>`",
    "invalid": "invalid bearer token",
}


# --- credentials and tokens ---------------------------------------------------------------------------


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the PEM files (client certificates required when a client CA is set); None
    without TLS."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def load_tokens(settings: Settings) -> list[bytes]:
    """Every configured token (`auth_tokens` and the lines of `auth_tokens_file`), deduplicated."""
    tokens = [t.get_secret_value() for t in settings.auth_tokens]
    if settings.auth_tokens_file is not None:
        tokens += read_tokens(settings.auth_tokens_file)
    return [t.encode() for t in dict.fromkeys(tokens)]


# --- the token check ----------------------------------------------------------------------------------


def token_problem(metadata: Any, tokens: Sequence[bytes]) -> str | None:
    """None when the call carries one of `tokens`, else why not: "missing", "malformed" or "invalid".

    Every token is compared, each in constant time, so the time taken says nothing about which one (or
    how much of one) matched."""
    values = [value for key, value in metadata or () if key == "authorization"]
    if not values:
        return "missing"
    value = values[0].decode("ascii", "replace") if isinstance(values[0], bytes) else values[0]
    scheme, _, presented = value.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return "malformed"
    matched = False
    digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
    for token in tokens:  # equal-length digests: the comparison reveals not even the token's length
        matched |= hmac.compare_digest(digest, hashlib.sha256(token).digest())
    return None if matched else "invalid"


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED before the servicer runs unless the call has a valid bearer token."""

    def __init__(
        self,
        tokens: Sequence[bytes],
        failures: Counter | None = None,
        open_prefixes: tuple[str, ...] = OPEN_METHOD_PREFIXES,
    ) -> None:
        if not tokens:
            raise ValueError("a token check without tokens would refuse every call")
        self.tokens = tuple(tokens)
        self.failures = failures
        self.open_prefixes = open_prefixes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(self.open_prefixes):
            return await continuation(handler_call_details)
        reason = token_problem(handler_call_details.invocation_metadata, self.tokens)
        if reason is None:
            return await continuation(handler_call_details)
        if self.failures is not None:
            self.failures.labels(reason).inc()
        log.info("call refused", extra={"fields": {"method": method, "reason": reason}})
        return _refusal(await continuation(handler_call_details), MESSAGES[reason])


def _refusal(handler: grpc.RpcMethodHandler | None, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` (unknown methods: unary) that aborts UNAUTHENTICATED."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(refuse, handler.request_deserializer, handler.response_serializer)


# --- where binding is safe ----------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped, bracketed) and localhost; "", 0.0.0.0, :: and names are not."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def bind_allowed(host: str, *, tls: bool, auth: bool, insecure: bool = False) -> bool:
    """The exposure rule: a non-loopback host needs TLS or tokens, unless the operator says insecure."""
    return insecure or tls or auth or is_loopback(host)


def metrics_bind_host(settings: Settings) -> str:
    """`metrics_host`, or else `host` when that is loopback or `insecure`, else 127.0.0.1: /metrics has no
    TLS or tokens of its own, so exposing it must be asked for."""
    if settings.metrics_host is not None:
        return settings.metrics_host
    return settings.host if settings.insecure or is_loopback(settings.host) else "127.0.0.1"


def check_exposure(settings: Settings) -> None:
    """SettingsError when the settings would open an endpoint beyond loopback with no TLS or tokens."""
    tls = settings.tls_cert_file is not None
    auth = bool(settings.auth_tokens) or settings.auth_tokens_file is not None
    problems = []
    if not bind_allowed(settings.host, tls=tls, auth=auth, insecure=settings.insecure):
        problems.append(
            f"gRPC on {settings.host!r} (not loopback) needs TLS (tls_cert_file + tls_key_file) or bearer "
            "tokens (auth_tokens_file / NAVIG_AUTH_TOKENS)"
        )
    metrics_host = metrics_bind_host(settings)
    if settings.metrics_port is not None and not bind_allowed(
        metrics_host, tls=False, auth=False, insecure=settings.insecure
    ):
        problems.append(f"/metrics on {metrics_host!r} (not loopback) has no TLS or tokens")
    if problems:
        raise SettingsError(
            "refusing to expose " + "; ".join(problems) + "; bind 127.0.0.1, or accept it with insecure "
            "(--insecure, NAVIG_INSECURE=1)"
        )
