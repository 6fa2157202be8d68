"""The gpu profile's `reasoner`/`vlm` Triton python model: Qwen2-VL on TensorRT-LLM's LLM API.

Modelled on NVIDIA's llmapi `model.py` (tensorrtllm_backend `triton_backend/all_models/llmapi`;
docs/gpu-stack-notes.md §2), written here for our tensor contract:

- Decoupled (`model_transaction_policy { decoupled: true }` in config.pbtxt; `initialize` refuses a
  config without it): every request is answered through its own response sender, and exactly one of
  its responses carries the FINAL flag.
- One `tensorrt_llm.LLM` per model instance, built (`run_in_executor`) and driven inside an asyncio
  loop that runs in its own thread. A build that fails fails `initialize` with the LLM's message.
- `execute` reads and checks each request (`vlm_model.read_row`, the cpu model's checks and
  messages), builds its prompt, schedules one coroutine per request on that loop
  (`run_coroutine_threadsafe`) and returns None. Each coroutine calls
  `llm.generate_async(inputs, sampling_params=..., streaming=...)` from inside the loop, so the
  result is in async mode, and reads it with `async for`: TensorRT-LLM's in-flight batching batches
  the requests, never a blocking `llm.generate` over a Triton batch.
- Streaming is the `streaming` config parameter. On: one response per step carrying
  `outputs[0].text_diff` / `token_ids_diff`; the finished step's response carries FINAL. Off: one
  FINAL response with the whole text and token ids. Either way the orchestrator's `stream_infer`
  reads `text` from every response it gets and joins the pieces.
- Cancellation: a thread asks every running request's `is_cancelled()` every
  `cancellation_check_period_ms`. A cancelled request is aborted (`RequestOutput.abort()`), gets one
  CANCELLED response with FINAL and nothing after it. (NVIDIA's keeps streaming after its
  CANCELLED.) The aborted stream is still read to its end, to log how many tokens it generated.
- A bad row fails only its own response: unusable inputs (the cpu model's row checks, a schema
  that is not JSON) and `ValueError`s that `generate_async` raises on submission (a prompt plus image
  tokens over `max_num_tokens`) get INVALID_ARGUMENT; a `RequestError` while reading (e.g. a schema
  xgrammar cannot compile) gets INVALID_ARGUMENT; anything else gets INTERNAL. Other requests run on.
- Responses are sent from one sender thread, in submission order. The loop never blocks on
  Triton's IPC, and each request's responses keep their order.
- `finalize`: stops the poller; every request still open gets one UNAVAILABLE response and is
  aborted; then `llm.shutdown()`, and the loop and threads end.

Config parameters (string values):
  engine                       "tensorrt_llm" (vlm_model.py then hands over to this class)
  weights                      weights folder beside model.py (default "weights"): `LLM(model=...)`
  llm_args                     JSON object of further `LLM()` arguments, NVIDIA's model.yaml keys, e.g.
                               {"dtype": "bfloat16", "kv_cache_config": {"free_gpu_memory_fraction": 0.3},
                               "max_num_tokens": 8192, "max_batch_size": 8}. `model` is not allowed here;
                               `guided_decoding_backend` defaults to "xgrammar"; `kv_cache_config`
                               becomes a `KvCacheConfig` (unknown keys fail). Not `use_tqdm`: that is
                               an argument of `generate()` only, and `LLM()` rejects it.
  max_tokens                   default budget when a request sends none (default "128")
  streaming                    "true" / "false" (default "false")
  cancellation_check_period_ms how often to ask about cancelled requests (default "100")
  adapters                     LoRA adapters served on the base (export `vlm.reasoner: adapter`), as on cpu:
                               comma-separated names, each a peft folder in <version>/adapters/<name>.
                               TensorRT-LLM's runtime LoRA: `LLM(lora_config=LoraConfig(lora_dir=[...],
                               max_lora_rank, max_loras, max_cpu_loras, lora_target_modules))` (the
                               PyTorch backend ignores `enable_lora` when `lora_config` is given), and a
                               row whose `adapter` input names one is submitted with
                               `lora_request=LoRARequest(name, id, folder)`; rows of every adapter and
                               the base batch in flight together. Not run on a GPU: whether 1.2.1's HF
                               LoRA loader maps Qwen2-VL's transformers-5 module names
                               (`model.language_model.layers.N...`) is unverified.

It imports nothing of the cpu engine (torch, xgrammar, transformers' Qwen2-VL processor) at module
level, and not tensorrt_llm either: TensorRT-LLM's containers pin their own versions, and
`tensorrt_llm.llmapi` is imported by `initialize` (GpuStackMissing when it is absent).

Not run on a GPU. tests/test_vlm_trtllm.py holds it to TensorRT-LLM 1.2.1's API through a contract
fake (tests/fakes/tensorrt_llm).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

from navig.model_repository import backend, contract
from navig.model_repository.vlm_api import ChatTokenizer, chat_prompt, unknown_adapter, unusable_schema
from navig.model_repository.vlm_model import Row, adapter_folders, read_row

DTYPES = ("auto", "bfloat16", "float16")  # Qwen2-VL's vision tower runs flash-attention: no float32
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class GpuStackMissing(RuntimeError):
    pass


def import_llmapi() -> Any:
    """`tensorrt_llm.llmapi`, or GpuStackMissing saying where the gpu profile's VLMs run."""
    try:
        return importlib.import_module("tensorrt_llm.llmapi")
    except ImportError as exc:
        raise GpuStackMissing(
            f"tensorrt_llm cannot be imported ({exc}): the gpu profile's VLMs run in NVIDIA's "
            "tritonserver:<yy.mm>-trtllm-python-py3 container (TensorRT-LLM 1.2.1 in 26.04-26.07)"
        ) from exc


