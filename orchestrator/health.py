"""gRPC health follows Triton: SERVING only while every model the pipeline needs is ready, in each Triton
pool it is routed to.

Besides the Geolocator's own status (service "" and `navig.v1.Geolocator`), each pool's readiness is
published as health service `navig.v1.Geolocator/pool/<name>` and as the gauge `navig_pool_ready{pool}`,
so an operator sees which pool holds the service back.

Polled, not event-driven: Triton has no push notification, and a one-second poll is far below
the time a load balancer needs to react. Once Triton is back, the same client reconnects and
health returns to SERVING without restarting the orchestrator.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2
from prometheus_client import CollectorRegistry, Gauge

from navig.model_repository import contract
from navig.orchestrator.pools import TritonPools

SERVICE = contract.GEOLOCATOR_SERVICE
log = logging.getLogger("navig.health")


def pool_service(pool: str) -> str:
    """The gRPC health service name of one pool's readiness."""
    return f"{SERVICE}/pool/{pool}"


class TritonHealth:
    def __init__(
        self,
        triton: TritonPools,
        models: Sequence[str],
        poll_s: float,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.servicer = health.aio.HealthServicer()
        self.triton = triton
        self.models = list(models)
        self.poll_s = poll_s
        self.serving = False
        self.versions: dict[str, str] = {}
        self._pool_ready = (
            Gauge(
                "navig_pool_ready", "1 while a Triton pool has its models ready", ["pool"], registry=registry
            )
            if registry is not None
            else None
        )

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
        for service in ("", SERVICE):
            await self.servicer.set(service, states.SERVING if ready else states.NOT_SERVING)
        for pool, pool_ready in self.triton.pool_ready.items():
            await self.servicer.set(pool_service(pool), states.SERVING if pool_ready else states.NOT_SERVING)
            if self._pool_ready is not None:
                self._pool_ready.labels(pool).set(int(pool_ready))
        return ready

    async def watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.poll_s)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()
