"""The gpu profile's VLM Triton model (model_repository/vlm_trtllm.py) against TensorRT-LLM's API.

A contract check against a fake that follows TensorRT-LLM 1.2.1, not a GPU run. tests/fakes/tensorrt_llm
has the real public names, signatures, argument checks and error messages, and generates with a toy.
The real model class runs in-process here, with a fake of Triton's `triton_python_backend_utils`
(tests/fakes). A call that TensorRT-LLM 1.2.1 would refuse fails these tests. Examples: an unknown
`LLM()` argument such as `use_tqdm`, `streaming` passed positionally, a positional `SamplingParams`,
or `async for` over a result created outside the event loop. What they cannot show is that Qwen2-VL
generates well on a GPU.

Covered here: one `generate_async` per request with in-flight overlap; streamed diffs with exactly
one FINAL; non-streamed single responses; greedy sampling, the token budget and the JSON schema as
`GuidedDecodingParams`; the chat-templated multimodal prompt; bad rows failing alone; cancellation
(abort, one CANCELLED, then silence, one log line); unload; `LLM()` arguments from the config; and
configs that TensorRT-LLM refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xgrammar
from conftest import CANCELLED  # the regex the Triton-server tests read cancelled generations with

FAKES = Path(__file__).parent / "fakes"
OURS = {f"navig.model_repository.{m}" for m in ("backend", "vlm_model", "vlm_trtllm")}
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def _faked(name: str) -> bool:
    """Modules imported fresh from tests/fakes for each test (and our modules that import them)."""
    return name in OURS or name == "triton_python_backend_utils" or name.split(".")[0] == "tensorrt_llm"


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    monkeypatch.syspath_prepend(str(FAKES))
    before = {name: module for name, module in sys.modules.items() if _faked(name)}
    for name in before:
        del sys.modules[name]
    yield SimpleNamespace(
        pb=importlib.import_module("triton_python_backend_utils"),
        trtllm=importlib.import_module("tensorrt_llm"),
        llm_module=importlib.import_module("tensorrt_llm.llmapi.llm"),
        gpu=importlib.import_module("navig.model_repository.vlm_trtllm"),
    )
    for name in [name for name in sys.modules if _faked(name)]:
        del sys.modules[name]
    sys.modules.update(before)


def model_args(folder: Path, params: dict[str, str], decoupled: bool = True) -> dict[str, str]:
    """What Triton passes `initialize`: the model's folder holds 1/weights (the LLM's `model`)."""
    (folder / "1" / "weights").mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "name": "vlm",
        "backend": "python",
        "max_batch_size": 8,
        "parameters": {key: {"string_value": value} for key, value in params.items()},
    }
    if decoupled:
        config["model_transaction_policy"] = {"decoupled": True}
    return {
        "model_config": json.dumps(config),
        "model_repository": str(folder),
        "model_version": "1",
        "model_name": "vlm",
        "model_instance_kind": "CPU",
    }


@pytest.fixture
def start(fakes: SimpleNamespace, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Initializes the gpu model (or `cls`) with these config parameters; finalizes it afterwards."""
    started: list[Any] = []

    def start(params: dict[str, str] | None = None, cls: Any = None, decoupled: bool = True) -> Any:
        model = (cls or fakes.gpu.TritonPythonModel)()
        model.initialize(model_args(tmp_path / "vlm", params or {}, decoupled))
        started.append(model)
        return model

    yield start
    for model in started:
        with contextlib.suppress(RuntimeError):  # already finalized by the test
            model.finalize()


def request(
    pb: ModuleType,
    prompt: str = "Where was this photo taken?",
    image: np.ndarray | None = None,
    max_tokens: int | None = None,
    json_schema: str | None = None,
    adapter: str | None = None,
) -> Any:
    """One request as Triton hands it over (batch dimension 1 in front: the config has max_batch_size)."""
    tensors = [pb.Tensor("prompt", np.array([[prompt.encode()]], dtype=np.object_))]
    if image is not None:
        tensors.append(pb.Tensor("image", image[None]))
    if max_tokens is not None:
        tensors.append(pb.Tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32)))
    if json_schema is not None:
        tensors.append(pb.Tensor("json_schema", np.array([[json_schema.encode()]], dtype=np.object_)))
    if adapter is not None:
        tensors.append(pb.Tensor("adapter", np.array([[adapter.encode()]], dtype=np.object_)))
    return pb.InferenceRequest(model_name="vlm", inputs=tensors)