def llm_kwargs(params: dict[str, str], weights: Path, llmapi: Any) -> dict[str, Any]:
    """`LLM(**kwargs)` from the model config: the `llm_args` JSON object, `model` = the weights folder."""
    try:
        extra = json.loads(params.get("llm_args", "{}"))
    except ValueError as exc:
        raise ValueError(f"parameter llm_args is not JSON: {exc}") from exc
    if not isinstance(extra, dict):
        raise ValueError(f"parameter llm_args must be a JSON object of LLM() arguments, got {extra!r}")
    if "model" in extra:
        raise ValueError("parameter llm_args must not set `model`: the `weights` parameter names the folder")
    kwargs: dict[str, Any] = {"model": str(weights), "guided_decoding_backend": "xgrammar", **extra}
    if kwargs.get("dtype", "auto") not in DTYPES:
        raise ValueError(f"llm_args dtype must be one of {', '.join(DTYPES)}, got {kwargs['dtype']!r}")
    if isinstance(kwargs.get("kv_cache_config"), dict):
        try:
            kwargs["kv_cache_config"] = llmapi.KvCacheConfig(**kwargs["kv_cache_config"])
        except ValueError as exc:  # pydantic: unknown key, fraction outside [0, 1], ...
            raise ValueError(f"llm_args kv_cache_config is not a KvCacheConfig: {exc}") from exc
    return kwargs


# peft (Hugging Face) module names -> TensorRT-LLM's LoRA module names (`lora_helper`'s default mapping)
HF_TO_TRTLLM_MODULES = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_dense",
    "gate_proj": "mlp_h_to_4h",
    "down_proj": "mlp_4h_to_h",
    "up_proj": "mlp_gate",
}


def adapter_modules(folder: Path) -> tuple[list[str], int]:
    """(TensorRT-LLM module names, rank) of a peft LoRA folder: the modules from the weights' safetensors
    header (read with the standard library: an 8-byte length, then JSON), the rank from adapter_config."""
    with (folder / "adapter_model.safetensors").open("rb") as weights:
        size = int.from_bytes(weights.read(8), "little")
        names = [key for key in json.loads(weights.read(size)) if key != "__metadata__"]
    modules = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in names if ".lora_" in key}
    unknown = sorted(modules - set(HF_TO_TRTLLM_MODULES))
    if unknown:
        raise ValueError(f"adapter {folder.name}: TensorRT-LLM's LoRA has no module for {', '.join(unknown)}")
    config = json.loads((folder / "adapter_config.json").read_text())
    rank = max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])
    return sorted(HF_TO_TRTLLM_MODULES[m] for m in modules), rank


