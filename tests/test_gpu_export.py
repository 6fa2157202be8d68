"""The gpu profile's configs and deployment files, checked as text against the sources we pin.

Contract checks, not a GPU run: nothing here (nor anywhere in this project) has run the gpu profile
on a GPU. Fast: source configs and written files only, no checkpoint export.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from navig.export import containers, gpu_deployment
from navig.export.build import served_dtype
from navig.export.errors import ExportError
from navig.export.gpu_recipes import PLAN_SHAPES, trtexec_command
from navig.export.spec import ExportSpec
from navig.export.triton_config import (
    ONNX_MODELS,
    TRT_PROFILE_KEYS,
    GpuOptions,
    LlmOptions,
    source_config,
    to_gpu,
    trt_cache_path,
    write_config,
)
from navig.model_repository import contract
from navig.orchestrator.triton_client import vlm_inputs

# The keys the onnxruntime backend accepts for its TensorRT execution accelerator; any other key fails
# the model load ("unknown parameter '<k>' is provided for TensorRT Execution Accelerator").
# triton-inference-server/onnxruntime_backend src/onnxruntime.cc @ 00fd3e87a0918193d7921871f2e872efdb8d9c9a
# l.479-711 (the same parser on r26.06), as read in docs/gpu-stack-notes.md section 5.
ORT_TRT_ACCEPTED_KEYS = {
    "precision_mode",
    "max_workspace_size_bytes",
    "trt_max_partition_iterations",
    "trt_min_subgraph_size",
    "int8_calibration_table_name",
    "int8_use_native_calibration_table",
    "trt_dla_enable",
    "trt_dla_core",
    "trt_engine_cache_enable",
    "trt_engine_cache_path",
    "trt_engine_cache_prefix",
    "trt_dump_subgraphs",
    "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable",
    "trt_timing_cache_path",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_build_heuristics_enable",
    "trt_sparsity_enable",
    "trt_builder_optimization_level",
    "trt_auxiliary_streams",
    "trt_tactic_sources",
    "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes",
    "trt_profile_max_shapes",
    "trt_profile_opt_shapes",
    "trt_cuda_graph_enable",
    "trt_dump_ep_context_model",
    "trt_ep_context_file_path",
    "trt_ep_context_embed_mode",
}
# TensorRT-LLM 1.2.1 `LLM(...)` keyword arguments we write (TorchLlmArgs fields; an unknown one raises
# ValueError "got invalid argument") and KvCacheConfig fields (extra fields forbidden); research notes
# section 1.2/1.3. `use_tqdm` and `enable_tqdm` are NOT among them: either fails the model load.
LLM_ARGS = {"dtype", "kv_cache_config", "max_num_tokens", "max_batch_size", "guided_decoding_backend"}
KV_CACHE_FIELDS = {"free_gpu_memory_fraction", "max_tokens"}
ALL_MODELS = contract.MODELS  # what the default export spec writes


def written(tmp_path: Path, name: str, options: GpuOptions) -> mc.ModelConfig:
    """The source config through to_gpu, written as navig export writes it and parsed back."""
    header, config = source_config(name)
    path = tmp_path / f"{name}.pbtxt"
    write_config(path, header, to_gpu(name, config, options), "gpu")
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def shapes(value: str) -> dict[str, tuple[int, ...]]:
    """`name:1x2x3,name2:...` back to a dict."""
    pairs = (part.split(":") for part in value.split(","))
    return {name: tuple(int(d) for d in dims.split("x")) for name, dims in pairs}


def test_pools_split_every_model_once():
    pooled = [m for pool in containers.POOLS for m in pool.models]
    assert sorted(pooled) == sorted(ALL_MODELS)
    assert set(containers.VLMS.models) == set(contract.VLM_MODELS)
    ports = [p for pool in containers.POOLS for p in (pool.http_port, pool.grpc_port, pool.metrics_port)]
    assert len(set(ports)) == len(ports), "two servers on one host need distinct ports"


@pytest.mark.parametrize("model", ONNX_MODELS)
def test_ort_tensorrt_accelerator_keys_are_accepted_and_shapes_are_the_plans(tmp_path: Path, model: str):
    config = written(tmp_path, model, GpuOptions(encoders="tensorrt"))
    assert config.backend == "onnxruntime" and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    parameters = dict(accelerator.parameters)
    assert set(parameters) <= ORT_TRT_ACCEPTED_KEYS
    for k, key in enumerate(TRT_PROFILE_KEYS):
        assert shapes(parameters[key]) == {name: s[k] for name, s in PLAN_SHAPES[model].items()}
    assert parameters["trt_engine_cache_enable"] == "1"
    assert parameters["trt_engine_cache_path"] == trt_cache_path(model) == f"/models/{model}/trt_cache"
    assert parameters["precision_mode"] == GpuOptions.precision == "FP32"
    assert not {"intra_op_threads", "allow_spinning"} & set(config.parameters)
    assert config.model_warmup, "engines are built while loading, not on the first request"


def test_detector_profile_reaches_the_size_photos_are_downscaled_to():
    (images,) = PLAN_SHAPES[contract.DETECTOR].values()
    assert images[2][1:3] == (contract.DETECTOR_MAX_SIDE, contract.DETECTOR_MAX_SIDE)


@pytest.mark.parametrize("model", ONNX_MODELS)
def test_plan_configs(tmp_path: Path, model: str):
    config = written(tmp_path, model, GpuOptions(encoders="plan"))
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert not config.backend and not config.optimization.execution_accelerators.gpu_execution_accelerator


@pytest.mark.parametrize("model", ONNX_MODELS)
def test_trtexec_runs_on_tensorrt_10_and_11(model: str):
    command = trtexec_command(model, "/models", 1024)
    assert command[0] == "trtexec" and "--stronglyTyped" in command
    # precision flags are deprecated in TensorRT 10.12 and unknown options in 11 (the run fails)
    assert not {"--fp16", "--bf16", "--int8", "--fp8", "--int4", "--best"} & set(command)
    args = dict(arg.split("=", 1) for arg in command[1:] if "=" in arg)
    assert args["--onnx"] == f"/models/{model}/1/model.onnx"
    assert args["--saveEngine"] == f"/models/{model}/1/model.plan"
    for k, flag in enumerate(("--minShapes", "--optShapes", "--maxShapes")):
        assert shapes(args[flag]) == {name: s[k] for name, s in PLAN_SHAPES[model].items()}
    assert args["--memPoolSize"] == "workspace:1024"


@pytest.mark.parametrize("model", contract.VLM_MODELS)
def test_vlm_configs_follow_nvidias_llmapi_model(tmp_path: Path, model: str):
    llm = LlmOptions(dtype="float16", kv_cache_fraction=0.3, kv_cache_max_tokens=4096, max_batch_size=4)
    config = written(tmp_path, model, GpuOptions(llm={model: llm}))
    assert config.backend == "python" and config.model_transaction_policy.decoupled
    (group,) = config.instance_group
    assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 1
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    cpu = source_config(model)[1]
    for gpu_tensor, cpu_tensor in zip(
        [*config.input, *config.output], [*cpu.input, *cpu.output], strict=True
    ):
        # callers send [1, ...] to both: cpu adds Triton's batch dimension, gpu states it
        assert list(gpu_tensor.dims) == [1, *cpu_tensor.dims] and gpu_tensor.data_type == cpu_tensor.data_type
    assert not any(i.allow_ragged_batch for i in config.input)
    parameters = {k: v.string_value for k, v in config.parameters.items()}
    assert set(parameters) == {"engine", "weights", "max_tokens", "llm_args", "streaming"}
    assert parameters["streaming"] == "true"  # what `navig gpu-check run` expects
    assert parameters["engine"] == "tensorrt_llm" and parameters["weights"] == "weights"
    args = json.loads(parameters["llm_args"])
    assert set(args) == LLM_ARGS and set(args["kv_cache_config"]) <= KV_CACHE_FIELDS
    assert args == {
        "dtype": "float16",
        "kv_cache_config": {"free_gpu_memory_fraction": 0.3, "max_tokens": 4096},
        "max_num_tokens": 8192,
        "max_batch_size": 4,
        "guided_decoding_backend": "xgrammar",
    }
    assert "tqdm" not in (tmp_path / f"{model}.pbtxt").read_text()


def test_spec_llm_options_reach_llm_args():
    spec = ExportSpec.model_validate(
        {
            "profile": "gpu",
            "vlm": {"base": "x", "max_batch": 6},
            "gpu": {"reasoner": {"kv_cache_fraction": 0.2, "kv_cache_max_tokens": 2048}},
        }
    )
    options = spec.gpu.options(spec.vlm, "bfloat16")
    reasoner, vlm = options.llm[contract.REASONER].llm_args(), options.llm[contract.VLM].llm_args()
    assert reasoner["kv_cache_config"] == {"free_gpu_memory_fraction": 0.2, "max_tokens": 2048}
    assert vlm["kv_cache_config"] == {"free_gpu_memory_fraction": LlmOptions.kv_cache_fraction}
    assert reasoner["max_batch_size"] == vlm["max_batch_size"] == 6  # vlm.max_batch unless set
    assert reasoner["dtype"] == vlm["dtype"] == "bfloat16"
    # defaults leave the encoders room on the shared GPU (each fraction is of the memory free then)
    default = ExportSpec.model_validate({"vlm": {"base": "x"}}).gpu
    assert default.reasoner.kv_cache_fraction + default.vlm.kv_cache_fraction <= 0.7


def fake_checkpoint(folder: Path, dtype: str | None) -> Path:
    """What served_dtype reads: config.json (+ a weights file so the folder passes the checks)."""
    folder.mkdir()
    config = {"model_type": "qwen2_vl", **({"dtype": dtype} if dtype else {})}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    ("checkpoint", "requested", "profile", "expected"),
    [
        ("float32", "auto", "cpu", "float32"),  # the tiny demo checkpoints
        ("float32", "auto", "gpu", "bfloat16"),  # TensorRT-LLM's vision tower has no float32
        ("bfloat16", "auto", "cpu", "bfloat16"),  # Qwen2-VL releases
        ("bfloat16", "auto", "gpu", "bfloat16"),
        ("float16", "auto", "gpu", "float16"),
        (None, "auto", "cpu", "float32"),  # no dtype stated: from_pretrained's float32
        ("bfloat16", "float16", "gpu", "float16"),
        ("bfloat16", "float32", "cpu", "float32"),
    ],
)
def test_served_dtype(tmp_path: Path, checkpoint, requested, profile, expected):
    base = fake_checkpoint(tmp_path / "base", checkpoint)
    spec = ExportSpec.model_validate({"profile": profile, "vlm": {"base": base, "dtype": requested}})
    assert served_dtype(spec) == expected
    options = spec.gpu.options(spec.vlm, served_dtype(spec))
    assert {llm.dtype for llm in options.llm.values()} == {expected}


def test_float32_is_refused_for_the_gpu_profile(tmp_path: Path):
    base = fake_checkpoint(tmp_path / "base", "bfloat16")
    spec = ExportSpec.model_validate({"profile": "gpu", "vlm": {"base": base, "dtype": "float32"}})
    with pytest.raises(ExportError, match="float32 cannot be served by the gpu profile"):
        served_dtype(spec)


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    options = GpuOptions(encoders="plan", llm={contract.VLM: LlmOptions(kv_cache_max_tokens=1024)})
    gpu_deployment.write_deployment(tmp_path, list(ALL_MODELS), options, "9.9.9")
    return tmp_path


def test_readme_pins_images_from_one_module_and_labels_not_run(deployment: Path):
    readme = (deployment / gpu_deployment.README).read_text()
    images = set(re.findall(r"nvcr\.io/nvidia/[\w./-]+:[\w.-]+", readme))
    assert images == {containers.ENCODERS_IMAGE, containers.VLMS_IMAGE, containers.TENSORRT_IMAGE}
    assert containers.TRITON_RELEASE == "26.07" and containers.TENSORRT_LLM_VERSION == "1.2.1"
    assert f"TensorRT-LLM {containers.TENSORRT_LLM_VERSION}" in readme
    assert readme.count("not run on a GPU") >= 5
    assert "--fp16" in readme and "--stronglyTyped" in readme  # says why there is no --fp16
    assert "fp16 ONNX" in readme
    assert "trtllm-build" not in readme and "engine_dir" not in readme


def docker_commands(readme: str) -> list[list[str]]:
    """Every `docker run` in the README's code blocks, as words (continuations joined)."""
    text = readme.replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if line.startswith("docker run")]


