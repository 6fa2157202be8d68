"""Contract fake of `tensorrt_llm/llmapi/llm.py` (TensorRT-LLM 1.2.1; not TensorRT-LLM).

Same as the real `LLM`:
- the constructor signature and argument checks (a TensorRT-only argument, then an unknown one:
  `ValueError("LLM got invalid argument: <key>")`);
- `generate_async`'s signature (1.2-era: `streaming` is the 5th parameter, after `lora_request`
  and `prompt_adapter_request`);
- the checks `generate_async` makes on submission (`RuntimeError` once shut down, `TypeError` for
  bad inputs or sampling params, `ValueError` for a prompt over `max_num_tokens`);
- `tokenizer`, `shutdown()`, `generate()`.

Stricter than the real one, so that mistakes show in tests (each says "fake" in its message):
- `model` must be an existing folder (no Hub here);
- `dtype` must be auto/float16/bfloat16/float32;
- the Qwen2-VL prompt shape is checked: the prompt must hold one
  `<|vision_start|><|image_pad|><|vision_end|>` per image, and images come as
  `multi_modal_data={"image": [PIL RGB images]}`;
- `lora_config` must be a `LoraConfig` whose `lora_dir` folders exist, and a `lora_request` must be
  a `LoRARequest` naming one of them, on an LLM built with `lora_config` (a positional `streaming`
  lands in `lora_request`); `prompt_adapter_request` is refused;
- a guided request without `guided_decoding_backend` fails that request.

Per-request failures (a schema "xgrammar" cannot compile: not JSON, or a `type` JSON Schema does not
have) come back as `RequestError` while the result is read, as in the real executor.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from tensorrt_llm.executor.request import LoRARequest
from tensorrt_llm.executor.result import FakeResponse, GenerationResult
from tensorrt_llm.llmapi.llm_args import TORCH_LLM_ARGS, TRT_ONLY_ARGS, KvCacheConfig
from tensorrt_llm.lora_helper import LoraConfig
from tensorrt_llm.sampling_params import SamplingParams

STEP_S = 0.01  # one decode step of the fake executor (every running request gets one token)
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
DTYPES = ("auto", "float16", "bfloat16", "float32")
JSON_SCHEMA_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
EOS, PAD = 256, 257  # past the byte-level vocabulary


def fake_answer(prompt: str, guided: bool, lora: str = "") -> str:
    """What the fake "generates" for a prompt (before `max_tokens` cuts it): one token per byte; JSON
    when guided; another answer under each LoRA adapter (`lora`: its name)."""
    digest = hashlib.sha256((prompt + (f"\0{lora}" if lora else "")).encode()).hexdigest()
    return json.dumps({"answer": digest[:12]}) if guided else f"answer {digest * 4}"


class FakeTokenizer:
    """Byte-level tokens; Qwen2-VL's chat template (ChatML, the image placeholder in the user turn)."""

    eos_token_id = EOS
    pad_token_id = PAD

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True, **kwargs: Any) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")

    def apply_chat_template(
        self, conversation: list[dict[str, Any]], tokenize: bool = False, add_generation_prompt: bool = False
    ) -> Any:
        text = ""
        for message in conversation:
            content = message["content"]
            if isinstance(content, list):
                content = "".join(IMAGE_PLACEHOLDER if c["type"] == "image" else c["text"] for c in content)
            text += f"<|im_start|>{message['role']}\n{content}<|im_end|>\n"
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return self.encode(text) if tokenize else text


class RequestOutput(GenerationResult):
    """The output of one `generate_async` request (created by the LLM only)."""

    def __init__(self) -> None:
        raise RuntimeError(
            "RequestOutput is designed to be instantiated using RequestOutput._from_generation_result by "
            "GenerationExecutor. Users are not expected to create RequestOutput directly."
        )

    @classmethod
    def _create(cls, prompt: str | None, **kwargs: Any) -> RequestOutput:
        inst = cls.__new__(cls)
        GenerationResult.__init__(inst, **kwargs)
        inst._prompt = prompt
        return inst

    @property
    def prompt(self) -> str | None:
        return self._prompt


