"""The load generator: closed-loop concurrency levels or open-loop request rates, bounded, on asyncio.

It calls the gRPC stubs directly, without the client library's retries: a retry would hide an
error and stretch a latency, and both are what is being measured. Each request is one `Sample`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from navig.client.geolocator import MAX_MESSAGE_BYTES
from navig.orchestrator import wire
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.api import geolocator_pb2_grpc as pb_grpc

MAX_IN_FLIGHT = 256  # open loop: beyond this the generator waits (and the achieved rate shows it)


@dataclass
class Sample:
    start_s: float  # since the level started
    latency_ms: float
    status: str  # "OK" or the gRPC status name
    ttfe_ms: float | None = None  # time to the first streamed event (of any kind)
    ttft_ms: float | None = None  # time to the first REASONER text (GenAI-Perf's time to first token)
    stages_ms: dict[str, float] = field(default_factory=dict)
    server_ms: float | None = None  # the server's own total (acceptance -> answer)
    answered_by: str = ""
    error: str = ""


@dataclass(frozen=True)
class Level:
    """One point of the sweep: `concurrency` workers in a closed loop, or `rate` requests/s open loop."""

    concurrency: int | None = None
    rate: float | None = None

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.concurrency is not None else f"rate={self.rate:g}/s"


@dataclass(frozen=True)
class Budget:
    """When a level stops: after `requests` (counted) or `duration_s` (timed), whichever comes first."""

    requests: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.requests is None and self.duration_s is None:
            raise ValueError("a level needs a request count or a duration")


Call = Callable[[int], Awaitable[Sample]]  # request number -> its sample (times measured inside)


async def run_level(
    call: Call, level: Level, budget: Budget, on_done: Callable[[Sample], None]
) -> list[Sample]:
    """Runs one level; `on_done` sees each sample as it completes (the progress bar)."""
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + budget.duration_s if budget.duration_s is not None else float("inf")
    limit = budget.requests if budget.requests is not None else None
    counter = itertools.count()

    def next_request() -> int | None:
        n = next(counter)
        if (limit is not None and n >= limit) or time.perf_counter() >= deadline:
            return None
        return n

    async def timed(n: int) -> None:
        sample = await call(n)
        sample.start_s -= started
        samples.append(sample)
        on_done(sample)

    if level.concurrency is not None:

        async def worker() -> None:
            while (n := next_request()) is not None:
                await timed(n)

        await asyncio.gather(*(worker() for _ in range(level.concurrency)))
    else:
        assert level.rate is not None and level.rate > 0
        interval, tasks, gate = 1.0 / level.rate, set(), asyncio.Semaphore(MAX_IN_FLIGHT)

        async def bounded(n: int) -> None:
            async with gate:
                await timed(n)

        while (n := next_request()) is not None:
            task = asyncio.create_task(bounded(n))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, started + (n + 1) * interval - time.perf_counter()))
        await asyncio.gather(*tasks)
    return samples


class GeolocatorTarget:
    """Requests to a Geolocator service: `Locate`, or `LocateStream` to see the first event's delay."""

    def __init__(
        self,
        address: str,
        images: Sequence[bytes],
        options: pb.LocateOptions,
        stream: bool,
        timeout_s: float,
        on_result: Callable[[int, pb.LocateResponse], None] | None = None,  # each answer, by request number
    ) -> None:
        self.address, self.images, self.options = address, list(images), options
        self.stream, self.timeout_s, self.on_result = stream, timeout_s, on_result
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> GeolocatorTarget:
        limits = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.aio.insecure_channel(self.address, options=limits)
        self._stub = pb_grpc.GeolocatorStub(self._channel)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def __call__(self, n: int) -> Sample:
        request = pb.LocateRequest(image=self.images[n % len(self.images)], options=self.options)
        started = time.perf_counter()
        ttfe = ttft = None
        try:
            if self.stream:
                result = None
                async for event in self._stub.LocateStream(request, timeout=self.timeout_s):
                    now = (time.perf_counter() - started) * 1e3
                    ttfe = ttfe if ttfe is not None else now
                    if ttft is None and event.HasField("reasoning"):
                        ttft = now
                    if event.HasField("result"):
                        result = event.result
                if result is None:
                    raise RuntimeError("the stream ended without a result")
            else:
                result = await self._stub.Locate(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            return Sample(
                started,
                (time.perf_counter() - started) * 1e3,
                exc.code().name,
                ttfe,
                error=exc.details() or "",
            )
        except RuntimeError as exc:
            return Sample(started, (time.perf_counter() - started) * 1e3, "INCOMPLETE", ttfe, error=str(exc))
        latency = (time.perf_counter() - started) * 1e3
        if self.on_result is not None:
            self.on_result(n, result)
        stages: dict[str, float] = {}
        for timing in result.timings:
            stages[timing.stage] = stages.get(timing.stage, 0.0) + timing.duration_ms
        answered_by = wire.component_name(result.answered_by)
        return Sample(started, latency, "OK", ttfe, ttft, stages, result.total_ms, answered_by)
