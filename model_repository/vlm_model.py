"""The `reasoner` and `vlm` python-backend models: one prompt (+ image) in, generated text out.

Config parameters choose the engine (`transformers` on cpu, `tensorrt_llm` on gpu), the weights
folder beside this file and the default token budget. With `decoupled: true` in the model's
transaction policy the answer streams: one response per new piece of text, then a final flag.

Concurrent requests are batched by Triton's dynamic batcher (`max_batch_size` rows,
`max_queue_delay_microseconds`), not by a batching loop in here: Triton already queues, groups,
times out and counts (statistics: executions vs requests), the python backend hands each request's
own tensors to `execute` (so `allow_ragged_batch` lets images of different sizes share a batch),
and the model stays non-decoupled, so callers keep unary `infer`. An in-model batcher would need a
decoupled model (stream API for every caller) plus threads and our own queue. Each request of a
batch is one row of `engine.generate_batch`; a bad row gets its own INVALID_ARGUMENT and the others
still run. Streaming (decoupled) models serve the requests of a batch one after another.

Adapters: with the `adapters` parameter (export `vlm.reasoner: adapter`) the model loads the base once
plus each named peft LoRA folder under `<version>/adapters/<name>`, and the optional `adapter` input
picks each row's ("" = the base): the REASONER's rows and the GUESSER's and describer's share a batch
and every read of the base weights. An adapter the model does not serve is that row's INVALID_ARGUMENT.

Cancellation: when a caller cancels or its deadline passes, Triton marks the request cancelled;
the engine asks `is_cancelled()` between decode steps, stops that row and it gets CANCELLED, so
the cores go to answers somebody still waits for (`benchmarks/cancellation.py` measures it).
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: its idle threads spin by default, taking the cores the other models'
# stubs need (on 2 cores: half the throughput; README, Performance).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from navig.model_repository import backend, contract
from navig.model_repository.vlm_api import ADAPTERS_DIR, Generation, VlmEngine, unknown_adapter


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = backend.model_config(args)
        params = backend.parameters(config)
        if params.get("engine", "transformers") == "tensorrt_llm":
            # gpu profile: NVIDIA's LLM-API pattern (decoupled, one `generate_async` per request), its
            # own model class; the stub calls `execute`/`finalize` by name, so this instance hands over.
            from navig.model_repository.vlm_trtllm import TritonPythonModel as LlmApiModel

            gpu = LlmApiModel()
            gpu.initialize(args)
            self.execute, self.finalize = gpu.execute, gpu.finalize
            return
        from navig.model_repository.vlm_engine import TransformersVlm

        self.name = args["model_name"]
        self.default_max_tokens = int(params.get("max_tokens", "128"))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        weights = backend.version_dir(args) / params.get("weights", "weights")
        threads, max_padding = int(params.get("threads", "0")), int(params.get("max_padding", "512"))
        adapters = adapter_folders(backend.version_dir(args), params)
        self.engine: VlmEngine = TransformersVlm(
            weights,
            threads=threads,
            max_padding=max_padding,
            adapters=adapters,
            vision_cache_mb=float(params.get("vision_cache_mb", "0")),
        )

    def execute(self, requests: list[Any]) -> list[Any] | None:
        if self.decoupled:
            for request in requests:
                self._serve_stream(request)
            return None
        return self._serve_batch(requests)

    def _serve_batch(self, requests: list[Any]) -> list[Any]:
        """Every valid request of Triton's dynamic batch becomes a row of one `generate_batch`."""
        responses: list[Any] = [None] * len(requests)
        rows: list[tuple[int, Row]] = []
        for k, request in enumerate(requests):
            try:
                rows.append((k, self._read(request)))
            except ValueError as exc:  # bad input or a schema the grammar compiler rejects: this row only
                responses[k] = backend.error_response(str(exc), invalid_argument=True)
        if rows:
            indices = [k for k, _ in rows]
            cancelled = [requests[k].is_cancelled for k in indices]
            for k, response in zip(indices, self._generate([row for _, row in rows], cancelled), strict=True):
                responses[k] = response
        return responses

    def _generate(self, rows: list[Row], cancelled: list[Any]) -> list[Any]:
        try:
            generations = self.engine.generate_batch(
                [r.prompt for r in rows],
                [r.image for r in rows],
                [r.max_tokens for r in rows],
                [r.json_schema for r in rows],
                cancelled,
                [r.adapter for r in rows],
            )
        except Exception as exc:
            return [backend.error_response(f"generation failed: {exc}")] * len(rows)
        return [self._cancelled(g) if g.cancelled else _response(g) for g in generations]

    def _cancelled(self, generation: Generation) -> Any:
        """CANCELLED for a generation stopped because its caller gave up; logged for operators and tests."""
        pb_utils.Logger.log_info(
            f"{self.name}: request cancelled, generation stopped after {len(generation.token_ids)} tokens"
        )
        return backend.cancelled_response()

    def _serve_stream(self, request: Any) -> None:
        """Decoupled: one request at a time, one response per new piece of text (not batched)."""
        try:
            row = self._read(request)
            self._stream(request, row)
        except ValueError as exc:
            self._finish(request, backend.error_response(str(exc), invalid_argument=True))
        except Exception as exc:
            self._finish(request, backend.error_response(f"generation failed: {exc}"))

    def _read(self, request: Any) -> Row:
        return read_row(request, self.default_max_tokens, self.engine.check_schema, self.engine.check_adapter)

    def _stream(self, request: Any, row: Row) -> None:
        sender = request.get_response_sender()
        cancelled = sender.is_cancelled
        pieces = self.engine.stream(
            row.prompt, row.image, row.max_tokens, row.json_schema, cancelled, adapter=row.adapter
        )
        for piece in pieces:
            if piece.cancelled:
                sender.send(self._cancelled(piece), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            sender.send(_response(piece))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _finish(request: Any, response: Any) -> None:
        request.get_response_sender().send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


@dataclass(frozen=True)
class Row:
    """One request's generation inputs."""

    prompt: str
    image: np.ndarray | None
    max_tokens: int
    json_schema: str | None
    adapter: str | None = None  # the LoRA adapter to run with; None: the base


def adapter_folders(version_dir: Path, params: dict[str, str]) -> dict[str, Path]:
    """The `adapters` parameter (comma-separated names) as name -> folder; each folder must exist."""
    names = [name.strip() for name in params.get("adapters", "").split(",") if name.strip()]
    folders = {name: version_dir / ADAPTERS_DIR / name for name in names}
    for name, folder in folders.items():
        if not (folder / "adapter_config.json").is_file():
            raise ValueError(f"parameter adapters names {name!r} but {folder} holds no peft adapter")
    return folders


def _refuse_adapters(adapter: str) -> None:
    raise unknown_adapter(adapter, ())


def read_row(
    request: Any,
    default_max_tokens: int,
    check_schema: Callable[[str], None],
    check_adapter: Callable[[str], None] = _refuse_adapters,
) -> Row:
    """One request's inputs, each with Triton's batch dimension of 1; ValueError if unusable (both
    profiles' models read rows through this: the same checks, the same messages)."""
    prompts = pb_utils.get_input_tensor_by_name(request, contract.VLM_PROMPT).as_numpy().reshape(-1)
    if len(prompts) != 1:
        raise ValueError(f"one prompt per request (batch dimension 1), got {len(prompts)}")
    prompt = _text(prompts[0])
    image_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_IMAGE)
    image = image_tensor.as_numpy() if image_tensor is not None else None
    if image is not None:
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"image must be [1, H, W, 3], got {list(image.shape)}")
        image = image[0]
        height, width = image.shape[:2]
        if min(height, width) < contract.MIN_IMAGE_SIDE:
            raise ValueError(f"image of {width}x{height} is smaller than {contract.MIN_IMAGE_SIDE} px")
        if max(height, width) > contract.MAX_ASPECT_RATIO * min(height, width):
            raise ValueError(
                f"image of {width}x{height} has an aspect ratio above {contract.MAX_ASPECT_RATIO}"
            )
    budget_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_MAX_TOKENS)
    max_tokens = int(budget_tensor.as_numpy().reshape(-1)[0]) if budget_tensor else default_max_tokens
    if not 1 <= max_tokens <= contract.MAX_NEW_TOKENS:
        raise ValueError(f"max_tokens must be in 1..{contract.MAX_NEW_TOKENS}, got {max_tokens}")
    schema_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_JSON_SCHEMA)
    json_schema = (
        (_text(schema_tensor.as_numpy().reshape(-1)[0]) or None) if schema_tensor is not None else None
    )
    if json_schema is not None:
        check_schema(json_schema)
    adapter_tensor = pb_utils.get_input_tensor_by_name(request, contract.VLM_ADAPTER)
    adapter = (
        (_text(adapter_tensor.as_numpy().reshape(-1)[0]) or None) if adapter_tensor is not None else None
    )
    if adapter is not None:
        check_adapter(adapter)
    return Row(prompt, image, max_tokens, json_schema, adapter)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _response(generation: Generation) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(
                contract.VLM_TEXT, np.array([[generation.text.encode("utf-8")]], dtype=np.object_)
            ),
            pb_utils.Tensor(contract.VLM_TOKEN_IDS, np.asarray([generation.token_ids], dtype=np.int32)),
        ]
    )
