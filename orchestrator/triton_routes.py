"""Which Triton serves which model: one client per server, the calls routed by model name.

The cpu profile is one server (the embedded Triton). The gpu profile is two: encoders and OCR in
NVIDIA's `py3` image, the VLMs in its `trtllm-python-py3` image (`triton_routes` in the settings).
The pipeline sees one `Models`; health asks every server for its own models.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np

from navig.orchestrator.deadline import Deadline
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.triton_client import TritonModels


class TritonRoutes:
    def __init__(
        self, default_url: str, routes: Mapping[str, str], metrics: Metrics, max_message_bytes: int
    ) -> None:
        self.default_url = default_url
        self.routes = dict(routes)
        urls = dict.fromkeys([default_url, *self.routes.values()])
        self.servers = {url: TritonModels(url, metrics, max_message_bytes) for url in urls}
        self.down: list[str] = []  # servers whose models were not all ready at the last check

    def url(self, model: str) -> str:
        return self.routes.get(model, self.default_url)

    def server(self, model: str) -> TritonModels:
        return self.servers[self.url(model)]

    def by_server(self, models: Sequence[str]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for model in models:
            grouped.setdefault(self.url(model), []).append(model)
        return grouped

    async def ready(self, models: Sequence[str]) -> bool:
        """Every server is live with its models loaded; `down` names the ones that are not."""
        grouped = self.by_server(models)
        self.down = [url for url, names in grouped.items() if not await self.servers[url].ready(names)]
        return not self.down

    async def versions(self, models: Sequence[str]) -> dict[str, str]:
        versions: dict[str, str] = {}
        for url, names in self.by_server(models).items():
            versions |= await self.servers[url].versions(names)
        return versions

    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline
    ) -> dict[str, np.ndarray]:
        return await self.server(model).infer(model, inputs, deadline)

    def generate(
        self,
        model: str,
        prompt: str,
        deadline: Deadline,
        image: np.ndarray | None = None,
        max_tokens: int | None = None,
        json_schema: str | None = None,
    ) -> AsyncIterator[str]:
        return self.server(model).generate(model, prompt, deadline, image, max_tokens, json_schema)

    async def close(self) -> None:
        for server in self.servers.values():
            await server.close()
