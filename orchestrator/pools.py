"""Which Triton pool serves which model: one gRPC channel per pool, the calls routed by model name.

A pool is a gRPC target that may name several Triton replicas (`ipv4:a:p,b:p`, `dns:///svc:8001`);
its channel round-robins over them and retries UNAVAILABLE on another (`triton_client.channel_options`).
The cpu profile is one pool, the default: `triton_url`, the embedded Triton unless set. The gpu profile
and Kubernetes name more in `pools` (e.g. `vision` for the encoders, `vlm` for the VLMs); the older
`triton_routes` (model -> URL) still works, each URL a pool of its own. The pipeline sees one `Models`;
health asks each pool for its own models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from navig.orchestrator.deadline import Deadline
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.settings import DEFAULT_POOL, Settings
from navig.orchestrator.triton_client import TritonModels


@dataclass(frozen=True)
class PoolSpec:
    name: str
    target: str
    models: tuple[str, ...]  # empty for the default pool: it serves what no other pool names


def pool_specs(settings: Settings) -> list[PoolSpec]:
    """The default pool (`triton_url`), one per `triton_routes` URL, then `pools`, in that order."""
    specs = [PoolSpec(DEFAULT_POOL, settings.triton_url, ())]
    by_url: dict[str, list[str]] = {}
    for model, url in settings.triton_routes.items():
        if url != settings.triton_url:  # routed to the default server: the default pool already serves it
            by_url.setdefault(url, []).append(model)
    specs += [PoolSpec(url, url, tuple(models)) for url, models in by_url.items()]
    specs += [PoolSpec(name, pool.target, tuple(pool.models)) for name, pool in settings.pools.items()]
    return specs


class TritonPools:
    def __init__(
        self, specs: Sequence[PoolSpec], metrics: Metrics, max_message_bytes: int, keepalive_s: float = 0
    ) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.routes = {model: spec.name for spec in specs for model in spec.models}
        self.clients = {
            spec.name: TritonModels(spec.target, metrics, max_message_bytes, keepalive_s) for spec in specs
        }
        self.pool_ready: dict[str, bool] = {}  # per pool with required models, at the last check
        self.down: list[str] = []  # "target (pool name)" of the pools not ready at the last check

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics) -> TritonPools:
        return cls(pool_specs(settings), metrics, settings.max_message_bytes, settings.triton_keepalive_s)

    def pool(self, model: str) -> str:
        return self.routes.get(model, DEFAULT_POOL)

    def client(self, model: str) -> TritonModels:
        return self.clients[self.pool(model)]

    def by_pool(self, models: Sequence[str]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for model in models:
            grouped.setdefault(self.pool(model), []).append(model)
        return grouped

    async def ready(self, models: Sequence[str]) -> bool:
        """Every pool serving one of `models` has them all ready (on the replica that answered: round_robin
        skips replicas that are down); `pool_ready` and `down` say which."""
        grouped = self.by_pool(models)
        self.pool_ready = {name: await self.clients[name].ready(names) for name, names in grouped.items()}
        self.down = [
            f"{self.specs[n].target} (pool {n})" for n, ready in self.pool_ready.items() if not ready
        ]
        return not self.down

    async def versions(self, models: Sequence[str]) -> dict[str, str]:
        versions: dict[str, str] = {}
        for name, names in self.by_pool(models).items():
            versions |= await self.clients[name].versions(names)
        return versions

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline
    ) -> dict[str, np.ndarray]:
        return await self.client(model).infer(model, inputs, deadline)

    def generate(
        self,
        model: str,
        prompt: str,
        deadline: Deadline,
        image: np.ndarray | None = None,
        max_tokens: int | None = None,
        json_schema: str | None = None,
    ) -> AsyncIterator[str]:
        return self.client(model).generate(model, prompt, deadline, image, max_tokens, json_schema)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
