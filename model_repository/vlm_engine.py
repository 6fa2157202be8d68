"""Qwen2-VL generation with transformers (the cpu profile's VLM engine): merged weights, or the base
with LoRA adapters beside it that each row picks (peft mixed-adapter batches, `with_adapters`).

`TransformersVlm` implements `vlm_api.VlmEngine` for `vlm_model.py`'s batched Triton model (the gpu
profile serves TensorRT-LLM from its own model, `vlm_trtllm.py`, with the same chat prompt). Model
inputs are assembled here once (`VlmInputs`), so the Triton model, the exporter's checks and the
tests all build the same inputs: `vlm_api.chat_prompt` through the checkpoint's own chat template,
with the image placeholder expanded to the number of merged vision patches as Qwen2-VL's processor
does.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from queue import Queue
from typing import Any

import numpy as np
import torch
import xgrammar
from transformers import (
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    Qwen2VLForConditionalGeneration,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from navig.model_repository.vlm_api import (
    Generation,
    IsCancelled,
    chat_prompt,
    never_cancelled,
    unknown_adapter,
    unusable_schema,
)

BASE_ROW = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch


class VlmInputs:
    """Tokenizer + image processor of a Qwen2-VL folder: (prompt, image) -> model inputs."""

    def __init__(self, weights: Path, merge_size: int, image_token_id: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(weights, local_files_only=True)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(weights, local_files_only=True)
        self.image_token_id = image_token_id
        self.image_token = self.tokenizer.convert_ids_to_tokens(image_token_id)
        self.merge_area = merge_size**2

    def __call__(self, prompt: str, image: np.ndarray | None) -> dict[str, torch.Tensor]:
        text = chat_prompt(self.tokenizer, prompt, image is not None)
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

    def collate(self, rows: list[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
        """Several rows as one batch, LEFT padded so every row's next token sits in the last column.

        Images of any size: their patches are concatenated in row order, which is the order in
        which Qwen2-VL scatters vision features into the image tokens of the flattened batch.
        """
        width = max(row["input_ids"].shape[1] for row in rows)
        batch = {
            "input_ids": torch.cat([_left_pad(r["input_ids"], width, pad_token_id) for r in rows]),
            "attention_mask": torch.cat([_left_pad(r["attention_mask"], width, 0) for r in rows]),
        }
        with_images = [r for r in rows if "pixel_values" in r]
        if with_images:
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).long()
            batch["pixel_values"] = torch.cat([r["pixel_values"] for r in with_images])
            batch["image_grid_thw"] = torch.cat([r["image_grid_thw"] for r in with_images])
        return batch


def with_adapters(model: Qwen2VLForConditionalGeneration, adapters: Mapping[str, Path]) -> torch.nn.Module:
    """`model` with each peft LoRA folder loaded under its name, or `model` itself when there are none.

    The adapters stay unmerged beside the one copy of the base weights; every `generate` names each
    row's adapter (`adapter_names`, peft's mixed-adapter batch: the base matmul for the whole batch,
    then each adapter's low-rank update on its own rows), so base and adapter rows share a batch.
    """
    if not adapters:
        return model
    from peft import PeftModel

    (first, path), *others = adapters.items()
    peft_model = PeftModel.from_pretrained(model, path, adapter_name=first, is_trainable=False)
    for name, folder in others:
        peft_model.load_adapter(folder, adapter_name=name, is_trainable=False)
    return peft_model.eval()


class TransformersVlm:
    def __init__(
        self,
        weights: Path,
        threads: int = 0,
        max_padding: int = 512,
        adapters: Mapping[str, Path] | None = None,
        vision_cache_mb: float = 0,
    ) -> None:
        self.max_padding = max_padding
        if threads > 0:
            torch.set_num_threads(threads)
        base = Qwen2VLForConditionalGeneration.from_pretrained(
            weights, use_safetensors=True, local_files_only=True, dtype=torch.float32
        ).eval()
        self.adapters = tuple(adapters or ())
        self.model = with_adapters(base, adapters or {})
        # The vision tower's output per image, reused by later rows showing the same image (the REASONER
        # and the GUESSER see the same photo; `reference` describes and reads every crop); only while no
        # adapter changes the vision tower.
        self.vision_cache = (
            VisionCache(base.model, int(vision_cache_mb * 2**20))
            if vision_cache_mb > 0 and not adapted_vision(self.model)
            else None
        )
        config = base.config
        self.inputs = VlmInputs(weights, config.vision_config.spatial_merge_size, config.image_token_id)
        vocabulary = xgrammar.TokenizerInfo.from_huggingface(
            self.inputs.tokenizer, vocab_size=config.text_config.vocab_size
        )
        self._grammars = xgrammar.GrammarCompiler(vocabulary)
        eos = base.generation_config.eos_token_id
        self._eos_token_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = base.generation_config.pad_token_id
        self._pad_token_id = int(
            pad if pad is not None else self.inputs.tokenizer.pad_token_id or min(self._eos_token_ids)
        )

    def generate(
        self,
        prompt: str,
        image: np.ndarray | None,
        max_new_tokens: int,
        json_schema: str | None = None,
        adapter: str | None = None,
    ) -> Generation:
        """Greedy decoding: the answers are deterministic and comparable across engines."""
        inputs = self.inputs(prompt, image)
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                logits_processor=self._constraint(json_schema),
                **self._adapter_names([adapter]),
            )
        token_ids = output[0, inputs["input_ids"].shape[1] :].tolist()
        return Generation(token_ids, self.inputs.decode(token_ids))

    def generate_batch(
        self,
        prompts: list[str],
        images: list[np.ndarray | None],
        max_tokens: list[int],
        json_schemas: list[str | None],
        cancelled: Sequence[IsCancelled] | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[Generation]:
        """Several requests batched: on CPU a decode step for 8 rows costs little more than for 1.

        Rows are grouped by prompt length (`length_groups`) so that a long GUESSER prompt does not
        make short describer rows pay for its padding; each group is one greedy `generate`. Each
        row stops at its own EOS or budget and gets its own JSON-schema constraint, or none. Row
        results equal `generate` of that row alone. A row whose `cancelled()` turns true stops at
        the next decode step (and is not started if it already is): its result says `cancelled`.
        Rows name their adapter (None: the base); rows of every adapter share the length groups.
        """
        cancelled = cancelled or [never_cancelled] * len(prompts)
        adapters = adapters or [None] * len(prompts)
        grammars = [self._compiled(s) if s is not None else None for s in json_schemas]
        rows = [self.inputs(prompt, image) for prompt, image in zip(prompts, images, strict=True)]
        results: dict[int, Generation] = {}
        lengths = [int(row["input_ids"].shape[1]) for row in rows]
        for group in length_groups(lengths, self.max_padding):
            live = [i for i in group if not cancelled[i]()]
            results.update({i: Generation([], "", cancelled=True) for i in group if i not in live})
            if not live:
                continue
            generations = self._generate_rows(
                [rows[i] for i in live],
                [max_tokens[i] for i in live],
                [grammars[i] for i in live],
                [cancelled[i] for i in live],
                [adapters[i] for i in live],
            )
            results.update(zip(live, generations, strict=True))
        return [results[i] for i in range(len(rows))]

    def _generate_rows(
        self,
        rows: list[dict[str, torch.Tensor]],
        max_tokens: list[int],
        grammars: list[xgrammar.CompiledGrammar | None],
        cancelled: Sequence[IsCancelled],
        adapters: Sequence[str | None],
    ) -> list[Generation]:
        """One left-padded greedy `generate` over `rows`."""
        batch = self.inputs.collate(rows, self._pad_token_id)
        prompt_length = batch["input_ids"].shape[1]
        cancellation = RowCancellation(cancelled)
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                max_new_tokens=max(max_tokens),
                do_sample=False,
                pad_token_id=self._pad_token_id,
                logits_processor=LogitsProcessorList([RowGrammars(grammars)]) if any(grammars) else None,
                stopping_criteria=StoppingCriteriaList([RowBudgets(prompt_length, max_tokens), cancellation]),
                **self._adapter_names(adapters),
            )
        results = []
        generated = output[:, prompt_length:].tolist()
        for row, (token_ids, budget) in enumerate(zip(generated, max_tokens, strict=True)):
            if row in cancellation.stopped:
                budget = min(budget, cancellation.stopped[row] - prompt_length)
            token_ids = self._until_eos(token_ids[:budget])
            results.append(Generation(token_ids, self.inputs.decode(token_ids), row in cancellation.stopped))
        return results

    def check_schema(self, json_schema: str) -> None:
        """Raises ValueError for a schema xgrammar cannot compile, before it joins a batch."""
        self._compiled(json_schema)

    def check_adapter(self, adapter: str) -> None:
        """Raises ValueError for an adapter this engine does not serve, before the row joins a batch."""
        if adapter not in self.adapters:
            raise unknown_adapter(adapter, self.adapters)

    def _adapter_names(self, adapters: Sequence[str | None]) -> dict[str, list[str]]:
        """`generate`'s peft argument: each row's adapter (BASE_ROW for the base). Always given when
        adapters are loaded: without it peft would run every row with its active adapter."""
        for adapter in adapters:
            if adapter is not None:
                self.check_adapter(adapter)
        if not self.adapters:
            return {}
        return {"adapter_names": [adapter or BASE_ROW for adapter in adapters]}

    def _until_eos(self, token_ids: list[int]) -> list[int]:
        """A finished row's tokens up to and including its first EOS (padding follows it)."""
        for position, token in enumerate(token_ids):
            if token in self._eos_token_ids:
                return token_ids[: position + 1]
        return token_ids

    def stream(
        self,
        prompt: str,
        image: np.ndarray | None,
        max_new_tokens: int,
        json_schema: str | None = None,
        cancelled: IsCancelled = never_cancelled,
        adapter: str | None = None,
    ) -> Iterator[Generation]:
        """Yields each new token with the text it completes (multi-byte characters held back).

        When `cancelled()` turns true, generation stops at the next decode step and the last piece
        says `cancelled`.
        """
        inputs = {**self.inputs(prompt, image), **self._adapter_names([adapter])}
        streamer = _TokenQueue()
        cancellation = RowCancellation([cancelled])
        worker = threading.Thread(
            target=self._generate_into,
            args=(inputs, max_new_tokens, self._constraint(json_schema), streamer, cancellation),
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
        if pending or cancellation.stopped:
            rest = self.inputs.decode(token_ids)[len(emitted) :]
            yield Generation(pending, rest, cancelled=bool(cancellation.stopped))

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
            raise unusable_schema(exc) from exc

    def _generate_into(
        self,
        inputs: dict[str, Any],
        max_new_tokens: int,
        constraint: LogitsProcessorList,
        streamer: _TokenQueue,
        cancellation: RowCancellation,
    ) -> None:
        try:
            with torch.inference_mode():
                self.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    logits_processor=constraint,
                    stopping_criteria=StoppingCriteriaList([cancellation]),
                    streamer=streamer,
                )
        except Exception as exc:
            streamer.fail(exc)