def photo(height: int = 56, width: int = 84) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """A hang guard, not a speed check: fails only if `condition` stays false for a long time."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.005)


def answered(*requests: Any) -> None:
    for r in requests:
        assert r.get_response_sender().closed.wait(20), "no FINAL response"


def sent(r: Any) -> list[Any]:
    return list(r.get_response_sender().responses)


def text_of(pb: ModuleType, response: Any) -> str:
    return pb.get_output_tensor_by_name(response, "text").as_numpy().reshape(-1)[0].decode()


def ids_of(pb: ModuleType, response: Any) -> list[int]:
    tensor = pb.get_output_tensor_by_name(response, "token_ids").as_numpy()
    assert tensor.dtype == np.int32 and tensor.ndim == 2 and tensor.shape[0] == 1
    return tensor[0].tolist()


def error_of(r: Any) -> tuple[int, str]:
    """The single response of a request that failed: (code, message); FINAL, no outputs."""
    (only,) = sent(r)
    assert only.final and only.response.has_error(), only
    return only.response.error().code(), only.response.error().message()


def chat(prompt: str, image: bool) -> str:
    return f"<|im_start|>user\n{PLACEHOLDER if image else ''}{prompt}<|im_end|>\n<|im_start|>assistant\n"


# --- in-flight batching ------------------------------------------------------------------------------


def test_each_request_is_its_own_generate_async_and_they_generate_together(start, fakes):
    model = start()
    llm = model._llm
    llm.fake_paused.set()  # no token yet: shows both are in flight before either finishes
    requests = [request(fakes.pb, "first", max_tokens=8), request(fakes.pb, "second", photo(), 8)]

    assert model.execute(requests) is None  # decoupled: answers go through the response senders
    wait_until(lambda: len(llm.fake_requests) == 2, "both requests submitted")
    assert [event for event, _ in llm.fake_log] == ["submit", "submit"]
    assert not any(sent(r) for r in requests)
    llm.fake_paused.clear()
    answered(*requests)

    assert ("generate", None) not in llm.fake_log  # never the blocking batch call
    for r, submitted in zip(requests, llm.fake_requests, strict=True):
        (only,) = sent(r)
        expected = fakes.llm_module.fake_answer(submitted.inputs["prompt"], False)[:8]
        assert only.final and text_of(fakes.pb, only.response) == expected


# --- streaming and not -------------------------------------------------------------------------------


def test_streaming_sends_each_step_as_a_diff_and_exactly_one_final(start, fakes):
    model = start({"streaming": "true"})
    r = request(fakes.pb, "Where?", photo(), max_tokens=30)
    model.execute([r])
    answered(r)

    (submitted,) = model._llm.fake_requests
    assert submitted.streaming is True
    expected = fakes.llm_module.fake_answer(chat("Where?", image=True), False)[:30]
    responses = sent(r)
    assert [s.final for s in responses] == [False] * (len(responses) - 1) + [True]
    assert not any(s.response.has_error() for s in responses)
    assert len(responses) == 30  # one per decode step
    assert "".join(text_of(fakes.pb, s.response) for s in responses) == expected
    assert [t for s in responses for t in ids_of(fakes.pb, s.response)] == list(expected.encode())


def test_without_streaming_one_final_response_carries_the_whole_answer(start, fakes):
    model = start()
    r = request(fakes.pb, "Where?", max_tokens=30)
    model.execute([r])
    answered(r)

    (only,) = sent(r)
    expected = fakes.llm_module.fake_answer(chat("Where?", image=False), False)[:30]
    assert only.final and model._llm.fake_requests[0].streaming is False
    assert text_of(fakes.pb, only.response) == expected
    assert ids_of(fakes.pb, only.response) == list(expected.encode())


# --- what each generate_async gets -------------------------------------------------------------------


def test_prompt_image_and_sampling_params_follow_the_llm_api(start, fakes):
    model = start({"max_tokens": "17"})
    schema = json.dumps({"type": "object", "properties": {"country": {"type": "string"}}})
    image = photo()
    plain, constrained, empty = (
        request(fakes.pb, "Describe.", image),
        request(fakes.pb, "Answer in JSON.", max_tokens=5, json_schema=schema),
        request(fakes.pb, "Describe.", json_schema=""),  # "" = unconstrained (the orchestrator sends it)
    )
    model.execute([plain, constrained, empty])
    answered(plain, constrained, empty)

    assert model._llm.args.guided_decoding_backend == "xgrammar"
    first, second, third = model._llm.fake_requests
    assert first.inputs["prompt"] == chat("Describe.", image=True)  # the chat template is applied by us
    (pil,) = first.inputs["multi_modal_data"]["image"]
    assert pil.mode == "RGB" and np.array_equal(np.asarray(pil), image)
    assert second.inputs == {"prompt": chat("Answer in JSON.", image=False)}
    GuidedDecodingParams = fakes.trtllm.llmapi.GuidedDecodingParams
    assert first.sampling_params.max_tokens == 17 and second.sampling_params.max_tokens == 5
    assert first.sampling_params.guided_decoding is None and third.sampling_params.guided_decoding is None
    # xgrammar's grammar without free whitespace (TensorRT-LLM compiles `json=` with any_whitespace=True)
    compact = str(xgrammar.Grammar.from_json_schema(schema, any_whitespace=False))
    assert second.sampling_params.guided_decoding == GuidedDecodingParams(grammar=compact)
    assert compact != str(xgrammar.Grammar.from_json_schema(schema))
    for submitted in (first, second, third):
        assert submitted.sampling_params._greedy_decoding  # greedy, as on the cpu engine


def test_a_bad_row_fails_only_its_own_response(start, fakes):
    model = start({"llm_args": json.dumps({"max_num_tokens": 256})})
    pb, invalid = fakes.pb, fakes.pb.TritonError.INVALID_ARG
    good = request(pb, "Where?", photo(), max_tokens=10)
    bad = {
        "json_schema is not a usable JSON schema": request(pb, json_schema="{not json"),
        "json_schema is not a usable JSON schema: ": request(pb, json_schema='{"type": "no-such-type"}'),
        "should not exceed max_num_tokens (256)": request(pb, "Where?", photo(560, 560)),  # 400 image tokens
        "aspect ratio above 200": request(pb, "Where?", photo(28, 5_660)),
        "smaller than 28 px": request(pb, "Where?", photo(20, 84)),
        "max_tokens must be in 1..4096": request(pb, max_tokens=0),
    }
    model.execute([*bad.values(), good])
    answered(good, *bad.values())

    for message, r in bad.items():
        code, text = error_of(r)
        assert code == invalid and message in text, (message, text)
    (only,) = sent(good)
    assert only.final and not only.response.has_error() and len(ids_of(pb, only.response)) == 10


# --- cancellation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_a_cancelled_request_is_aborted_answered_cancelled_once_and_then_left_alone(start, fakes, streaming):
    model = start({"streaming": streaming, "cancellation_check_period_ms": "10"})
    llm, pb = model._llm, fakes.pb
    r, other = request(pb, "Where?", max_tokens=200), request(pb, "Other.", max_tokens=60)
    model.execute([r, other])
    if streaming == "true":
        wait_until(lambda: len(sent(r)) >= 2, "the first streamed pieces")
    else:
        wait_until(lambda: len(llm.fake_requests) == 2, "both requests submitted")
    llm.fake_paused.set()  # hold the generation: the CANCELLED answer must not wait for it
    r.cancel()
    answered(r)
    llm.fake_paused.clear()  # the aborted stream ends; the other request runs on
    answered(other)
    wait_until(lambda: any(CANCELLED.search(line) for _, line in pb.Logger.lines), "the cancellation log")

    *pieces, last = sent(r)
    assert last.final and last.response.error().code() == pb.TritonError.CANCELLED
    assert all(not p.final and not p.response.has_error() for p in pieces)
    assert (2 if streaming == "true" else 0) <= len(pieces) < 200
    assert ("abort", llm.fake_requests[0].request_id) in llm.fake_log
    ((model_name, tokens),) = [CANCELLED.search(line).groups() for _, line in pb.Logger.lines]
    assert model_name == "vlm" and len(pieces) <= int(tokens) < 200  # counted to the aborted end
    assert not [line for level, line in pb.Logger.lines if level == "ERROR"]  # nothing sent after FINAL
    assert sent(r)[-1] is last
    # the other request was not disturbed
    assert sent(other)[-1].final and not any(s.response.has_error() for s in sent(other))
    assert sum(len(ids_of(pb, s.response)) for s in sent(other)) == 60


# --- lifecycle ---------------------------------------------------------------------------------------


def test_unload_answers_open_requests_aborts_them_and_shuts_the_llm_down(start, fakes):
    model = start({"streaming": "true"})
    llm, pb = model._llm, fakes.pb
    llm.fake_paused.set()
    requests = [request(pb, "a"), request(pb, "b")]
    model.execute(requests)
    wait_until(lambda: len(llm.fake_requests) == 2, "both requests submitted")

    model.finalize()

    for r in requests:
        code, message = error_of(r)
        assert code == pb.TritonError.UNAVAILABLE and "unloaded" in message
    assert {("abort", s.request_id) for s in llm.fake_requests} <= set(llm.fake_log)
    assert llm.fake_log[-1] == ("shutdown", None)
    assert not model._loop_thread.is_alive() and not model._poller.is_alive()
    with pytest.raises(RuntimeError, match="LLM is shutting down"):
        llm.generate_async("late")


def test_llm_arguments_come_from_the_model_config(start, fakes, tmp_path):
    llm_args = {
        "dtype": "bfloat16",
        "kv_cache_config": {"free_gpu_memory_fraction": 0.3, "max_tokens": 4096},
        "max_num_tokens": 4096,
        "max_batch_size": 8,
    }
    model = start({"llm_args": json.dumps(llm_args)})
    args = model._llm.args
    assert args.model == str(tmp_path / "vlm" / "1" / "weights")
    assert args.dtype == "bfloat16" and args.max_num_tokens == 4096 and args.max_batch_size == 8
    assert isinstance(args.kv_cache_config, fakes.trtllm.llmapi.KvCacheConfig)
    assert args.kv_cache_config.free_gpu_memory_fraction == 0.3 and args.kv_cache_config.max_tokens == 4096
    assert args.guided_decoding_backend == "xgrammar"


@pytest.mark.parametrize(
    ("llm_args", "message"),
    [
        ({"use_tqdm": False}, "LLM got invalid argument: use_tqdm"),  # only generate() has use_tqdm
        ({"enable_tqdm": False}, "specific to TensorRT backend"),
        # checked before the LLM is built
        (
            {"kv_cache_config": {"free_gpu_memory_fractio": 0.3}},
            "(?s)not a KvCacheConfig.*free_gpu_memory_fractio",
        ),
        ({"kv_cache_config": {"free_gpu_memory_fraction": 1.5}}, "between 0 and 1"),
        ({"model": "/somewhere/else"}, "must not set `model`"),
        ({"dtype": "float32"}, "dtype must be one of auto, bfloat16, float16"),
        ({"guided_decoding_backend": "outlines"}, "Invalid guided_decoding_backend"),
        ("{not json", "llm_args is not JSON"),
    ],
)
def test_a_config_the_llm_api_refuses_fails_initialize_with_its_message(start, llm_args, message):
    text = llm_args if isinstance(llm_args, str) else json.dumps(llm_args)
    with pytest.raises((ValueError, RuntimeError), match=message):
        start({"llm_args": text})


def test_a_model_config_without_decoupled_is_refused(start):
    with pytest.raises(ValueError, match=r"model_transaction_policy \{ decoupled: true \}"):
        start(decoupled=False)


def test_without_tensorrt_llm_initialize_says_where_the_gpu_profile_runs(start, fakes, monkeypatch):
    for name in [name for name in sys.modules if name.startswith("tensorrt_llm.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # not importable, as on this machine
    with pytest.raises(fakes.gpu.GpuStackMissing, match="trtllm-python-py3"):
        start()


def test_the_shared_vlm_model_hands_an_engine_tensorrt_llm_config_to_this_model(start, fakes):
    vlm_model = importlib.import_module("navig.model_repository.vlm_model")
    model = start({"engine": "tensorrt_llm", "max_tokens": "12"}, cls=vlm_model.TritonPythonModel)
    gpu = model.execute.__self__
    assert isinstance(gpu, fakes.gpu.TritonPythonModel)
    r = request(fakes.pb)
    assert model.execute([r]) is None
    answered(r)
    assert len(ids_of(fakes.pb, sent(r)[0].response)) == 12
    model.finalize()
    assert gpu._llm.fake_log[-1] == ("shutdown", None)


# --- one base, LoRA adapters (export `vlm.reasoner: adapter`) ------------------------------------------


def peft_adapter(folder: Path, modules: tuple[str, ...] = ("q_proj", "down_proj"), r: int = 8) -> Path:
    """A peft LoRA folder as `vlm.reasoner: adapter` exports it into <version>/adapters/<name>."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 32}))
    prefix = "base_model.model.model.language_model.layers.0"
    weights = {f"{prefix}.{m}.lora_{ab}.weight": np.zeros((r, 4), np.float32) for m in modules for ab in "AB"}
    save_file(weights, str(folder / "adapter_model.safetensors"))
    return folder


