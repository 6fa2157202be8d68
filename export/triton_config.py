"""Model configs for a profile: the source tree's config.pbtxt, made concrete and checked.

Configs are handled as Triton's own ModelConfig protobuf (from tritonclient), so whatever is
written parses with the schema Triton uses. ONNX models get their inputs/outputs from the
exported graph (names, dtypes, shapes cannot drift from the artifact). The gpu profile moves
encoders to the onnxruntime backend (TensorRT accelerator: engine cache, optimisation profiles from
the plans' shape table) or to TensorRT plans, and VLMs to TensorRT-LLM's LLM API the way NVIDIA's
llmapi model is configured (python backend, decoupled, one KIND_CPU instance: the LLM owns the GPU
and batches in flight, so Triton does not batch). Written against the sources cited in
docs/gpu-stack-notes.md; not run on a GPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from navig.export import gpu_recipes
from navig.export.containers import MODELS_MOUNT
from navig.export.repository import MODEL_SOURCES
from navig.model_repository import contract

Profile = Literal["cpu", "gpu"]
ONNX_MODELS = (
    contract.OCR_DET,
    contract.OCR_REC,
    *contract.DETECTORS,
    contract.CLIP_IMAGE,
    contract.CLIP_TEXT,
)
ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
    onnx.TensorProto.BOOL: mc.TYPE_BOOL,
}


@dataclass(frozen=True)
class LlmOptions:
    """One VLM's TensorRT-LLM `LLM(...)` arguments: the model's `llm_args` parameter (JSON).

    Both VLMs share one GPU with the encoders. `kv_cache_fraction` is TensorRT-LLM's
    `KvCacheConfig.free_gpu_memory_fraction`: a fraction of the memory that is FREE when that LLM is
    created (after its weights are loaded), not of the GPU. So the LLM created second gets its
    fraction of what the first left, and whatever starts after both gets what is left then; with
    0.35 each, the two KV caches take at most 0.35 + 0.35 * 0.65 = 0.58 of the free memory the
    first LLM saw. `kv_cache_max_tokens` (`KvCacheConfig.max_tokens`) is a fixed cap independent of
    start order; with both set the smaller wins (TensorRT-LLM's rule), so set it to size the
    caches deterministically."""

    dtype: str = "bfloat16"  # the dtype the weights were saved in (TensorRT-LLM's `dtype`)
    kv_cache_fraction: float = 0.35
    kv_cache_max_tokens: int | None = None
    max_num_tokens: int = 8192  # TensorRT-LLM's default; one prompt (image tokens included) must fit
    max_batch_size: int = 8  # requests in flight at once

    def llm_args(self) -> dict[str, object]:
        kv_cache: dict[str, object] = {"free_gpu_memory_fraction": self.kv_cache_fraction}
        if self.kv_cache_max_tokens is not None:
            kv_cache["max_tokens"] = self.kv_cache_max_tokens
        return {
            "dtype": self.dtype,
            "kv_cache_config": kv_cache,
            "max_num_tokens": self.max_num_tokens,
            "max_batch_size": self.max_batch_size,
            "guided_decoding_backend": "xgrammar",
        }


@dataclass(frozen=True)
class GpuOptions:
    """How the gpu profile serves encoders and VLMs."""

    encoders: Literal["tensorrt", "plan"] = "tensorrt"  # ORT + TensorRT accelerator, or trtexec plans
    # The ORT TensorRT accelerator's `precision_mode`. FP32 by default: the ONNX files are fp32, plans
    # are built at the ONNX's precision (`trtexec --stronglyTyped`), and on TensorRT 11 (probably the
    # one in the 26.07 `-py3` image) FP16 maps to a weak-typing builder flag TensorRT 11 removed:
    # unverified what ONNX Runtime does then. FP16 is for a `-py3` image with TensorRT 10.
    precision: Literal["FP16", "FP32"] = "FP32"
    workspace_bytes: int = 1 << 30
    llm: Mapping[str, LlmOptions] = field(default_factory=dict)  # per VLM; absent: LlmOptions()


# Keys written into the ORT TensorRT accelerator: each is one the onnxruntime backend accepts
# (docs/gpu-stack-notes.md section 5; any other key fails the model load).
TRT_PROFILE_KEYS = ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")
# The cpu engine's knobs in the VLM configs: the TensorRT-LLM model has no use for them.
TRANSFORMERS_KNOBS = ("max_padding", "threads", "vision_cache_mb")


def trt_cache_path(name: str) -> str:
    """The ORT TensorRT engine cache as the `-py3` container sees it: inside the model's folder, which
    the generated README mounts read-write at MODELS_MOUNT, so engines are built once per GPU and
    kept across restarts."""
    return f"{MODELS_MOUNT}/{name}/trt_cache"


# ONNX Runtime session settings of the cpu profile's python-backend runner (onnx_runner.py).
PYTHON_BACKEND_KNOBS = ("intra_op_threads", "allow_spinning")


def source_config(name: str) -> tuple[str, mc.ModelConfig]:
    """The model's config.pbtxt in the source tree: its leading comment block and the message."""
    text = (MODEL_SOURCES / name / "config.pbtxt").read_text()
    lines = text.splitlines()
    comments = lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    return "".join(line + "\n" for line in comments), text_format.Parse(text, mc.ModelConfig())


def io_from_onnx(config: mc.ModelConfig, onnx_file: Path) -> None:
    """Declares the graph's own inputs/outputs, without the batch dimension Triton adds."""
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    del config.input[:]
    del config.output[:]
    for values, target in ((graph.input, config.input), (graph.output, config.output)):
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            target.add(name=value.name, data_type=ONNX_TO_TRITON[tensor.elem_type], dims=dims[1:])


def to_gpu(name: str, config: mc.ModelConfig, options: GpuOptions) -> mc.ModelConfig:
    gpu = mc.ModelConfig()
    gpu.CopyFrom(config)
    del gpu.instance_group[:]
    if name in ONNX_MODELS:
        for knob in PYTHON_BACKEND_KNOBS:  # the ORT backend has its own
            if knob in gpu.parameters:
                del gpu.parameters[knob]
        gpu.ClearField("backend")
        if options.encoders == "plan":
            gpu.platform = "tensorrt_plan"
            gpu.default_model_filename = "model.plan"
        else:
            gpu.backend = "onnxruntime"
            gpu.default_model_filename = "model.onnx"
            accelerator = gpu.optimization.execution_accelerators.gpu_execution_accelerator.add(
                name="tensorrt"
            )
            accelerator.parameters["precision_mode"] = options.precision
            accelerator.parameters["max_workspace_size_bytes"] = str(options.workspace_bytes)
            accelerator.parameters["trt_engine_cache_enable"] = "1"
            accelerator.parameters["trt_engine_cache_path"] = trt_cache_path(name)
            for k, key in enumerate(TRT_PROFILE_KEYS):  # min, opt, max: the plans' shapes
                accelerator.parameters[key] = gpu_recipes.profile_shapes(name, k)
        gpu.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU)
        add_warmup(name, gpu)
    elif name in contract.VLM_MODELS:
        to_llm_api(gpu, options.llm.get(name, LlmOptions()))
    else:  # python pre/post-processing (ocr): stays on CPU, more instances to feed the GPU models
        gpu.instance_group.add(count=4, kind=mc.ModelInstanceGroup.KIND_CPU)
    return gpu


