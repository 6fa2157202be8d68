"""Clients for the `navig.v1.Geolocator` service: `GeolocatorClient` (sync) and `AsyncGeolocatorClient`.

Both share one policy: a default deadline per call, retries with exponential backoff and jitter on
UNAVAILABLE only (a rejected image, an overloaded server or a passed deadline would fail the same way
again), never past the call's deadline; optional TLS (or mTLS) and a bearer token on every call; 32 MiB
messages both ways. Failures are raised as `LocateError` so callers need not import grpc.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from navig.client.results import LocateResult
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.api import geolocator_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 32 * 2**20
HEALTH_SERVICE = contract.GEOLOCATOR_SERVICE
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})

Image = bytes | Path
Options = pb.LocateOptions | Mapping[str, Any] | None


class LocateError(Exception):
    """A failed Geolocator call: the gRPC status code and the server's (or channel's) message."""

    def __init__(self, code: grpc.StatusCode, details: str, attempts: int = 1) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.attempts = attempts

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes despite the custom __init__
        return (type(self), (self.code, self.details, self.attempts))

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, attempts: int = 1) -> LocateError:
        code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", attempts)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff before retry n (0-based): min(cap, base * 2^n), scaled by a random factor in [0.5, 1]."""

    retries: int = 3
    base_s: float = 0.1
    cap_s: float = 2.0

    def delay_s(self, retry: int) -> float:
        return min(self.cap_s, self.base_s * 2**retry) * random.uniform(0.5, 1.0)


class _Attempts:
    """Bookkeeping for one call: remaining time per attempt, and whether another attempt is allowed."""

    def __init__(self, policy: RetryPolicy, timeout_s: float | None) -> None:
        self.policy = policy
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.made = 0

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def next_delay_s(self, error: grpc.RpcError) -> float | None:
        """The sleep before the next attempt, or None when `error` must be raised."""
        code = error.code() if callable(getattr(error, "code", None)) else None
        if code not in RETRYABLE or self.made > self.policy.retries:
            return None
        delay = self.policy.delay_s(self.made - 1)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None  # the next attempt would start after the deadline
        return delay


def as_options(options: Options) -> pb.LocateOptions | None:
    """A `pb.LocateOptions` from itself, a dict of its fields (None values: unset), or None."""
    if options is None or isinstance(options, pb.LocateOptions):
        return options
    return pb.LocateOptions(**{k: v for k, v in options.items() if v is not None})


def as_request(image: Image, options: Options) -> pb.LocateRequest:
    data = image.read_bytes() if isinstance(image, Path) else image
    return pb.LocateRequest(image=data, options=as_options(options))


def _channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


class _Base:
    """Options shared by both clients.

    `timeout_s` is the default deadline per call (retries included; None: no deadline); `retries` is how
    many times UNAVAILABLE is retried, after `backoff_s` * 2^n (capped at `max_backoff_s`, jittered);
    `tls` / `root_certificates` (PEM; implies TLS) secure the channel; `cert_file` + `key_file` (PEM client
    certificate chain and its key; imply TLS) answer a server that requires client certificates (mTLS);
    `token` is sent as `authorization: Bearer <token>` on every call.
    """

    def __init__(
        self,
        address: str,
        timeout_s: float | None = 300.0,
        retries: int = 3,
        tls: bool = False,
        root_certificates: bytes | None = None,
        token: str | None = None,
        backoff_s: float = 0.1,
        max_backoff_s: float = 2.0,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
    ) -> None:
        if (cert_file is None) != (key_file is None):
            raise ValueError("cert_file and key_file go together (a PEM client certificate and its key)")
        self.address = address
        self.timeout_s = timeout_s
        self.policy = RetryPolicy(retries, backoff_s, max_backoff_s)
        self.tls = tls or root_certificates is not None or cert_file is not None
        self._credentials = (
            grpc.ssl_channel_credentials(
                root_certificates,
                Path(key_file).read_bytes() if key_file is not None else None,
                Path(cert_file).read_bytes() if cert_file is not None else None,
            )
            if self.tls
            else None
        )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._channel = self._open_channel()
        self._stub = pb_grpc.GeolocatorStub(self._channel)

    def _open_channel(self) -> Any:
        raise NotImplementedError

    def _timeout(self, timeout_s: float | None) -> float | None:
        return self.timeout_s if timeout_s is None else timeout_s