def test_adapters_are_tensorrt_llm_runtime_lora_and_each_row_names_its_own(start, fakes, tmp_path):
    folder = peft_adapter(tmp_path / "vlm" / "1" / "adapters" / "reasoner")
    model = start({"adapters": "reasoner"})
    config = model._llm.args.lora_config
    assert isinstance(config, importlib.import_module("tensorrt_llm.lora_helper").LoraConfig)
    assert config.lora_dir == [str(folder)] and config.max_lora_rank == 8
    assert config.lora_target_modules == ["attn_q", "mlp_4h_to_h"]
    assert config.max_loras == config.max_cpu_loras == 1
    rows = [
        request(fakes.pb, "Where?", adapter="reasoner"),
        request(fakes.pb, "Where?", adapter=""),  # "" = the base (the orchestrator sends it)
        request(fakes.pb, "Where?"),
    ]
    model.execute(rows)
    answered(*rows)
    lora, base, plain = model._llm.fake_requests
    assert lora.lora_request == fakes.trtllm.llmapi.LoRARequest("reasoner", 1, str(folder))
    assert base.lora_request is None and plain.lora_request is None
    texts = [text_of(fakes.pb, sent(r)[0].response) for r in rows]
    assert texts[0] != texts[1] == texts[2]  # the adapter changes the answer, the base rows agree


