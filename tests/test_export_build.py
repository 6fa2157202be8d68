"""`navig export build`: the spec, the cpu/gpu model configs, the GPU recipes, the CLI."""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from rich.progress import Progress
from safetensors.torch import load_file
from tritonclient.grpc import model_config_pb2 as mc
from typer.testing import CliRunner

from navig.export import containers, gpu_deployment
from navig.export.build import Step, build, plan, repository_for, reuse, run_steps, write_configs
from navig.export.cli import app as export_app
from navig.export.demo_checkpoints import SPEC_FILE, reused_demo_checkpoints
from navig.export.errors import CheckpointError, ExportError
from navig.export.fingerprint import export_fingerprint
from navig.export.gpu_recipes import PLAN_SHAPES
from navig.export.repository import REPORT_FILE
from navig.export.spec import ExportSpec, load_spec
from navig.export.triton_config import ONNX_MODELS
from navig.export.vlm import IDENTICAL_BYTES
from navig.model_repository import contract

ALL_MODELS = contract.MODELS  # what the default export spec writes


def parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def gpu_spec(demo_checkpoints: Path, output: Path, **gpu: object) -> ExportSpec:
    spec = load_spec(demo_checkpoints / SPEC_FILE)
    return spec.model_copy(
        update={"output": output, "profile": "gpu", "gpu": spec.gpu.model_copy(update=gpu)}
    )


def caller_shape(config: mc.ModelConfig, tensor) -> list[int]:
    """The shape a caller sends or receives: Triton's batch dimension of 1 in front when it batches."""
    return ([1] if config.max_batch_size > 0 else []) + list(tensor.dims)


@pytest.fixture(scope="module")
def gpu_repository(demo_checkpoints: Path, model_repository: Path, tmp_path_factory) -> Path:
    """The session's cpu export laid out for the gpu profile (plans): its artifacts copied into the two
    servers' repositories and `write_configs` run over them, the stage of `build` that writes the
    configs and deployment files. Only the VLM weights' dtype differs from a real gpu export (bfloat16
    there): `test_gpu_export_splits_the_repository_and_saves_bfloat16` runs one."""
    out = tmp_path_factory.mktemp("gpu_repository")
    spec = gpu_spec(demo_checkpoints, out, encoders="plan")
    for model in ALL_MODELS:
        shutil.copytree(model_repository / model, repository_for(spec, model) / model)
    (out / "notes.txt").write_text("\n".join(write_configs(spec, list(ALL_MODELS))))
    return out


def test_triton_loads_every_exported_model(triton):
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    for model in ALL_MODELS:
        assert client.is_model_ready(model), model


def test_cpu_configs_parse_and_match_the_contract(model_repository: Path):
    for model in ALL_MODELS:
        config = parse(model_repository / model / "config.pbtxt")
        assert config.name == model and config.backend == "python"
        if model in ONNX_MODELS:
            assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
            # ORT threads that spin while idle take the cores the other models need
            assert config.parameters["allow_spinning"].string_value == "0"
    detector = parse(model_repository / contract.DETECTOR / "config.pbtxt")
    assert [i.name for i in detector.input] == [contract.DETECTOR_IMAGES]
    assert detector.input[0].data_type == mc.TYPE_UINT8
    outputs = {o.name: o for o in detector.output}
    assert set(outputs) == {
        contract.DETECTOR_BOXES,
        contract.DETECTOR_SCORES,
        contract.DETECTOR_LABELS,
        contract.DETECTOR_PROMPT_SCORES,
    }
    assert outputs[contract.DETECTOR_LABELS].data_type == mc.TYPE_INT64
    vlm = parse(model_repository / contract.VLM / "config.pbtxt")  # the spec's default, not the source's 0
    assert vlm.parameters["vision_cache_mb"].string_value == "256"


def test_gpu_configs_parse_with_tritons_schema(gpu_repository: Path, model_repository: Path):
    for model in ALL_MODELS:
        pool = containers.pool_of(model)
        config = parse(gpu_repository / pool.folder / model / "config.pbtxt")
        cpu = parse(model_repository / model / "config.pbtxt")
        assert [(i.name, i.data_type, caller_shape(config, i)) for i in config.input] == [
            (i.name, i.data_type, caller_shape(cpu, i)) for i in cpu.input
        ], "one contract for both profiles"
        assert [(o.name, o.data_type, caller_shape(config, o)) for o in config.output] == [
            (o.name, o.data_type, caller_shape(cpu, o)) for o in cpu.output
        ]
        if model in ONNX_MODELS:
            assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
            assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
            assert config.model_warmup, "engines are built while loading, not on the first request"
            assert config.max_batch_size == cpu.max_batch_size > 0 and config.HasField("dynamic_batching")
        elif model in contract.VLM_MODELS:  # NVIDIA's llmapi model: TensorRT-LLM batches in flight
            assert config.parameters["engine"].string_value == "tensorrt_llm"
            assert config.model_transaction_policy.decoupled and config.max_batch_size == 0
            (group,) = config.instance_group
            assert group.kind == mc.ModelInstanceGroup.KIND_CPU and group.count == 1
            args = json.loads(config.parameters["llm_args"].string_value)
            assert args["dtype"] == "bfloat16" and args["guided_decoding_backend"] == "xgrammar"
            assert "tqdm" not in (gpu_repository / pool.folder / model / "config.pbtxt").read_text()
            image = next(i for i in config.input if i.name == contract.VLM_IMAGE)
            assert image.optional
        else:
            assert config.backend == "python"