def adapted_vision(model: torch.nn.Module) -> bool:
    """Some loaded LoRA adapter changes a module of the vision tower (`visual`)."""
    return any(
        ".visual." in f".{name}." and hasattr(module, "lora_A") for name, module in model.named_modules()
    )


class VisionCache:
    """One vision pass per image: the vision tower's output per image, LRU within `capacity_bytes`,
    keyed by the image's pixels (an entry is the image's tokens x hidden size: a few MiB at 7B).

    Installed over the Qwen2-VL model's `get_image_features` (the one call its forward makes for
    images). A batch's images are split by their patch grids; images seen before (or twice in the
    batch) are served from the cache, the others go through the vision tower together, as before.
    The key is a hash of the image's preprocessed patches and grid, so equal photos share an entry
    whatever row or adapter shows them: the output does not depend on the row's adapter as long as
    no adapter changes the vision tower (`adapted_vision`; the engine installs no cache then).
    """

    def __init__(self, model: torch.nn.Module, capacity_bytes: int) -> None:
        self._compute = model.get_image_features
        self._entries: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.capacity_bytes = capacity_bytes
        self.size_bytes = 0
        self.hits = 0
        self.misses = 0
        model.get_image_features = self  # the instance attribute shadows the method

    def __call__(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, **kwargs: Any
    ) -> BaseModelOutputWithPooling:
        grids = image_grid_thw.tolist()
        chunks = torch.split(pixel_values, [t * h * w for t, h, w in grids])
        keys = [_image_key(chunk, grid) for chunk, grid in zip(chunks, grids, strict=True)]
        # each image not cached yet, once (an image twice in the batch is computed once)
        missing = [i for i, key in enumerate(keys) if key not in self._entries and keys.index(key) == i]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        computed = {}
        if missing:
            out = self._compute(torch.cat([chunks[i] for i in missing]), image_grid_thw[missing], **kwargs)
            computed = {keys[i]: features for i, features in zip(missing, out.pooler_output, strict=True)}
        features = [computed.get(key, self._entries.get(key)) for key in keys]
        for key, value in computed.items():
            self._entries[key] = value
            self.size_bytes += value.nbytes
        for key in keys:
            self._entries.move_to_end(key)
        while self.size_bytes > self.capacity_bytes:
            self.size_bytes -= self._entries.popitem(last=False)[1].nbytes
        return BaseModelOutputWithPooling(pooler_output=tuple(features))