def navig_commands(readme: str) -> dict[tuple[str, ...], dict[str, str]]:
    """Every `navig ...` line of the README: its sub-command path -> its options."""
    text = readme.replace("\\\n", " ")
    commands = {}
    for line in text.splitlines():
        if line.startswith("navig "):
            words = shlex.split(line.split("  #")[0])[1:]
            path = tuple(w for w in words[: next(i for i, w in enumerate(words) if w.startswith("-"))])
            options = words[len(path) :]
            commands[path] = dict(zip(options[::2], options[1::2], strict=True))
    return commands


def test_readme_navig_commands_exist_with_those_options(deployment: Path):
    """The README's navig commands against the real CLI: a renamed option fails here, not on the GPU host."""
    import typer

    from navig.client.cli import app

    commands = navig_commands((deployment / gpu_deployment.README).read_text())
    assert {("export", "build", "SPEC"), ("gpu-check", "record"), ("gpu-check", "run"), ("serve",)} <= set(
        commands
    )
    root = typer.main.get_command(app)
    for path, options in commands.items():
        command = root
        for name in (w for w in path if w != "SPEC"):
            command = command.commands[name]
        known = {opt for param in command.params for opt in param.opts}
        assert set(options) <= known, (path, set(options) - known)
    assert commands[("gpu-check", "run")]["--reference"] == commands[("gpu-check", "record")]["--reference"]
    assert commands[("serve",)]["--config"] == f"$NAVIG_GPU/{gpu_deployment.SETTINGS}"