def test_gpu_repositories_hold_exactly_their_servers_models(gpu_repository: Path):
    for pool in containers.POOLS:
        folders = {p.name for p in (gpu_repository / pool.folder).iterdir() if p.is_dir()}
        assert folders == set(pool.models), pool.folder
    assert not any((gpu_repository / m).exists() for m in ALL_MODELS)
    for name in gpu_deployment.GPU_FILES:
        assert (gpu_repository / name).is_file(), name


def test_gpu_build_script_and_honest_note(gpu_repository: Path):
    script = (gpu_repository / gpu_deployment.PLAN_SCRIPT).read_text()
    for model in ONNX_MODELS:
        assert f"--saveEngine=/models/{model}/1/model.plan" in script
    detector_min = "x".join(map(str, PLAN_SHAPES[contract.DETECTOR][contract.DETECTOR_IMAGES][0]))
    assert f"--minShapes=images:{detector_min}" in script and "--stronglyTyped" in script
    assert "--fp16" not in script and "trtllm" not in script
    notes = (gpu_repository / "notes.txt").read_text()
    assert "not run on a GPU" in notes and "README.md" in notes
    if shutil.which("nvidia-smi") is None:
        assert "GPU stack not found" in notes


def test_gpu_export_splits_the_repository_and_saves_bfloat16(demo_checkpoints: Path, tmp_path: Path):
    """A real `build` for the gpu profile (OCR + VLMs: the quick steps): the two repositories, the
    weights cast to bfloat16 with the cast checked, a stale cpu layout removed; then the cpu profile
    into the same folder removes the gpu layout."""
    spec = gpu_spec(demo_checkpoints, tmp_path)
    spec = spec.model_copy(update={"detector": None, "clip": None})
    (tmp_path / contract.OCR_DET).mkdir()  # left by an earlier cpu export into this folder
    with Progress(disable=True) as progress:
        result = build(spec, progress)
    assert not (tmp_path / contract.OCR_DET).exists()
    assert {p.name for p in (tmp_path / "encoders").iterdir()} == set(contract.OCR_MODELS)
    assert {p.name for p in (tmp_path / "vlms").iterdir()} == set(contract.VLM_MODELS)
    for model in contract.VLM_MODELS:
        weights = tmp_path / "vlms" / model / "1" / "weights"
        assert {t.dtype for t in load_file(weights / "model.safetensors").values()} == {torch.bfloat16}
        config = json.loads((weights / "config.json").read_text())
        assert config["dtype"] == config["torch_dtype"] == "bfloat16"
        args = json.loads(
            parse(tmp_path / "vlms" / model / "config.pbtxt").parameters["llm_args"].string_value
        )
        assert args["dtype"] == "bfloat16"
    casts = [r for r in result.reports if "bfloat16 weights" in r.check]
    assert {r.model for r in casts} == set(contract.VLM_MODELS)
    assert all(0 < r.max_abs_diff <= r.tolerance for r in casts)
    assert IDENTICAL_BYTES not in {r.figure for r in result.reports}, "a cast is no byte copy"
    ocr_det = parse(tmp_path / "encoders" / contract.OCR_DET / "config.pbtxt")
    assert (
        ocr_det.backend == "onnxruntime"
        and ocr_det.optimization.execution_accelerators.gpu_execution_accelerator
    )
    reused = reuse(spec)
    assert reused is not None and set(reused.models) == {*contract.OCR_MODELS, *contract.VLM_MODELS}
    with Progress(disable=True) as progress:
        build(spec.model_copy(update={"profile": "cpu", "vlm": None}), progress)
    assert {p.name for p in tmp_path.iterdir()} == {*contract.OCR_MODELS, REPORT_FILE}


@pytest.mark.skipif(
    "TensorrtExecutionProvider" not in ort.get_available_providers(),
    reason="needs an NVIDIA GPU with onnxruntime-gpu (TensorRT execution provider); none on this machine",
)
def test_tensorrt_matches_cpu_on_the_detector(model_repository: Path):
    path = str(model_repository / contract.DETECTOR / "1" / "model.onnx")
    image = np.random.default_rng(0).integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"images": image})
    trt = ort.InferenceSession(path, providers=["TensorrtExecutionProvider"]).run(None, {"images": image})
    np.testing.assert_allclose(trt[0], cpu[0], atol=1e-2)


