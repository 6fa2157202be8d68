"""Model configs for a profile: the source tree's config.pbtxt, made concrete and checked.

Configs are handled as Triton's own ModelConfig protobuf (from tritonclient), so whatever is
written parses with the schema Triton uses. ONNX models get their inputs/outputs from the
exported graph (names, dtypes, shapes cannot drift from the artifact). The gpu profile moves
encoders to the onnxruntime backend (TensorRT accelerator + engine cache) or to TensorRT plans,
and VLMs to TensorRT-LLM's LLM API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from navig.export.repository import MODEL_SOURCES
from navig.model_repository import contract

Profile = Literal["cpu", "gpu"]
ONNX_MODELS = (contract.OCR_DET, contract.OCR_REC, contract.DETECTOR, contract.CLIP_IMAGE, contract.CLIP_TEXT)
ONNX_TO_TRITON = {
    onnx.TensorProto.FLOAT: mc.TYPE_FP32,
    onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
    onnx.TensorProto.UINT8: mc.TYPE_UINT8,
    onnx.TensorProto.INT32: mc.TYPE_INT32,
    onnx.TensorProto.INT64: mc.TYPE_INT64,
    onnx.TensorProto.BOOL: mc.TYPE_BOOL,
}


@dataclass(frozen=True)
class GpuOptions:
    """How the gpu profile serves encoders and VLMs."""

    encoders: Literal["tensorrt", "plan"] = "tensorrt"  # ORT + TensorRT accelerator, or trtexec plans
    precision: Literal["FP16", "FP32"] = "FP16"
    trt_cache: str = "/opt/navig/trt_cache"  # engine cache, so engines are built once per GPU
    workspace_bytes: int = 1 << 30


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
            accelerator.parameters["trt_engine_cache_path"] = f"{options.trt_cache}/{name}"
        gpu.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_GPU)
        add_warmup(name, gpu)
    elif name in contract.VLM_MODELS:
        gpu.parameters["engine"].string_value = "tensorrt_llm"
        # The LLM API places the model on its GPU(s) itself.
        gpu.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_MODEL)
    else:  # python pre/post-processing (ocr): stays on CPU, more instances to feed the GPU models
        gpu.instance_group.add(count=4, kind=mc.ModelInstanceGroup.KIND_CPU)
    return gpu


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