def test_readme_launch_commands_are_consistent(deployment: Path):
    readme = (deployment / gpu_deployment.README).read_text()
    runs = {words[words.index("--name") + 1]: words for words in docker_commands(readme) if "--name" in words}
    assert set(runs) == {"navig-encoders", "navig-vlms"}
    for pool in containers.POOLS:
        words = runs[f"navig-{pool.folder}"]
        image = words.index(pool.image)
        assert words[image + 1 : image + 3] == ["bash", "-c"]
        script = words[image + 3]
        assert f"--model-repository={containers.MODELS_MOUNT}" in script
        assert "--disable-auto-complete-config" in script
        for flag, port in (
            ("http", pool.http_port),
            ("grpc", pool.grpc_port),
            ("metrics", pool.metrics_port),
        ):
            assert f"--{flag}-port={port}" in script and f"{port}:{port}" in words
        assert "--no-deps /wheels/navig_serve-" in script
        assert f"$NAVIG_GPU/{pool.folder}:{containers.MODELS_MOUNT}" in words
        assert "--gpus" in words and any(w.startswith("--shm-size=") for w in words)
        for package in pool.extra_packages:
            assert f'"{package}"' in script
    assert containers.ENCODERS.extra_packages == ("rapidocr>=3.4,<4", "opencv-python-headless>=4.8")
    assert "--model-load-thread-count=1" in runs["navig-vlms"][-1]
    gpu_check = navig_commands(readme)[("gpu-check", "run")]
    assert gpu_check["--encoders-url"] == f"127.0.0.1:{containers.ENCODERS.grpc_port}"
    assert gpu_check["--vlms-url"] == f"127.0.0.1:{containers.VLMS.grpc_port}"
    plans = [w for w in docker_commands(readme) if containers.TENSORRT_IMAGE in w]
    assert plans and "/build_plans.sh" in plans[0]


