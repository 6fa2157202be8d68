"""Requests straight to one Triton model (`navig profile --triton-model`), built from its own config.

Models that take a photo (`ocr`, `detector`, `clip_image`) get the sample images; the VLMs
(`reasoner`, `vlm`) get a short prompt with the image. Other inputs (token ids) are refused with a
message: profile those through the Geolocator, which builds them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

from navig.client.profile.load import Sample
from navig.model_repository import contract

VLM_PROMPT = "Describe the place in this photo in one sentence."


class UnsupportedModel(ValueError):
    pass


class TritonModelTarget:
    def __init__(self, url: str, model: str, images: Sequence[np.ndarray], max_tokens: int, timeout_s: float):
        self.url, self.model, self.images = url, model, list(images)
        self.max_tokens, self.timeout_s = max_tokens, timeout_s

    async def __aenter__(self) -> TritonModelTarget:
        self._client = triton_aio.InferenceServerClient(self.url)
        try:
            config: dict[str, Any] = (await self._client.get_model_config(self.model, as_json=True))["config"]
        except InferenceServerException as exc:
            await self._client.close()
            raise UnsupportedModel(f"Triton at {self.url}: model {self.model!r}: {exc.message()}") from exc
        if config.get("model_transaction_policy", {}).get("decoupled"):
            await self._client.close()
            raise UnsupportedModel(
                f"{self.model} is decoupled (streaming): profile it through the Geolocator"
            )
        self._batched = int(config.get("max_batch_size", 0)) > 0
        self._inputs = config["input"]
        for spec in self._inputs:
            if not spec.get("optional") and spec["name"] not in (
                contract.VLM_PROMPT,
                contract.OCR_IMAGE,
                contract.DETECTOR_IMAGES,
            ):
                await self._client.close()
                raise UnsupportedModel(
                    f"{self.model} needs input {spec['name']!r}, which this profiler "
                    "cannot make up: profile it through the Geolocator"
                )
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._client.close()

    def _tensors(self, n: int) -> list[InferInput]:
        image = self.images[n % len(self.images)]
        values: dict[str, np.ndarray] = {}
        for spec in self._inputs:
            name, dtype = spec["name"], spec["data_type"]
            if dtype == "TYPE_UINT8" and name in (
                contract.OCR_IMAGE,
                contract.DETECTOR_IMAGES,
                contract.VLM_IMAGE,
            ):
                values[name] = image
            elif name == contract.VLM_PROMPT:
                values[name] = np.array([VLM_PROMPT.encode()], dtype=np.object_)
            elif name == contract.VLM_MAX_TOKENS:
                values[name] = np.array([self.max_tokens], dtype=np.int32)
        tensors = []
        for name, value in values.items():
            value = value[None] if self._batched else value
            tensor = InferInput(
                name,
                list(value.shape),
                "BYTES" if value.dtype == np.object_ else "UINT8" if value.dtype == np.uint8 else "INT32",
            )
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        return tensors

    async def __call__(self, n: int) -> Sample:
        tensors = self._tensors(n)
        started = time.perf_counter()
        try:
            await self._client.infer(self.model, tensors, client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            status = (exc.status() or "ERROR").replace("StatusCode.", "")
            return Sample(started, (time.perf_counter() - started) * 1e3, status, error=exc.message() or "")
        return Sample(started, (time.perf_counter() - started) * 1e3, "OK")