@dataclass
class FakeRequest:
    """What a test can see of a submitted request (`LLM.fake_requests`)."""

    request_id: int
    inputs: dict[str, Any]
    sampling_params: SamplingParams
    streaming: bool
    lora_request: LoRARequest | None = None


@dataclass
class _Running:
    result: RequestOutput
    tokens: list[int]
    finish_reason: str
    error: str | None
    produced: int = 0


class _FakeExecutor:
    """One thread; each step every running request gets a token (in-flight batching, in miniature)."""

    def __init__(self, log: list[tuple[str, int | None]], paused: threading.Event) -> None:
        self._log, self._paused = log, paused
        self._cond = threading.Condition()
        self._running: dict[int, _Running] = {}
        self._aborted: set[int] = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="fake-trtllm-executor", daemon=True)
        self._thread.start()

    def submit(self, running: _Running) -> None:
        with self._cond:
            self._running[running.result.request_id] = running
            self._cond.notify()

    def abort_request(self, request_id: int) -> None:
        with self._cond:
            self._log.append(("abort", request_id))
            self._aborted.add(request_id)
            self._cond.notify()

    def is_shutdown(self) -> bool:
        return self._stopped

    def shutdown(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._running or self._paused.is_set()):
                    self._cond.wait(STEP_S)
                if self._stopped:
                    return
                batch = [(r, r.result.request_id in self._aborted) for r in self._running.values()]
            for running, aborted in batch:
                if self._step(running, aborted):
                    with self._cond:
                        del self._running[running.result.request_id]
                    self._log.append(("finish", running.result.request_id))
            time.sleep(STEP_S)

    @staticmethod
    def _step(r: _Running, aborted: bool) -> bool:
        """One token (or the end) for one request; True when it is done."""
        streaming = r.result._streaming
        if r.error is not None:
            r.result._put(FakeResponse(error=r.error))
            return True
        if aborted:  # the final response says cancelled, with what was generated (non-streaming: all)
            r.result._put(FakeResponse([] if streaming else r.tokens[: r.produced], True, "cancelled"))
            return True
        r.produced += 1
        done = r.produced >= len(r.tokens)
        if streaming:
            new = r.tokens[r.produced - 1 : r.produced]
            r.result._put(FakeResponse(new, done, r.finish_reason if done else None))
        elif done:
            r.result._put(FakeResponse(r.tokens, True, r.finish_reason))
        return done


def _prompt_inputs(inputs: Any) -> dict[str, Any]:
    if isinstance(inputs, str):
        return {"prompt": inputs}
    if isinstance(inputs, list) and all(isinstance(i, int) for i in inputs):
        return {"prompt_token_ids": inputs}
    if isinstance(inputs, dict):
        return inputs
    raise TypeError(f"Invalid type of inputs for llm.generate: {type(inputs)}")