def lora_setup(adapters: dict[str, Path], llmapi: Any) -> tuple[Any, dict[str, Any]]:
    """`LLM(lora_config=...)` for the adapters, and the `LoRARequest` each adapter's rows are sent with."""
    lora_helper = importlib.import_module("tensorrt_llm.lora_helper")
    modules: set[str] = set()
    rank = 1
    for folder in adapters.values():
        names, r = adapter_modules(folder)
        modules.update(names)
        rank = max(rank, r)
    config = lora_helper.LoraConfig(
        lora_dir=[str(folder) for folder in adapters.values()],
        max_lora_rank=rank,
        lora_target_modules=sorted(modules),
        max_loras=len(adapters),
        max_cpu_loras=len(adapters),
    )
    requests = {
        name: llmapi.LoRARequest(name, k, str(folder)) for k, (name, folder) in enumerate(adapters.items(), 1)
    }
    return config, requests


def check_schema(json_schema: str) -> None:
    """The schema becomes xgrammar's grammar before submission (`json_grammar`): one it refuses is
    this request's INVALID_ARGUMENT."""
    json_grammar(json_schema)


@functools.lru_cache(maxsize=16)  # a handful of schemas (the GUESSER's), each asked for many times
def json_grammar(json_schema: str) -> str:
    """The schema as xgrammar's EBNF, without free whitespace, as the cpu engine compiles it.

    TensorRT-LLM compiles `GuidedDecodingParams(json=...)` with xgrammar's default
    `any_whitespace=True`: an answer could then spend its budget (`prompts.GUESS_MAX_TOKENS`, sized
    for compact JSON) on spaces and be cut off. So the model sends `grammar=` (EBNF) instead, built
    here by the xgrammar the TensorRT-LLM image ships for its own guided decoding."""
    import xgrammar  # imported here: the cpu profile's stack must not load with this module

    try:
        json.loads(json_schema)
        return str(xgrammar.Grammar.from_json_schema(json_schema, any_whitespace=False))
    except Exception as exc:  # json's ValueError; xgrammar raises RuntimeError/ValueError for schemas
        raise unusable_schema(exc) from exc


def llm_inputs(tokenizer: ChatTokenizer, prompt: str, image: np.ndarray | None) -> dict[str, Any]:
    """One row as the LLM API's prompt. The chat template is applied here: the LLM does not template
    a plain string, and its Qwen2-VL input processor only expands the image placeholder. The image
    goes as a PIL image."""
    inputs: dict[str, Any] = {"prompt": chat_prompt(tokenizer, prompt, image is not None)}
    if image is not None:
        inputs["multi_modal_data"] = {"image": [Image.fromarray(np.ascontiguousarray(image))]}
    return inputs


def sampling_params(llmapi: Any, row: Row) -> Any:
    """Greedy (`top_k=1` is greedy in `SamplingParams.params_imply_greedy_decoding`); `max_tokens`
    always set (the LLM API's default is 32); the JSON schema as guided decoding, by its grammar."""
    guided = llmapi.GuidedDecodingParams(grammar=json_grammar(row.json_schema)) if row.json_schema else None
    return llmapi.SamplingParams(max_tokens=row.max_tokens, top_k=1, guided_decoding=guided)