def test_spec_errors_are_named(tmp_path: Path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("profile: tpu\nvlm:\n  base: x\n  colour: red\n")
    with pytest.raises(ExportError) as info:
        load_spec(spec)
    assert "profile" in str(info.value) and "vlm.colour" in str(info.value)
    with pytest.raises(ExportError, match="export spec not found"):
        load_spec(tmp_path / "absent.yaml")


def test_wrong_architecture_is_refused_before_any_work(demo_checkpoints: Path, tmp_path: Path):
    spec = load_spec(demo_checkpoints / SPEC_FILE)
    wrong = spec.detector.model_copy(update={"checkpoint": demo_checkpoints / "clip"})
    with Progress(disable=True) as progress, pytest.raises(CheckpointError, match="model_type is 'clip'"):
        build(spec.model_copy(update={"output": tmp_path / "repo", "detector": wrong}), progress)
    assert not (tmp_path / "repo").exists()


def test_cli_reports_errors_without_traceback(demo_checkpoints: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2_vl"}')
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"output: {tmp_path / 'repo'}\nocr: null\nvlm:\n  base: {broken}\n")
    result = subprocess.run(
        [sys.executable, "-m", "navig.client.cli_main", "export", "build", str(spec)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no *.safetensors weights" in result.stderr and "Traceback" not in result.stderr


def test_report_records_measured_figures_and_the_inputs(model_repository: Path, demo_checkpoints: Path):
    report = json.loads((model_repository / REPORT_FILE).read_text())
    artifacts = {a["model"]: a for a in report["artifacts"]}
    vlm, detector = artifacts[contract.VLM], artifacts[contract.DETECTOR]
    assert vlm["figure"] == IDENTICAL_BYTES and vlm["max_abs_diff"] is None and "sha256" in vlm["check"]
    assert 0 <= detector["misses"] <= detector["misses_allowed"] and detector["max_abs_diff"] is not None
    spec = load_spec(demo_checkpoints / SPEC_FILE).model_copy(update={"output": model_repository})
    assert report["inputs_sha256"] == export_fingerprint(spec)
    assert report["inputs"]["code"]["navig"] == report["navig_version"]


def test_export_build_reuses_an_unchanged_repository(demo_checkpoints: Path, tmp_path: Path):
    """Same inputs: reused (and said so, with --force named); changed bytes or a lost artifact: exported."""
    base = tmp_path / "qwen2_vl"
    shutil.copytree(demo_checkpoints / "qwen2_vl", base)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"ocr: null\nvlm:\n  base: {base}\n")
    args = ["build", str(spec), "--out", str(tmp_path / "repo")]
    weights = tmp_path / "repo" / contract.VLM / "1" / "weights"

    def export(*extra: str) -> bool:
        """True when the run reused the repository."""
        result = CliRunner().invoke(export_app, [*args, *extra])
        assert result.exit_code == 0, result.output
        assert (weights / "model.safetensors").is_file()
        return "reused" in result.output and "--force" in result.output

    assert not export()
    assert export()
    assert not export("--force")
    assert not export("--out", str(tmp_path / "elsewhere"))  # another folder: its own export
    generation = base / "generation_config.json"
    generation.write_text(generation.read_text() + "\n")
    assert not export()
    assert export()
    (weights / "model.safetensors").unlink()
    assert not export()
    assert not export("--stream")  # the spec changed


def test_demo_checkpoints_are_reused_while_unchanged(demo_checkpoints: Path, tmp_path: Path):
    counts = reused_demo_checkpoints(demo_checkpoints, "tiny")
    assert counts is not None and set(counts) == {"qwen2_vl", "reasoner_lora", "grounding_dino", "clip"}
    assert reused_demo_checkpoints(demo_checkpoints, "small") is None
    copy = tmp_path / "checkpoints"
    shutil.copytree(demo_checkpoints, copy)
    assert reused_demo_checkpoints(copy, "tiny") == counts
    config = copy / "clip" / "config.json"
    config.write_text(config.read_text() + " ")
    assert reused_demo_checkpoints(copy, "tiny") is None


def test_aside_steps_run_in_a_worker_process_and_keep_plan_order():
    """`jobs` > 1: the `aside` step (the detector_reference export) runs in a spawned worker while this
    process runs the others; the reports come back in plan order. `jobs` 1: all here, in order."""
    here = os.getpid()
    steps = [
        Step("first", (), os.getpid),
        Step("beside", (), os.getpid, aside=True),
        Step("last", (), functools.partial(str, "last")),
    ]
    shown: list[str] = []
    first, beside, last = run_steps(steps, 2, shown.append)
    assert (first, last) == (here, "last") and beside != here
    assert shown == ["first", "last", "beside (in a worker process)"]
    assert run_steps(steps, 1, shown.append) == [here, here, "last"]


def test_a_failing_aside_step_raises_its_own_error():
    steps = [Step("bad", (), functools.partial(load_spec, Path("/nowhere/export.yaml")), aside=True)]
    with pytest.raises(ExportError, match="nowhere"):
        run_steps(steps, 2, lambda _: None)


def test_the_detector_reference_export_goes_aside(demo_checkpoints: Path):
    steps = plan(load_spec(demo_checkpoints / SPEC_FILE))
    assert [s.models for s in steps if s.aside] == [(contract.DETECTOR_REFERENCE,)]
    pickle.dumps(next(s.work for s in steps if s.aside))  # a worker process can receive it
