"""Qwen2-VL generation on TensorRT-LLM's LLM API (PyTorch backend): the gpu profile's VLM engine.

Same methods as `vlm_engine.TransformersVlm`, so the Triton model and its contract do not
change between profiles. Written against TensorRT-LLM's documented LLM API (`LLM`,
`SamplingParams`, prompts with `multi_modal_data`); it cannot run without an NVIDIA GPU and the
`tensorrt_llm` package, and it has not been run on a GPU by this project yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from navig.model_repository.vlm_engine import Generation


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
        content: list[dict[str, str]] = [{"type": "image"}] if image is not None else []
        content.append({"type": "text", "text": prompt})
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        request: dict[str, Any] = {"prompt": text}
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
    ) -> list[Generation]:
        """The rows of Triton's dynamic batch in one LLM-API call (in-flight batching does the rest)."""
        requests = [self._prompt(p, i) for p, i in zip(prompts, images, strict=True)]
        params = [self._params(m, s) for m, s in zip(max_tokens, json_schemas, strict=True)]
        outputs = self.llm.generate(requests, sampling_params=params)
        return [Generation(list(o.outputs[0].token_ids), o.outputs[0].text) for o in outputs]

    @staticmethod
    def check_schema(json_schema: str) -> None:
        """Rejects what is not JSON before it joins a batch (the grammar is compiled in the LLM API)."""
        try:
            json.loads(json_schema)
        except ValueError as exc:
            raise ValueError(f"json_schema is not a usable JSON schema: {exc}") from exc

    def stream(
        self, prompt: str, image: np.ndarray | None, max_new_tokens: int, json_schema: str | None = None
    ) -> Iterator[Generation]:
        """Synchronous view of `generate_async(streaming=True)` for the python backend's thread."""
        import asyncio

        params = self._params(max_new_tokens, json_schema)
        loop = asyncio.new_event_loop()
        stream = self.llm.generate_async(self._prompt(prompt, image), sampling_params=params, streaming=True)
        seen_tokens, seen_text = 0, 0
        try:
            while True:
                try:
                    output = loop.run_until_complete(stream.__anext__()).outputs[0]
                except StopAsyncIteration:
                    return
                yield Generation(list(output.token_ids[seen_tokens:]), output.text[seen_text:])
                seen_tokens, seen_text = len(output.token_ids), len(output.text)
        finally:
            loop.close()