def _image_key(patches: torch.Tensor, grid: list[int]) -> bytes:
    digest = hashlib.blake2b(patches.contiguous().numpy().tobytes(), digest_size=16)
    digest.update(bytes(str(grid), "ascii"))
    return digest.digest()


class RowBudgets(StoppingCriteria):
    """Per-row token budgets: a row is done once it has its own `max_tokens` new tokens."""

    def __init__(self, prompt_length: int, budgets: list[int]) -> None:
        self.prompt_length = prompt_length
        self.budgets = torch.tensor(budgets)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        return (input_ids.shape[1] - self.prompt_length) >= self.budgets


class RowCancellation(StoppingCriteria):
    """Stops the rows whose request was cancelled, checked once per decode step.

    The check is Triton's `request.is_cancelled()` (an IPC round trip to the server, well under
    a decode step), so abandoned generations stop within one step instead of running to their
    budget for nobody. Rows finished for other reasons keep being asked; the answer is ignored.
    """

    def __init__(self, cancelled: Sequence[IsCancelled]) -> None:
        self.cancelled = cancelled
        self.stopped: dict[int, int] = {}  # row -> sequence length when it stopped (padding follows)

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object
    ) -> torch.BoolTensor:
        for row, is_cancelled in enumerate(self.cancelled):
            if row not in self.stopped and is_cancelled():
                self.stopped[row] = input_ids.shape[1]
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[list(self.stopped)] = True
        return done