def test_an_unknown_adapter_fails_its_row_with_invalid_argument(start, fakes, tmp_path):
    peft_adapter(tmp_path / "vlm" / "1" / "adapters" / "reasoner")
    model = start({"adapters": "reasoner"})
    bad, good = request(fakes.pb, adapter="tourist"), request(fakes.pb, adapter="reasoner")
    model.execute([bad, good])
    answered(bad, good)
    code, message = error_of(bad)
    assert code == fakes.pb.TritonError.INVALID_ARG and "unknown adapter 'tourist'" in message
    assert not sent(good)[-1].response.has_error()


def test_a_model_without_adapters_refuses_an_adapter_row(start, fakes):
    model = start()
    r = request(fakes.pb, adapter="reasoner")
    model.execute([r])
    answered(r)
    code, message = error_of(r)
    assert code == fakes.pb.TritonError.INVALID_ARG and "serves no adapters" in message
    assert not model._llm.fake_requests


@pytest.mark.parametrize(
    ("adapters", "llm_args", "message"),
    [
        ("reasoner", {"lora_config": {}}, "must not set `lora_config`"),
        ("missing", {}, "holds no peft adapter"),
    ],
)
def test_adapter_configs_that_cannot_work_fail_initialize(start, tmp_path, adapters, llm_args, message):
    peft_adapter(tmp_path / "vlm" / "1" / "adapters" / "reasoner")
    with pytest.raises(ValueError, match=message):
        start({"adapters": adapters, "llm_args": json.dumps(llm_args)})


