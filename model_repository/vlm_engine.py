"""Qwen2-VL generation with transformers on merged weights (the cpu profile's VLM engine).

The gpu profile swaps in `vlm_trtllm.TrtLlmVlm` behind the same two methods. Prompt assembly
is here once, so the Triton model, the exporter's checks and the tests all build the same
inputs: the checkpoint's own chat template, with the image placeholder expanded to the number
of merged vision patches as Qwen2-VL's processor does.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

import numpy as np
import torch
import xgrammar
from transformers import AutoTokenizer, LogitsProcessorList, Qwen2VLForConditionalGeneration
from transformers.generation.streamers import BaseStreamer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


@dataclass(frozen=True)
class Generation:
    token_ids: list[int]
    text: str


class VlmInputs:
    """Tokenizer + image processor of a Qwen2-VL folder: (prompt, image) -> model inputs."""

    def __init__(self, weights: Path, merge_size: int, image_token_id: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(weights, local_files_only=True)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(weights, local_files_only=True)
        self.image_token_id = image_token_id
        self.image_token = self.tokenizer.convert_ids_to_tokens(image_token_id)
        self.merge_area = merge_size**2

    def __call__(self, prompt: str, image: np.ndarray | None) -> dict[str, torch.Tensor]:
        content: list[dict[str, str]] = [{"type": "image"}] if image is not None else []
        content.append({"type": "text", "text": prompt})
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        vision: dict[str, torch.Tensor] = {}
        if image is not None:
            vision = dict(self.image_processor(images=[image], return_tensors="pt"))
            patches = int(vision["image_grid_thw"].prod()) // self.merge_area
            text = text.replace(self.image_token, self.image_token * patches, 1)
        encoded = dict(self.tokenizer(text, return_tensors="pt", add_special_tokens=False))
        if image is not None:  # what Qwen2VLProcessor adds: marks image tokens for M-RoPE
            encoded["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).long()
        return {**encoded, **vision}

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


class TransformersVlm:
    def __init__(self, weights: Path, threads: int = 0) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            weights, use_safetensors=True, local_files_only=True, dtype=torch.float32
        ).eval()
        config = self.model.config
        self.inputs = VlmInputs(weights, config.vision_config.spatial_merge_size, config.image_token_id)
        vocabulary = xgrammar.TokenizerInfo.from_huggingface(
            self.inputs.tokenizer, vocab_size=config.text_config.vocab_size
        )
        self._grammars = xgrammar.GrammarCompiler(vocabulary)

    def generate(
        self, prompt: str, image: np.ndarray | None, max_new_tokens: int, json_schema: str | None = None
    ) -> Generation:
        """Greedy decoding: the answers are deterministic and comparable across engines."""
        inputs = self.inputs(prompt, image)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                logits_processor=self._constraint(json_schema),
            )
        token_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
        return Generation(token_ids, self.inputs.decode(token_ids))

    def stream(
        self, prompt: str, image: np.ndarray | None, max_new_tokens: int, json_schema: str | None = None
    ) -> Iterator[Generation]:
        """Yields each new token with the text it completes (multi-byte characters held back)."""
        inputs = self.inputs(prompt, image)
        streamer = _TokenQueue()
        worker = threading.Thread(
            target=self._generate_into,
            args=(inputs, max_new_tokens, self._constraint(json_schema), streamer),
            name="vlm-generate",
            daemon=True,
        )
        worker.start()
        token_ids: list[int] = []
        emitted = ""
        pending: list[int] = []
        for token in streamer:
            if isinstance(token, BaseException):
                raise token
            token_ids.append(token)
            pending.append(token)
            text = self.inputs.decode(token_ids)
            if text.endswith("\ufffd"):  # incomplete UTF-8 sequence: wait for the next token
                continue
            yield Generation(pending, text[len(emitted) :])
            emitted, pending = text, []
        worker.join()
        if pending:
            yield Generation(pending, self.inputs.decode(token_ids)[len(emitted) :])

    def _constraint(self, json_schema: str | None) -> LogitsProcessorList:
        """xgrammar's token mask for the schema; a processor holds per-generation state, so new each time."""
        if json_schema is None:
            return LogitsProcessorList()
        return LogitsProcessorList([xgrammar.contrib.hf.LogitsProcessor(self._compiled(json_schema))])

    @functools.lru_cache(maxsize=16)  # noqa: B019 - one engine per model instance, a handful of schemas
    def _compiled(self, json_schema: str) -> xgrammar.CompiledGrammar:
        try:
            return self._grammars.compile_json_schema(json_schema, any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError for schemas it cannot compile
            raise ValueError(f"json_schema is not a usable JSON schema: {exc}") from exc

    def _generate_into(
        self,
        inputs: dict[str, torch.Tensor],
        max_new_tokens: int,
        constraint: LogitsProcessorList,
        streamer: _TokenQueue,
    ) -> None:
        try:
            with torch.inference_mode():
                self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    logits_processor=constraint,
                    streamer=streamer,
                )
        except Exception as exc:
            streamer.fail(exc)


class _TokenQueue(BaseStreamer):
    """transformers streamer that hands generated token ids to another thread."""

    _END = object()

    def __init__(self) -> None:
        self._queue: Queue[object] = Queue()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first puts the prompt
            self._prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self._queue.put(token)

    def end(self) -> None:
        self._queue.put(self._END)

    def fail(self, exc: BaseException) -> None:
        self._queue.put(exc)
        self._queue.put(self._END)

    def __iter__(self) -> Iterator[int | BaseException]:
        while (item := self._queue.get()) is not self._END:
            yield item  # type: ignore[misc]
