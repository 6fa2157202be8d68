"""Assembles and runs the orchestrator: gRPC server (Geolocator, health, reflection), metrics, tools.

`Orchestrator` lives on one event loop; `OrchestratorThread` runs it on a background thread for
programs that are not asyncio themselves (`navig serve`, the demo, the tests).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from navig.orchestrator.admission import Admission
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.api import geolocator_pb2_grpc as pb_grpc
from navig.orchestrator.health import TritonHealth
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.pipeline import Pipeline
from navig.orchestrator.pools import TritonPools
from navig.orchestrator.searcher.registry import create_tools
from navig.orchestrator.searcher.search import Searcher
from navig.orchestrator.searcher.tool import SearchTool
from navig.orchestrator.security import (
    BearerTokenInterceptor,
    check_exposure,
    load_tokens,
    metrics_bind_host,
    server_credentials,
)
from navig.orchestrator.service import GeolocatorService
from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.countries import capitals

log = logging.getLogger("navig.server")


class Orchestrator:
    def __init__(self, settings: Settings, tools: list[SearchTool] | None = None) -> None:
        self.settings = settings
        self.tools = tools
        self.metrics = Metrics()
        self.port = 0
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> int:
        """Binds and starts serving; returns the gRPC port. Health is NOT_SERVING until Triton is ready."""
        s = self.settings
        check_exposure(s)  # before anything slow: an unsafe bind is a settings error
        tokens = load_tokens(s)
        credentials = server_credentials(s)
        self.tools = tools = (
            self.tools if self.tools is not None else await asyncio.to_thread(create_tools, s)
        )
        await asyncio.to_thread(capitals)  # the evidence guesser's fallback coordinates, read once
        self.triton = TritonPools.from_settings(s, self.metrics)
        searcher = Searcher(s, self.triton, self.metrics, tools)
        pipeline = Pipeline(s, self.triton, searcher, self.metrics)
        self.health = TritonHealth(
            self.triton, pipeline.required_models(), s.health_poll_s, self.metrics.registry
        )
        admission = Admission(s.max_concurrency, s.max_queue, self.metrics)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
            ],
            maximum_concurrent_rpcs=None,  # admission control answers overload with a status instead
            interceptors=[BearerTokenInterceptor(tokens, self.metrics.auth_failures)] if tokens else None,
        )
        pb_grpc.add_GeolocatorServicer_to_server(
            GeolocatorService(s, pipeline, admission, self.health, self.metrics), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, self._server)
        if s.reflection:  # behind the token check like every method but health
            names = (
                pb.DESCRIPTOR.services_by_name["Geolocator"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
            reflection.enable_server_reflection(names, self._server)
        address = f"{s.host}:{s.port}"
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        if self.port == 0:
            hint = " (or the TLS certificate and key are not a valid PEM pair)" if credentials else ""
            raise OSError(f"cannot bind the gRPC port {address}{hint}")
        await self.health.check()
        await self._server.start()
        self._watch = asyncio.create_task(self.health.watch())
        if s.metrics_port is not None:
            self.metrics_port = self.metrics.serve(metrics_bind_host(s), s.metrics_port)
        fields = {"grpc": f"{s.host}:{self.port}", "metrics": self.metrics_port, "tokens": len(tokens)}
        fields |= {"tls": credentials is not None, "mtls": s.tls_client_ca_file is not None}
        log.info("serving", extra={"fields": fields})
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Refuses new calls, lets in-flight ones finish within the grace period, then closes."""
        grace = self.settings.shutdown_grace_s if grace is None else grace
        if self._server is not None:
            await self.health.shutdown()
            await self._server.stop(grace)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            await self.triton.close()
        for tool in self.tools or ():
            await tool.aclose()
        self.metrics.close()

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()


class OrchestratorThread:
    """An Orchestrator on its own event loop in a daemon thread; `with` starts and stops it."""

    def __init__(self, settings: Settings, tools: list[SearchTool] | None = None) -> None:
        self.orchestrator = Orchestrator(settings, tools)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="orchestrator", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.orchestrator.settings.host}:{self.orchestrator.port}"

    def start(self) -> OrchestratorThread:
        self._thread.start()
        self._call(self.orchestrator.start()).result()
        return self

    def stop(self, grace: float | None = None) -> None:
        if self._thread.is_alive():
            self._call(self.orchestrator.stop(grace)).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def pipeline_tasks(self) -> list[str]:
        """asyncio tasks of ours still alive on the server's loop (none when idle): a leak detector."""

        async def ours() -> list[str]:
            skip = (asyncio.current_task(), self.orchestrator._watch)
            frames = [getattr(t.get_coro(), "cr_frame", None) for t in asyncio.all_tasks() if t not in skip]
            names = [(f.f_globals.get("__name__", ""), f.f_code.co_qualname) for f in frames if f is not None]
            return [name for module, name in names if module.startswith("navig.")]

        return self._call(ours()).result()

    def _call(self, coroutine: Coroutine[Any, Any, Any]) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def __enter__(self) -> OrchestratorThread:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