def test_an_adapter_on_modules_tensorrt_llm_cannot_serve_fails_initialize(start, tmp_path):
    peft_adapter(tmp_path / "vlm" / "1" / "adapters" / "reasoner", modules=("qkv",))
    with pytest.raises(ValueError, match="no module for qkv"):
        start({"adapters": "reasoner"})


# --- the fake holds the API rules it stands for ------------------------------------------------------


def test_the_fake_refuses_what_tensorrt_llm_1_2_1_refuses(fakes, tmp_path):
    llmapi = fakes.trtllm.llmapi
    assert fakes.trtllm.__version__ == "1.2.1"
    with pytest.raises(TypeError):
        llmapi.SamplingParams(32)  # keyword-only
    with pytest.raises(TypeError):
        llmapi.SamplingParams(max_tokens=8, use_tqdm=False)  # not a field
    with pytest.raises(ValueError, match="Only one guide"):
        llmapi.SamplingParams(guided_decoding=llmapi.GuidedDecodingParams(json="{}", regex="a"))
    with llmapi.LLM(str(tmp_path)) as llm:
        with pytest.raises(ValueError, match="lora_request"):
            llm.generate_async("hi", llmapi.SamplingParams(), True)  # `streaming` positionally
        result = llm.generate_async("hi", sampling_params=llmapi.SamplingParams(max_tokens=3), streaming=True)

        async def read() -> None:
            async for _ in result:
                pass

        with pytest.raises(AssertionError, match="event loop was not present during initialization"):
            asyncio.run(read())  # created outside a loop: sync API only
        assert [step.outputs[0].text_diff for step in result] == ["a", "n", "s"]
