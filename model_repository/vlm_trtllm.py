"""Qwen2-VL generation on TensorRT-LLM's LLM API (PyTorch backend): the gpu profile's VLM engine.

Implements `vlm_api.VlmEngine` like `vlm_engine.TransformersVlm`, so the Triton model and its
contract do not change between profiles. It imports nothing of the cpu engine (torch, xgrammar,
transformers' Qwen2-VL processor): NVIDIA's TensorRT-LLM containers pin their own versions of
those; `tensorrt_llm` and transformers' `AutoTokenizer` are imported when an engine is built.

Written against TensorRT-LLM's documented LLM API (`LLM`, `SamplingParams`, prompts with
`multi_modal_data`); it cannot run without an NVIDIA GPU and the `tensorrt_llm` package, and it
has not been run on a GPU by this project yet.
"""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from navig.model_repository.vlm_api import (
    Generation,
    IsCancelled,
    chat_prompt,
    never_cancelled,
    unusable_schema,
)

CANCEL_POLL_S = 0.05  # how often a waiting row asks whether its request was cancelled


class GpuStackMissing(RuntimeError):
    pass


def import_tensorrt_llm() -> Any:
    try:
        import tensorrt_llm
    except ImportError as exc:
        raise GpuStackMissing(
            "tensorrt_llm is not installed: the gpu profile's VLMs need the NGC Triton "
            "TensorRT-LLM container (or `pip install tensorrt-llm` on a CUDA machine)"
        ) from exc
    return tensorrt_llm


class TrtLlmVlm:
    def __init__(self, weights: Path, engine_dir: Path | None = None) -> None:
        """`weights` = merged HF folder (LLM-API path); `engine_dir` = prebuilt engines (optional)."""
        trtllm = import_tensorrt_llm()
        from tensorrt_llm.sampling_params import GuidedDecodingParams
        from transformers import AutoTokenizer

        self._sampling = trtllm.SamplingParams
        self._guided = GuidedDecodingParams
        self.tokenizer = AutoTokenizer.from_pretrained(weights, local_files_only=True)
        self.llm = trtllm.LLM(
            model=str(engine_dir or weights), tokenizer=str(weights), guided_decoding_backend="xgrammar"
        )

    def _params(self, max_new_tokens: int, json_schema: str | None) -> Any:
        guided = self._guided(json=json_schema) if json_schema is not None else None
        return self._sampling(max_tokens=max_new_tokens, temperature=0.0, top_k=1, guided_decoding=guided)

    def _prompt(self, prompt: str, image: np.ndarray | None) -> dict[str, Any]:
        request: dict[str, Any] = {"prompt": chat_prompt(self.tokenizer, prompt, image is not None)}
        if image is not None:
            request["multi_modal_data"] = {"image": [Image.fromarray(image)]}
        return request

    def generate(
        self, prompt: str, image: np.ndarray | None, max_new_tokens: int, json_schema: str | None = None
    ) -> Generation:
        return self.generate_batch([prompt], [image], [max_new_tokens], [json_schema])[0]

    def generate_batch(
        self,
        prompts: list[str],
        images: list[np.ndarray | None],
        max_tokens: list[int],
        json_schemas: list[str | None],
        cancelled: Sequence[IsCancelled] | None = None,
    ) -> list[Generation]:
        """The rows of Triton's dynamic batch, each its own `generate_async` (in-flight batching runs
        them together); a row whose request is cancelled is aborted in the executor."""
        cancelled = cancelled or [never_cancelled] * len(prompts)
        results: list[Any] = []
        try:
            for p, i, m, s in zip(prompts, images, max_tokens, json_schemas, strict=True):
                results.append(
                    self.llm.generate_async(self._prompt(p, i), sampling_params=self._params(m, s))
                )
            return _wait_all(results, cancelled)
        finally:  # a failure on the way leaves no row generating for nobody
            for result in results:
                if not result.finished and not result.aborted():
                    result.abort()

    def check_schema(self, json_schema: str) -> None:
        """Rejects what is not JSON before it joins a batch (the grammar is compiled in the LLM API)."""
        try:
            json.loads(json_schema)
        except ValueError as exc:
            raise unusable_schema(exc) from exc

    def stream(
        self,
        prompt: str,
        image: np.ndarray | None,
        max_new_tokens: int,
        json_schema: str | None = None,
        cancelled: IsCancelled = never_cancelled,
    ) -> Iterator[Generation]:
        """`generate_async(streaming=True)` iterated synchronously (the python backend's thread has no
        event loop); each step yields the new tokens and text. Cancellation aborts the request."""
        params = self._params(max_new_tokens, json_schema)
        result = self.llm.generate_async(self._prompt(prompt, image), sampling_params=params, streaming=True)
        for step in result:
            output = step.outputs[0]
            if cancelled():
                result.abort()
                yield Generation(list(output.token_ids_diff), output.text_diff, cancelled=True)
                return
            yield Generation(list(output.token_ids_diff), output.text_diff)


def _wait_all(results: list[Any], cancelled: Sequence[IsCancelled]) -> list[Generation]:
    """Every row's result; each unfinished row is asked about every CANCEL_POLL_S and aborted when its
    request was cancelled, whichever rows are still running.

    `GenerationResult.result(timeout)` raises `queue.Empty` when nothing arrived in time; after
    `abort()` the executor still sends a final response (finish reason `cancelled`).
    """
    done: dict[int, Generation] = {}
    aborted: set[int] = set()
    while len(done) < len(results):
        for row, result in enumerate(results):
            if row in done:
                continue
            try:
                output = result.result(timeout=CANCEL_POLL_S / len(results)).outputs[0]
            except queue.Empty:
                if row not in aborted and cancelled[row]():
                    result.abort()
                    aborted.add(row)
                continue
            done[row] = Generation(list(output.token_ids), output.text, cancelled=row in aborted)
    return [done[row] for row in range(len(results))]