class LLM:
    def __init__(
        self,
        model: str | Path,
        tokenizer: Any = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        backend = kwargs.pop("backend", "pytorch")
        trtllm_specific_args = [key for key in kwargs if key in TRT_ONLY_ARGS]
        if trtllm_specific_args:
            raise ValueError(
                "The following arguments are specific to TensorRT backend and cannot be used with PyTorch "
                f"backend: {trtllm_specific_args}.\n"
                "Please use 'from tensorrt_llm._tensorrt_engine import LLM' instead to use the TensorRT "
                "backend."
            )
        kwargs["backend"] = backend
        for key in kwargs:
            if key not in TORCH_LLM_ARGS | {"_mpi_session", "backend"}:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        kv_cache_config = kwargs.pop("kv_cache_config", None)
        if kv_cache_config is None:
            kv_cache_config = KvCacheConfig()
        elif isinstance(kv_cache_config, dict):
            kv_cache_config = KvCacheConfig(**kv_cache_config)
        elif not isinstance(kv_cache_config, KvCacheConfig):
            raise ValueError(f"kv_cache_config must be a KvCacheConfig, got {type(kv_cache_config)}")
        if kwargs.get("guided_decoding_backend") not in (None, "xgrammar", "llguidance"):
            raise ValueError(f"Invalid guided_decoding_backend: {kwargs['guided_decoding_backend']}")
        lora_config = kwargs.get("lora_config")
        if lora_config is not None:
            if not isinstance(lora_config, LoraConfig):
                raise ValueError(f"fake tensorrt_llm: lora_config is a LoraConfig, got {type(lora_config)}")
            missing = [d for d in lora_config.lora_dir if not Path(d).is_dir()]
            if missing:
                raise ValueError(f"fake tensorrt_llm: lora_dir {missing} does not exist")
        if dtype not in DTYPES:
            raise ValueError(f"fake tensorrt_llm: dtype must be one of {DTYPES}, got {dtype!r}")
        if not Path(model).is_dir():
            raise ValueError(f"fake tensorrt_llm: model folder {model} does not exist (no Hugging Face Hub)")
        self.args = SimpleNamespace(
            model=str(model),
            tokenizer=tokenizer,
            skip_tokenizer_init=skip_tokenizer_init,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            kv_cache_config=kv_cache_config,
            max_num_tokens=kwargs.pop("max_num_tokens", 8192),
            max_batch_size=kwargs.pop("max_batch_size", None),
            enable_chunked_prefill=kwargs.pop("enable_chunked_prefill", False),
            guided_decoding_backend=kwargs.pop("guided_decoding_backend", None),
            **kwargs,
        )
        self._tokenizer = None if skip_tokenizer_init else FakeTokenizer()
        self._ids = itertools.count(1)
        self.fake_log: list[tuple[str, int | None]] = []  # ("submit" | "abort" | "finish" | ..., id)
        self.fake_requests: list[FakeRequest] = []
        self.fake_paused = threading.Event()  # set: the executor makes no progress
        self._executor: _FakeExecutor | None = _FakeExecutor(self.fake_log, self.fake_paused)

    @property
    def tokenizer(self) -> FakeTokenizer | None:
        return self._tokenizer

    def generate(
        self,
        inputs: Any,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: Any = None,
    ) -> RequestOutput | list[RequestOutput]:
        """Blocking: every prompt to its end (static batching, from the caller's point of view)."""
        self.fake_log.append(("generate", None))
        unbatched = not isinstance(inputs, list) or isinstance(inputs[0], int)
        batch = [inputs] if unbatched else inputs
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(batch)
        results = [self.generate_async(i, sampling_params=p) for i, p in zip(batch, params, strict=True)]
        for result in results:
            result.result()
        return results[0] if unbatched else results

    def generate_async(
        self,
        inputs: Any,
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        _postproc_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        if self._executor is None or self._executor.is_shutdown():
            raise RuntimeError("LLM is shutting down")
        if prompt_adapter_request is not None or not isinstance(lora_request, LoRARequest | None):
            raise ValueError(
                "fake tensorrt_llm: lora_request must be a LoRARequest and no prompt adapter is served here "
                "(a `streaming` passed positionally lands in `lora_request`: pass it by keyword)"
            )
        lora_config = getattr(self.args, "lora_config", None)
        served = lora_config.lora_dir if lora_config is not None else []
        if lora_request is not None and lora_request.lora_path not in served:
            raise ValueError(
                f"fake tensorrt_llm: LoRA {lora_request.lora_name!r} ({lora_request.lora_path}) is not "
                "in the LLM's lora_config.lora_dir"
            )
        sampling_params = self._prepare_sampling_params(sampling_params)
        inputs = _prompt_inputs(inputs)
        prompt_len = self._prompt_length(inputs)
        self._check_arguments(prompt_len, 0, sampling_params)
        result = RequestOutput._create(
            inputs["prompt"],
            request_id=next(self._ids),
            sampling_params=sampling_params,
            streaming=streaming,
            executor=self._executor,
            tokenizer=self._tokenizer,
        )
        guided = sampling_params.guided_decoding
        lora = lora_request.lora_name if lora_request is not None else ""
        constrained = guided is not None and bool(guided.json or guided.grammar)
        answer = fake_answer(inputs["prompt"], constrained, lora)
        tokens = self._tokenizer.encode(answer)[: sampling_params.max_tokens]
        finish_reason = "length" if len(tokens) == sampling_params.max_tokens else "stop"
        submitted = FakeRequest(result.request_id, inputs, sampling_params, streaming, lora_request)
        self.fake_requests.append(submitted)
        self.fake_log.append(("submit", result.request_id))
        error = self._request_error(sampling_params)
        self._executor.submit(_Running(result, tokens, finish_reason, error))
        return result

    def _prepare_sampling_params(self, sampling_params: SamplingParams | None) -> SamplingParams:
        if sampling_params is None:
            sampling_params = SamplingParams()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(
                f"The sampling_params must be type SamplingParams or None, but got {type(sampling_params)}"
            )
        if sampling_params.end_id is None:
            if self._tokenizer is None:
                raise ValueError(
                    "tokenizer is required to reset end_id if it is None, or you can explicitly specify the "
                    "end_id for sampling_params"
                )
            sampling_params._setup(self._tokenizer)
        return sampling_params

    def _prompt_length(self, inputs: dict[str, Any]) -> int:
        """Prompt tokens after Qwen2-VL's processor expands each image (one token per 28x28 px)."""
        unknown = set(inputs) - {"prompt", "multi_modal_data", "mm_processor_kwargs"}
        if unknown or not isinstance(inputs.get("prompt"), str):
            raise ValueError(
                f"fake tensorrt_llm: a VLM prompt is {{'prompt': str, 'multi_modal_data': ...}}, got keys "
                f"{sorted(inputs)} (VLMs re-tokenize the prompt text themselves)"
            )
        prompt: str = inputs["prompt"]
        images: list[Any] = []
        if (data := inputs.get("multi_modal_data")) is not None:
            if not isinstance(data, dict) or set(data) != {"image"}:
                raise ValueError(f"fake tensorrt_llm: multi_modal_data must be {{'image': [...]}}: {data!r}")
            images = data["image"]
            if not isinstance(images, list) or not images:
                raise ValueError("fake tensorrt_llm: multi_modal_data['image'] must be a non-empty list")
            for image in images:
                if not isinstance(image, Image.Image) or image.mode != "RGB":
                    raise ValueError(f"fake tensorrt_llm: images must be PIL RGB images, got {image!r}")
        placeholders = prompt.count(IMAGE_PLACEHOLDER)
        if placeholders != len(images):
            raise ValueError(
                f"fake tensorrt_llm: the prompt holds {placeholders} image placeholder(s) "
                f"{IMAGE_PLACEHOLDER} for {len(images)} image(s): apply the chat template with the image "
                "in the user turn"
            )
        assert self._tokenizer is not None
        length = len(self._tokenizer.encode(prompt)) - placeholders * len(IMAGE_PLACEHOLDER.encode())
        return length + sum(math.ceil(i.height / 28) * math.ceil(i.width / 28) for i in images)

    def _check_arguments(self, prompt_len: int, query_len: int, sampling_params: SamplingParams) -> None:
        max_num_tokens = self.args.max_num_tokens
        cp_size = 1  # no context parallelism here
        if (
            not self.args.enable_chunked_prefill
            and max_num_tokens
            and prompt_len / cp_size + query_len > max_num_tokens
        ):
            raise ValueError(
                f"The sum of prompt length ({prompt_len / cp_size}), query length ({query_len}) "
                f"should not exceed max_num_tokens ({max_num_tokens})"
            )

    def _request_error(self, sampling_params: SamplingParams) -> str | None:
        """A per-request failure inside the executor, reported when the result is read."""
        guided = sampling_params.guided_decoding
        if guided is None:
            return None
        if self.args.guided_decoding_backend is None:
            return "fake tensorrt_llm: guided decoding requested, but the LLM has no guided_decoding_backend"
        if guided.json is None:
            return None
        try:
            schema = json.loads(guided.json) if isinstance(guided.json, str) else guided.json
        except ValueError as exc:
            return f"fake xgrammar: the JSON schema does not parse: {exc}"
        if isinstance(schema, dict) and schema.get("type", "object") not in JSON_SCHEMA_TYPES:
            return f"fake xgrammar: unsupported JSON schema type {schema['type']!r}"
        return None

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
            self.fake_log.append(("shutdown", None))

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> bool:
        self.shutdown()
        return False
