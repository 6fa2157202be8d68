"""A synchronous client for the `navig.v1.Geolocator` service."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.api import geolocator_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 32 * 2**20


class GeolocatorClient:
    def __init__(self, address: str, timeout_s: float | None = 300.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = pb_grpc.GeolocatorStub(self._channel)

    def locate(
        self, image: bytes, options: pb.LocateOptions | None = None, timeout_s: float | None = None
    ) -> pb.LocateResponse:
        """Raises grpc.RpcError with the server's status code and message on failure."""
        request = pb.LocateRequest(image=image, options=options)
        return self._stub.Locate(request, timeout=timeout_s or self.timeout_s)

    def locate_stream(
        self, image: bytes, options: pb.LocateOptions | None = None, timeout_s: float | None = None
    ) -> Iterator[pb.LocateEvent]:
        request = pb.LocateRequest(image=image, options=options)
        yield from self._stub.LocateStream(request, timeout=timeout_s or self.timeout_s)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GeolocatorClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