def test_plan_script_builds_every_encoder(deployment: Path):
    script = (deployment / gpu_deployment.PLAN_SCRIPT).read_text()
    commands = [shlex.split(line) for line in script.splitlines() if line.startswith("trtexec")]
    assert commands == [trtexec_command(m, "/models", 1024) for m in ALL_MODELS if m in ONNX_MODELS]
    assert containers.TENSORRT_IMAGE in script and "not run on a GPU" in script


def test_settings_route_vlms_to_their_server(deployment: Path):
    settings = yaml.safe_load((deployment / gpu_deployment.SETTINGS).read_text())
    assert settings == {
        "triton_url": f"127.0.0.1:{containers.ENCODERS.grpc_port}",
        "triton_routes": {m: f"127.0.0.1:{containers.VLMS.grpc_port}" for m in contract.VLM_MODELS},
    }
    from navig.orchestrator.settings import load_settings

    loaded = load_settings(deployment / gpu_deployment.SETTINGS)
    assert loaded.triton_url == settings["triton_url"] and loaded.triton_routes == settings["triton_routes"]


def test_readme_states_the_llm_budget(deployment: Path):
    readme = (deployment / gpu_deployment.README).read_text()
    assert "| vlm | bfloat16 | 0.35 | 1024 | 8192 | 8 |" in readme
    assert "| reasoner | bfloat16 | 0.35 | - | 8192 | 8 |" in readme
    assert "free" in readme and "kv_cache_max_tokens" in readme


@pytest.mark.parametrize("model", contract.VLM_MODELS)
def test_the_orchestrators_vlm_tensors_fit_both_profiles_configs(tmp_path: Path, model: str):
    """What `TritonModels.generate` (and `navig gpu-check`) send, against each profile's stated dims."""
    sent = vlm_inputs("prompt", np.zeros((32, 48, 3), np.uint8), 8, "{}")

    def fits(shape: tuple[int, ...], dims: list[int]) -> bool:
        return len(shape) == len(dims) and all(d in (-1, s) for s, d in zip(shape, dims))

    gpu = written(tmp_path, model, GpuOptions())
    cpu = source_config(model)[1]
    assert cpu.max_batch_size >= 1 and gpu.max_batch_size == 0
    for name, array in sent.items():
        assert fits(array.shape, list(next(t for t in gpu.input if t.name == name).dims)), name
        batch, *rest = array.shape
        assert batch == 1 and fits(tuple(rest), list(next(t for t in cpu.input if t.name == name).dims)), name