@dataclass(eq=False)
class _Job:
    """One request, from `execute` to its FINAL response. Written only on the event loop (the
    cancellation poller reads `closed` as a hint)."""

    request: Any
    sender: Any
    task: asyncio.Task[None] | None = None
    output: Any = None  # the RequestOutput, once submitted
    tokens: int = 0  # tokens generated so far, as far as we have read
    closed: bool = False  # its FINAL response is sent or queued: nothing more goes to this request
    cancelled: bool = False


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = backend.model_config(args)
        self.name = args["model_name"]
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise ValueError(
                f"{self.name}: the TensorRT-LLM model answers through response senders: its config.pbtxt "
                "needs `model_transaction_policy { decoupled: true }`"
            )
        params = backend.parameters(config)
        self.default_max_tokens = int(params.get("max_tokens", "128"))
        self.streaming = _flag(params, "streaming")
        self._poll_s = int(params.get("cancellation_check_period_ms", "100")) / 1000
        if self._poll_s <= 0:
            raise ValueError("parameter cancellation_check_period_ms must be positive")
        self._llmapi = import_llmapi()
        weights = backend.version_dir(args) / params.get("weights", "weights")
        kwargs = llm_kwargs(params, weights, self._llmapi)
        self._loras: dict[str, Any] = {}
        if adapters := adapter_folders(backend.version_dir(args), params):
            if "lora_config" in kwargs:
                raise ValueError("parameter llm_args must not set `lora_config`: parameter adapters does")
            kwargs["lora_config"], self._loras = lora_setup(adapters, self._llmapi)

        self._jobs: set[_Job] = set()
        self._jobs_lock = threading.Lock()
        self._sender = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-send")
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop_thread = threading.Thread(
            target=self._loop_main, args=(kwargs, ready), name=f"{self.name}-llm", daemon=True
        )
        self._loop_thread.start()
        try:
            ready.result()
        except Exception as exc:
            self._loop_thread.join()
            self._sender.shutdown()
            described = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise RuntimeError(f"{self.name}: tensorrt_llm.LLM({described}) failed: {exc}") from exc
        self._stopping = threading.Event()
        self._poller = threading.Thread(
            target=self._poll_cancellation, name=f"{self.name}-cancel", daemon=True
        )
        self._poller.start()

    def _loop_main(self, kwargs: dict[str, Any], ready: concurrent.futures.Future[None]) -> None:
        try:
            asyncio.run(self._serve(kwargs, ready))
        finally:  # whatever ended the thread, `initialize` does not wait for it forever
            if not ready.done():
                ready.set_exception(RuntimeError("the event loop thread ended before the LLM was ready"))

    async def _serve(self, kwargs: dict[str, Any], ready: concurrent.futures.Future[None]) -> None:
        """The loop thread's life: build the LLM, serve until `finalize`, then shut it down."""
        loop = asyncio.get_running_loop()
        try:
            llm = await loop.run_in_executor(None, functools.partial(self._llmapi.LLM, **kwargs))
        except Exception as exc:
            ready.set_exception(exc)
            return
        if llm.tokenizer is None:  # `skip_tokenizer_init`: no chat template to build prompts with
            await loop.run_in_executor(None, llm.shutdown)
            ready.set_exception(RuntimeError("the LLM has no tokenizer: skip_tokenizer_init must stay false"))
            return
        self._loop, self._llm, self._tokenizer = loop, llm, llm.tokenizer
        self._unload = asyncio.Event()
        ready.set_result(None)
        await self._unload.wait()
        await self._shutdown(llm)

    def execute(self, requests: list[Any]) -> None:
        """Checks each request, then hands it to the loop as its own generation; returns at once."""
        for request in requests:
            sender = request.get_response_sender()
            try:
                row = read_row(request, self.default_max_tokens, check_schema, self._check_adapter)
                inputs = llm_inputs(self._tokenizer, row.prompt, row.image)
                params = sampling_params(self._llmapi, row)
                lora = self._loras.get(row.adapter) if row.adapter else None
            except Exception as exc:  # ValueError: unusable input; anything else: our fault
                bad = isinstance(exc, ValueError)
                message = str(exc) if bad else f"generation failed: {exc}"
                response = backend.error_response(message, invalid_argument=bad)
                self._sender.submit(self._deliver, sender, response, True)
                continue
            job = _Job(request, sender)
            with self._jobs_lock:
                self._jobs.add(job)
            asyncio.run_coroutine_threadsafe(self._generate(job, inputs, params, lora), self._loop)
        return None

    def _check_adapter(self, adapter: str) -> None:
        if adapter not in self._loras:
            raise unknown_adapter(adapter, list(self._loras))

    async def _generate(self, job: _Job, inputs: dict[str, Any], params: Any, lora: Any) -> None:
        job.task = asyncio.current_task()
        rejected = False
        try:
            if not job.closed:  # not cancelled (or unloading) before it got here
                await self._run(job, inputs, params, lora)
        except self._llmapi.RequestError as exc:  # this request failed in the executor, the others run on
            rejected = True
            error = backend.error_response(f"rejected by TensorRT-LLM: {exc}", invalid_argument=True)
            await self._send(job, error, True)
        except Exception as exc:
            await self._send(job, backend.error_response(f"generation failed: {exc}"), True)
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)
            output = job.output
            if output is not None and not (rejected or output.finished or output.aborted()):
                output.abort()  # left early (unload, our error): nobody reads it, free its batch slot
            if job.cancelled:
                pb_utils.Logger.log_info(
                    f"{self.name}: request cancelled, generation stopped after {job.tokens} tokens"
                )

    async def _run(self, job: _Job, inputs: dict[str, Any], params: Any, lora: Any) -> None:
        try:
            # by keyword: the third positional parameter is `lora_request`, and the order changed after 1.2
            job.output = self._llm.generate_async(
                inputs, sampling_params=params, lora_request=lora, streaming=self.streaming
            )
        except ValueError as exc:  # checked on submission: prompt (with image tokens) over max_num_tokens...
            await self._send(job, backend.error_response(str(exc), invalid_argument=True), True)
            return
        output = None
        async for step in job.output:  # after a cancel: read on to the aborted end, send nothing
            output = step.outputs[0]
            job.tokens = len(output.token_ids)
            if self.streaming:
                await self._send(job, _response(output.text_diff, output.token_ids_diff), step.finished)
        if not self.streaming and output is not None:
            await self._send(job, _response(output.text, output.token_ids), True)
        await self._send(job, None, True)  # only if no FINAL went yet

    async def _send(self, job: _Job, response: Any, final: bool) -> None:
        """Queues one response of `job` on the sender thread; nothing once its FINAL is queued."""
        if job.closed:
            return
        job.closed = final
        await self._loop.run_in_executor(self._sender, self._deliver, job.sender, response, final)

    def _deliver(self, sender: Any, response: Any, final: bool) -> None:
        try:
            sender.send(response, flags=FINAL if final else 0)
        except Exception as exc:  # e.g. the client is gone; the poller sees the cancellation
            pb_utils.Logger.log_error(f"{self.name}: could not send a response: {exc}")

    def _poll_cancellation(self) -> None:
        while not self._stopping.wait(self._poll_s):
            with self._jobs_lock:
                jobs = [job for job in self._jobs if not job.closed]
            for job in jobs:
                try:
                    cancelled = job.request.is_cancelled()
                except Exception:  # finished meanwhile
                    continue
                if cancelled:
                    self._loop.call_soon_threadsafe(self._cancel, job)

    def _cancel(self, job: _Job) -> None:
        """On the loop: abort the generation, answer CANCELLED with FINAL, send nothing more."""
        if job.closed:
            return
        job.closed = job.cancelled = True
        if job.output is not None:
            job.output.abort()
        cancelled = backend.cancelled_response()
        self._loop.run_in_executor(self._sender, self._deliver, job.sender, cancelled, True)

    def finalize(self) -> None:
        self._stopping.set()
        self._poller.join()
        self._loop.call_soon_threadsafe(self._unload.set)
        self._loop_thread.join()
        self._sender.shutdown(wait=True)

    async def _shutdown(self, llm: Any) -> None:
        """Unload: every open request gets UNAVAILABLE and its generation ends; then the LLM shuts down."""
        with self._jobs_lock:
            jobs = list(self._jobs)
        unloading = pb_utils.InferenceResponse(
            error=pb_utils.TritonError(f"{self.name} is being unloaded", pb_utils.TritonError.UNAVAILABLE)
        )
        sends = []
        for job in jobs:
            if not job.closed:
                job.closed = True
                sends.append(
                    self._loop.run_in_executor(self._sender, self._deliver, job.sender, unloading, True)
                )
            if job.task is not None:
                job.task.cancel()  # its `finally` aborts the generation
        await asyncio.gather(*_tasks(jobs), *sends, return_exceptions=True)
        try:
            await self._loop.run_in_executor(None, llm.shutdown)
        except Exception as exc:
            pb_utils.Logger.log_error(f"{self.name}: LLM.shutdown() failed: {exc}")


def _tasks(jobs: Sequence[_Job]) -> list[asyncio.Task[None]]:
    return [job.task for job in jobs if job.task is not None]


def _flag(params: dict[str, str], key: str) -> bool:
    value = params.get(key, "false").strip().lower()
    if value not in ("true", "false"):
        raise ValueError(f"parameter {key} must be true or false, got {value!r}")
    return value == "true"


def _response(text: str, token_ids: Sequence[int]) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(contract.VLM_TEXT, np.array([[text.encode("utf-8")]], dtype=np.object_)),
            pb_utils.Tensor(contract.VLM_TOKEN_IDS, np.asarray(token_ids, dtype=np.int32).reshape(1, -1)),
        ]
    )