class RowGrammars(LogitsProcessor):
    """xgrammar token masks for the rows that have a schema; rows without one are left alone.

    xgrammar's own HF processor wants a grammar for every row and asserts that each sampled
    token is accepted, which fails for rows that `generate` has finished and now pads: here a
    row whose matcher refuses a token is finished and no longer masked.
    """

    def __init__(self, grammars: list[xgrammar.CompiledGrammar | None]) -> None:
        self.matchers = {i: xgrammar.GrammarMatcher(g) for i, g in enumerate(grammars) if g is not None}
        vocab_size = next(iter(g for g in grammars if g is not None)).tokenizer_info.vocab_size
        self.bitmask = xgrammar.allocate_token_bitmask(len(grammars), vocab_size)
        self.started = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.started:
            for row, matcher in list(self.matchers.items()):
                if not matcher.accept_token(int(input_ids[row, -1])) or matcher.is_terminated():
                    del self.matchers[row]  # finished: its EOS, or padding after its budget
        self.started = True
        for row, matcher in self.matchers.items():
            matcher.fill_next_token_bitmask(self.bitmask, row)
        if self.matchers:
            xgrammar.apply_token_bitmask_inplace(scores, self.bitmask, indices=list(self.matchers))
        return scores


def length_groups(lengths: list[int], max_padding: int) -> list[list[int]]:
    """Row indices grouped by prompt length, shortest first, each group padding at most `max_padding` tokens.

    Left padding makes every row of a `generate` as long as its longest: prefill compute grows
    with rows x longest prompt. A group closes when the next (longer) row would add more padding
    than a separate decode pass costs, which `max_padding` stands for.
    """
    groups: list[list[int]] = []
    padding = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if groups:
            group = groups[-1]
            added = sum(lengths[i] - lengths[j] for j in group)
            if padding + added <= max_padding:
                group.append(i)
                padding += added
                continue
        groups.append([i])
        padding = 0
    return groups


def _left_pad(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (width - tensor.shape[1], 0), value=value)


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