class GeolocatorClient(_Base):
    """Blocking client; safe to share between threads (one channel, calls multiplex on it)."""

    def _open_channel(self) -> grpc.Channel:
        if self._credentials is not None:
            return grpc.secure_channel(self.address, self._credentials, options=_channel_options())
        return grpc.insecure_channel(self.address, options=_channel_options())

    def locate(self, image: Image, options: Options = None, timeout_s: float | None = None) -> LocateResult:
        """The typed answer; `result.extra["latency_ms"]` is the wall time seen here, retries included."""
        started = time.perf_counter()
        result = LocateResult.from_proto(self.locate_proto(image, options, timeout_s))
        result.extra["latency_ms"] = (time.perf_counter() - started) * 1e3
        return result

    def locate_proto(
        self, image: Image, options: Options = None, timeout_s: float | None = None
    ) -> pb.LocateResponse:
        """The raw response message; raises LocateError."""
        request = as_request(image, options)
        attempts = _Attempts(self.policy, self._timeout(timeout_s))
        while True:
            attempts.made += 1
            try:
                return self._stub.Locate(request, timeout=attempts.remaining_s(), metadata=self._metadata)
            except grpc.RpcError as error:
                delay = attempts.next_delay_s(error)
                if delay is None:
                    raise LocateError.from_rpc(error, attempts.made) from None
                time.sleep(delay)

    def locate_stream(
        self, image: Image, options: Options = None, timeout_s: float | None = None
    ) -> Iterator[pb.LocateEvent]:
        """Events as the server sends them, the result last; retried only before the first event."""
        request = as_request(image, options)
        attempts = _Attempts(self.policy, self._timeout(timeout_s))
        while True:
            attempts.made += 1
            started = False
            call = self._stub.LocateStream(request, timeout=attempts.remaining_s(), metadata=self._metadata)
            try:
                for event in call:
                    started = True
                    yield event
                return
            except grpc.RpcError as error:
                delay = None if started else attempts.next_delay_s(error)
                if delay is None:
                    raise LocateError.from_rpc(error, attempts.made) from None
            finally:
                call.cancel()  # a consumer that stops early must not leave the server working
            time.sleep(delay)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the health service says SERVING for the Geolocator; LocateError otherwise."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LocateError(
                    grpc.StatusCode.UNAVAILABLE, f"{self.address} not ready in {timeout_s} s: {last}"
                )
            try:
                status = stub.Check(request, timeout=min(remaining, 2.0), metadata=self._metadata).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise LocateError.from_rpc(error) from None  # no health service: waiting cannot help
                last = LocateError.from_rpc(error).args[0]
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GeolocatorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncGeolocatorClient(_Base):
    """The asyncio client (grpc.aio); create it inside the event loop that uses it."""

    def _open_channel(self) -> grpc.aio.Channel:
        if self._credentials is not None:
            return grpc.aio.secure_channel(self.address, self._credentials, options=_channel_options())
        return grpc.aio.insecure_channel(self.address, options=_channel_options())

    async def locate(
        self, image: Image, options: Options = None, timeout_s: float | None = None
    ) -> LocateResult:
        """The typed answer; `result.extra["latency_ms"]` is the wall time seen here, retries included."""
        started = time.perf_counter()
        result = LocateResult.from_proto(await self.locate_proto(image, options, timeout_s))
        result.extra["latency_ms"] = (time.perf_counter() - started) * 1e3
        return result

    async def locate_proto(
        self, image: Image, options: Options = None, timeout_s: float | None = None
    ) -> pb.LocateResponse:
        """The raw response message; raises LocateError."""
        request = as_request(image, options)
        attempts = _Attempts(self.policy, self._timeout(timeout_s))
        while True:
            attempts.made += 1
            try:
                return await self._stub.Locate(
                    request, timeout=attempts.remaining_s(), metadata=self._metadata
                )
            except grpc.RpcError as error:
                delay = attempts.next_delay_s(error)
                if delay is None:
                    raise LocateError.from_rpc(error, attempts.made) from None
            await asyncio.sleep(delay)

    async def locate_stream(
        self, image: Image, options: Options = None, timeout_s: float | None = None
    ) -> AsyncIterator[pb.LocateEvent]:
        """Events as the server sends them, the result last; retried only before the first event."""
        request = as_request(image, options)
        attempts = _Attempts(self.policy, self._timeout(timeout_s))
        while True:
            attempts.made += 1
            started = False
            call = self._stub.LocateStream(request, timeout=attempts.remaining_s(), metadata=self._metadata)
            try:
                async for event in call:
                    started = True
                    yield event
                return
            except grpc.RpcError as error:
                delay = None if started else attempts.next_delay_s(error)
                if delay is None:
                    raise LocateError.from_rpc(error, attempts.made) from None
            finally:
                call.cancel()
            await asyncio.sleep(delay)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Wait until the health service says SERVING for the Geolocator; LocateError otherwise."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=HEALTH_SERVICE)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LocateError(
                    grpc.StatusCode.UNAVAILABLE, f"{self.address} not ready in {timeout_s} s: {last}"
                )
            try:
                response = await stub.Check(request, timeout=min(remaining, 2.0), metadata=self._metadata)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise LocateError.from_rpc(error) from None  # no health service: waiting cannot help
                last = LocateError.from_rpc(error).args[0]
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncGeolocatorClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