def to_llm_api(config: mc.ModelConfig, llm: LlmOptions) -> None:
    """NVIDIA's llmapi model layout (tensorrtllm_backend `all_models/llmapi`): python backend, one
    KIND_CPU instance (the LLM places itself on the GPU), decoupled (set here, not in
    `auto_complete_config`, which `--disable-auto-complete-config` skips), no Triton batching
    (`max_batch_size: 0`): one `generate_async` per request and TensorRT-LLM batches in flight.
    Without Triton's batch dimension every tensor states its leading 1, so callers send the same
    [1, ...] shapes as to the cpu profile's batched model. `streaming`: one response per new piece of
    text (the orchestrator's `stream_infer` joins them; `navig gpu-check run` expects it)."""
    config.max_batch_size = 0
    config.ClearField("dynamic_batching")
    for tensor in [*config.input, *config.output]:
        tensor.dims.insert(0, 1)
    for tensor in config.input:
        tensor.allow_ragged_batch = False  # a batching notion; there is no Triton batch here
    config.model_transaction_policy.decoupled = True
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for knob in TRANSFORMERS_KNOBS:
        if knob in config.parameters:
            del config.parameters[knob]
    config.parameters["engine"].string_value = "tensorrt_llm"
    config.parameters["llm_args"].string_value = json.dumps(llm.llm_args(), sort_keys=True)
    config.parameters["streaming"].string_value = "true"


# Shapes for the dynamic dims of each input at warm-up: TensorRT builds its engines while the
# model loads instead of on the first request (minutes for the detector).
WARMUP_SIZE = {"images": (480, 640), "crops": (320,), "input_ids": (16,), "attention_mask": (16,)}


def add_warmup(name: str, config: mc.ModelConfig) -> None:
    warmup = config.model_warmup.add(name=f"{name}_warmup", batch_size=1)
    for tensor in config.input:
        sizes = iter(WARMUP_SIZE.get(tensor.name, ()))
        dims = [d if d > 0 else next(sizes, 64) for d in tensor.dims]
        warmup.inputs[tensor.name].data_type = tensor.data_type
        warmup.inputs[tensor.name].dims.extend(dims)
        warmup.inputs[tensor.name].zero_data = True


def set_streaming(config: mc.ModelConfig, stream: bool) -> None:
    if stream:
        config.model_transaction_policy.decoupled = True
    else:
        config.ClearField("model_transaction_policy")


def write_config(path: Path, header: str, config: mc.ModelConfig, profile: Profile) -> None:
    body = text_format.MessageToString(config)
    path.write_text(f"{header}# Generated by `navig export` for the {profile} profile.\n{body}")
