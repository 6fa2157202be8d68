"""gRPC health follows Triton: SERVING only while every model the pipeline needs is ready, on each
Triton server it is routed to.

Polled, not event-driven: Triton has no push notification, and a one-second poll is far below
the time a load balancer needs to react. Once Triton is back, the same client reconnects and
health returns to SERVING without restarting the orchestrator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from navig.model_repository import contract
from navig.orchestrator.triton_routes import TritonRoutes

SERVICE = contract.GEOLOCATOR_SERVICE
log = logging.getLogger("navig.health")


class TritonHealth:
    def __init__(self, triton: TritonRoutes, models: Sequence[str], poll_s: float) -> None:
        self.servicer = health.aio.HealthServicer()
        self.triton = triton
        self.models = list(models)
        self.poll_s = poll_s
        self.serving = False
        self.versions: dict[str, str] = {}

    async def check(self) -> bool:
        """Polls Triton once and publishes the result."""
        ready = await self.triton.ready(self.models)
        if ready and not self.serving:
            self.versions = await self.triton.versions(self.models)
        if ready != self.serving:
            fields = {"models": self.models, "down": self.triton.down}
            log.info("triton %s", "ready" if ready else "down", extra={"fields": fields})
        self.serving = ready
        states = health_pb2.HealthCheckResponse
        status = states.SERVING if ready else states.NOT_SERVING
        for service in ("", SERVICE):
            await self.servicer.set(service, status)
        return ready

    async def watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.poll_s)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
