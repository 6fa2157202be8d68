"""The `navig.v1.Geolocator` servicer: a thin layer of request handling over the pipeline.

Per call: request id and log context, admission (bounded concurrency and queue), the client's
deadline, options merged with settings, then the pipeline; every failure leaves as a gRPC status
with a message, never a traceback, and is counted in the metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from navig.orchestrator import wire
from navig.orchestrator.admission import Admission
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.api import geolocator_pb2_grpc as pb_grpc
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import PipelineError, Unavailable
from navig.orchestrator.health import TritonHealth
from navig.orchestrator.logs import request_context
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.options import RunOptions, run_options
from navig.orchestrator.pipeline import Pipeline
from navig.orchestrator.prompts import PROMPTS_VERSION
from navig.orchestrator.result_cache import Lookup, ResultCache
from navig.orchestrator.results import Event, Evidence, Outcome, ReasoningDelta, StageTiming
from navig.orchestrator.settings import Settings

log = logging.getLogger("navig.service")


class GeolocatorService(pb_grpc.GeolocatorServicer):
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        admission: Admission,
        health: TritonHealth,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.admission = admission
        self.health = health
        self.metrics = metrics
        self.cache = ResultCache(settings.result_cache_entries, settings.result_cache_ttl_s, metrics)

    async def Locate(self, request: pb.LocateRequest, context: grpc.aio.ServicerContext) -> pb.LocateResponse:
        call = _Call("Locate", request, self, context)
        with request_context(call.request_id):
            try:
                options = call.admit()
                async with call.lookup() as lookup:
                    if lookup.outcome is not None:
                        return call.respond(lookup.outcome, cached=True)
                    async with self.admission.slot():
                        outcome = await self.pipeline.run(
                            request.image, options, call.deadline, lambda _: None, call.started
                        )
                    lookup.store(outcome)
                    return call.respond(outcome)
            except asyncio.CancelledError:
                call.status = "CANCELLED"
                raise
            except Exception as exc:  # every failure leaves as a status; fail() aborts the call
                await call.fail(exc)
                raise
            finally:
                call.finish()

    async def LocateStream(
        self, request: pb.LocateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LocateEvent]:
        call = _Call("LocateStream", request, self, context)
        with request_context(call.request_id):
            try:
                options = call.admit()
                async with call.lookup() as lookup:
                    if lookup.outcome is not None:  # no run, no events: the answer at once
                        yield pb.LocateEvent(result=call.respond(lookup.outcome, cached=True))
                        return
                    async with self.admission.slot():
                        events: asyncio.Queue[Event] = asyncio.Queue()
                        run = asyncio.create_task(
                            self.pipeline.run(
                                request.image, options, call.deadline, events.put_nowait, call.started
                            )
                        )
                        try:
                            async for item in _until_done(run, events):
                                if call.wants(item):
                                    yield wire.event(item)
                            lookup.store(run.result())
                            yield pb.LocateEvent(result=call.respond(run.result()))
                        finally:  # client gone or deadline: nothing keeps running on its behalf
                            run.cancel()
                            await asyncio.gather(run, return_exceptions=True)
            except asyncio.CancelledError:
                call.status = "CANCELLED"
                raise
            except Exception as exc:
                await call.fail(exc)
            finally:
                call.finish()


async def _until_done(run: asyncio.Task[Outcome], events: asyncio.Queue[Event]) -> AsyncIterator[Event]:
    """The run's events as they are emitted, then whatever is left once it has finished."""
    while not run.done():
        getter = asyncio.ensure_future(events.get())
        try:
            await asyncio.wait({getter, run}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if not getter.cancelled():
            yield getter.result()
    while not events.empty():
        yield events.get_nowait()


class _Call:
    """One RPC's bookkeeping: id, options, deadline, status and latency for the metrics and logs."""

    def __init__(
        self,
        method: str,
        request: pb.LocateRequest,
        service: GeolocatorService,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.method = method
        self.service = service
        self.context = context
        self.request = request
        self.request_id = request.request_id or uuid.uuid4().hex[:16]
        self.started = time.perf_counter()
        self.status = "OK"
        self.options: RunOptions  # set by admit()
        remaining = context.time_remaining()
        self.deadline = Deadline.after(
            remaining if remaining is not None else service.settings.default_timeout_s
        )

    def admit(self) -> RunOptions:
        """The request's options merged with the settings; refuses at once when Triton is not ready."""
        service = self.service
        if not service.health.serving:
            down = ", ".join(service.health.triton.down) or service.settings.triton_url
            raise Unavailable(f"Triton at {down} is not ready; retry later")
        self.options = run_options(self.request.options, service.settings, service.pipeline.searcher.tools)
        return self.options

    @asynccontextmanager
    async def lookup(self) -> AsyncIterator[Lookup]:
        """The result cache's answer for this request, or a miss to run and store (always a miss when the
        cache is off or the request sets `no_cache`)."""
        cache = self.service.cache
        if not cache.enabled or self.request.options.no_cache:
            yield Lookup(None)
            return
        key = cache.key(self.request.image, self.options, self.service.health.versions)
        async with cache.lookup(key, self.deadline) as found:
            yield found

    def wants(self, event: Event) -> bool:
        if isinstance(event, ReasoningDelta):
            return self.options.return_reasoning
        if isinstance(event, Evidence):
            return self.options.return_evidence
        return True

    def respond(self, outcome: Outcome, cached: bool = False) -> pb.LocateResponse:
        """`cached`: the outcome is a stored one; its stage timings are the earlier run's, so they give way
        to one "cache" stage."""
        total_ms = (time.perf_counter() - self.started) * 1000
        if cached:
            outcome = dataclasses.replace(outcome, timings=[StageTiming("cache", 0.0, round(total_ms, 3))])
        models = {**self.service.health.versions, "prompts": PROMPTS_VERSION}
        message = wire.response(
            outcome, self.request_id, total_ms, models,
            with_reasoning=self.options.return_reasoning, with_evidence=self.options.return_evidence,
            pipeline=self.options.pipeline,
        )  # fmt: skip
        message.cached = cached
        return message

    async def fail(self, exc: BaseException) -> None:
        if isinstance(exc, PipelineError):
            code, message = exc.code, str(exc)
        else:
            code, message = grpc.StatusCode.INTERNAL, f"internal error (request id {self.request_id})"
            log.exception("unexpected failure")
        self.status = code.name
        await self.context.abort(code, message)

    def finish(self) -> None:
        seconds = time.perf_counter() - self.started
        self.service.metrics.requests.labels(self.method, self.status).inc()
        self.service.metrics.latency.labels(self.method).observe(seconds)
        log.info("%s %s", self.method, self.status, extra={"fields": {"ms": round(seconds * 1000, 1)}})
