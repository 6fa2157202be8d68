"""`navig export build`: run an export spec step by step into a model repository.

cpu profile: one repository, the output folder itself (the embedded Triton serves it). gpu profile:
two repositories under the output, one per Triton server (`containers.POOLS`: `encoders/` for the
`-py3` image, `vlms/` for the TensorRT-LLM image), with README.md, navig.yaml and (plans)
build_plans.sh beside them (`gpu_deployment`). The export report stays at the output's top.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from navig.export import adapter_export, containers, gpu_deployment, gpu_recipes, triton_config
from navig.export.errors import CheckpointError, ExportError
from navig.export.fingerprint import export_fingerprint, export_inputs, fingerprint, navig_version
from navig.export.ocr import OcrSources
from navig.export.quantize import quantized
from navig.export.report import ArtifactReport, folder_size, write_report
from navig.export.repository import REPORT_FILE, place_model_folder, write_ocr_models
from navig.export.spec import ExportSpec
from navig.model_repository import contract


@dataclass
class BuildResult:
    repository: Path
    reports: list[ArtifactReport]
    models: list[str]
    notes: list[str] = field(default_factory=list)  # what the user must know (e.g. GPU stack absent)


@dataclass(frozen=True)
class Step:
    description: str
    models: tuple[str, ...]
    work: Callable[[], list[ArtifactReport]]
    # Heavy and independent of the other steps: with `jobs` > 1 it runs in a worker process beside
    # them (its `work` must pickle). Dynamo's ONNX export traces in Python, on one core.
    aside: bool = False


def default_jobs() -> int:
    """Processes `build` uses: the two GroundingDINO exports are the long steps, one core each."""
    return min(2, os.cpu_count() or 1)


def repository_for(spec: ExportSpec, model: str) -> Path:
    """The model repository a model's folder goes into: the output (cpu), or its server's (gpu)."""
    return spec.output if spec.profile == "cpu" else spec.output / containers.pool_of(model).folder


def served_dtype(spec: ExportSpec) -> str | None:
    """The dtype `reasoner` and `vlm` weights are saved in (spec `vlm.dtype`; VlmSpec says why)."""
    if not spec.vlm:
        return None
    from navig.export.checkpoints import read_config
    from navig.export.vlm import QWEN2_VL_TYPES, TORCH_DTYPES, checkpoint_dtype

    dtype = spec.vlm.dtype
    if dtype == "auto":
        dtype = checkpoint_dtype(read_config(spec.vlm.base, QWEN2_VL_TYPES))
        if spec.profile == "gpu" and dtype not in ("bfloat16", "float16"):
            dtype = "bfloat16"
    if dtype not in TORCH_DTYPES:
        raise CheckpointError(
            f"{spec.vlm.base}: config.json states dtype {dtype!r}; "
            f"set vlm.dtype to one of {', '.join(TORCH_DTYPES)}"
        )
    if spec.profile == "gpu" and dtype == "float32":
        raise ExportError(
            "vlm.dtype float32 cannot be served by the gpu profile (TensorRT-LLM's Qwen2-VL runs "
            "flash-attention in the weights' dtype): use auto, bfloat16 or float16"
        )
    return dtype


def gpu_options(spec: ExportSpec) -> triton_config.GpuOptions:
    return spec.gpu.options(spec.vlm, served_dtype(spec) or triton_config.LlmOptions.dtype)


def check_inputs(spec: ExportSpec) -> None:
    """Every checkpoint is checked before any model folder is touched."""
    from navig.export.checkpoints import read_config
    from navig.export.vlm import QWEN2_VL_TYPES, check_adapter

    if spec.detector:
        read_config(spec.detector.checkpoint, ("grounding-dino",))
    if spec.clip:
        read_config(spec.clip.checkpoint, ("clip",))
    if spec.vlm:
        read_config(spec.vlm.base, QWEN2_VL_TYPES)
        if spec.vlm.reasoner_adapter:
            check_adapter(spec.vlm.reasoner_adapter)
        if adapter_export.adapter_mode(spec):
            adapter_export.check_servable(spec.vlm.reasoner_adapter)
        served_dtype(spec)


def plan(spec: ExportSpec) -> list[Step]:
    repo = repository_for(spec, contract.OCR)
    steps: list[Step] = []
    if spec.ocr:
        bundled = OcrSources.from_rapidocr_wheel()
        sources = OcrSources(det=spec.ocr.det or bundled.det, rec=spec.ocr.rec or bundled.rec)
        steps.append(
            Step("OCR: PP-OCR det/rec", contract.OCR_MODELS, lambda: write_ocr_models(repo, sources))
        )
    if spec.detector:
        steps.append(Step("detector: GroundingDINO -> ONNX", (contract.DETECTOR,), lambda: _detector(spec)))
        if spec.detector.reference_image_size:
            steps.append(
                Step(
                    "detector_reference: GroundingDINO at NAVIG's size, every query -> ONNX",
                    (contract.DETECTOR_REFERENCE,),
                    functools.partial(_detector, spec, reference=True),
                    aside=True,
                )
            )
    if spec.clip:
        steps.append(
            Step("CLIP: image + text -> ONNX", (contract.CLIP_IMAGE, contract.CLIP_TEXT), lambda: _clip(spec))
        )
    if spec.vlm:
        steps.append(Step("vlm: base checkpoint", (contract.VLM,), lambda: _vlm_base(spec)))
        if adapter_export.adapter_mode(spec):
            steps.append(Step("reasoner: LoRA adapter on vlm + check", (), lambda: _reasoner_adapter(spec)))
        elif spec.vlm.reasoner_adapter:
            steps.append(Step("reasoner: merge LoRA + check", (contract.REASONER,), lambda: _reasoner(spec)))
    return steps


def build(spec: ExportSpec, progress: Progress, jobs: int | None = None) -> BuildResult:
    """`jobs` (default `default_jobs()`): 1 runs every step in this process, one after the other."""
    check_inputs(spec)
    inputs = export_inputs(spec)
    spec.output.mkdir(parents=True, exist_ok=True)
    (spec.output / REPORT_FILE).unlink(missing_ok=True)  # a half-rewritten repository is never reused
    remove_other_layout(spec)
    steps = plan(spec)
    overall = progress.add_task("export", total=len(steps) + 1)
    done = run_steps(
        steps,
        jobs or default_jobs(),
        lambda description: progress.update(overall, description=description),
        lambda: progress.advance(overall),
    )
    reports: list[ArtifactReport] = []
    models: list[str] = []
    for step, step_reports in zip(steps, done, strict=True):
        reports.extend(quantized(spec, step_reports))  # spec `precision: int8`, behind its parity gate
        models.extend(step.models)
    progress.update(overall, description=f"configs ({spec.profile} profile)")
    result = BuildResult(spec.output, reports, models, write_configs(spec, models))
    progress.advance(overall)
    write_report(
        spec.output / REPORT_FILE,
        reports,
        profile=spec.profile,
        models=models,
        notes=result.notes,
        navig_version=navig_version(),
        inputs_sha256=fingerprint(inputs),  # `navig export build` reuses the repository while it matches
        inputs=inputs,
    )
    return result


def run_steps(
    steps: list[Step],
    jobs: int,
    show: Callable[[str], object],
    finished: Callable[[], object] = lambda: None,
) -> list[list[ArtifactReport]]:
    """Each step's reports, in plan order. With `jobs` > 1 the `aside` steps run in worker processes
    (spawned: no forked torch state) while this process runs the others; `show` names the step
    this process works on or waits for, `finished` is called as each step ends."""
    aside = [i for i, step in enumerate(steps) if step.aside] if jobs > 1 else []
    done: dict[int, list[ArtifactReport]] = {}
    with contextlib.ExitStack() as stack:
        futures: dict[int, Future] = {}
        if aside:
            spawn = multiprocessing.get_context("spawn")
            pool = stack.enter_context(ProcessPoolExecutor(min(jobs - 1, len(aside)), mp_context=spawn))
            futures = {i: pool.submit(steps[i].work) for i in aside}
        for i, step in enumerate(steps):
            if i not in futures:
                show(step.description)
                done[i] = step.work()
                finished()
        for i, future in futures.items():
            show(f"{steps[i].description} (in a worker process)")
            try:
                done[i] = future.result()
                finished()
            except BrokenProcessPool as exc:
                raise ExportError(
                    f"{steps[i].description}: its worker process died ({exc}); export with --jobs 1"
                ) from exc
    return [done[i] for i in range(len(steps))]


def reuse(spec: ExportSpec) -> BuildResult | None:
    """The repository at spec.output as its report describes it, when it was exported from the same
    inputs (`fingerprint.export_inputs`) and every model and artifact the report lists is there."""
    try:
        report = json.loads((spec.output / REPORT_FILE).read_text())
        if report.get("inputs_sha256") != export_fingerprint(spec):
            return None
        reports = [ArtifactReport(**{**a, "path": Path(a["path"])}) for a in report["artifacts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    models = list(report.get("models", []))
    if not all((repository_for(spec, m) / m / "config.pbtxt").is_file() for m in models) or not all(
        r.path.exists() and folder_size(r.path) == r.size_bytes for r in reports
    ):
        return None
    if spec.profile == "gpu" and not all(
        (spec.output / name).is_file() for name in (gpu_deployment.README, gpu_deployment.SETTINGS)
    ):
        return None
    return BuildResult(spec.output, reports, models, list(report.get("notes", [])))


def remove_other_layout(spec: ExportSpec) -> None:
    """An output switching profiles keeps no models of the other layout (Triton would load them)."""
    if spec.profile == "gpu":
        stale = [spec.output / m for pool in containers.POOLS for m in pool.models]
    else:
        stale = [spec.output / pool.folder for pool in containers.POOLS]
        stale += [spec.output / name for name in gpu_deployment.GPU_FILES]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_configs(spec: ExportSpec, models: list[str]) -> list[str]:
    """Every model's config.pbtxt for the spec's profile, over the artifacts in place; for the gpu
    profile also the deployment files beside the repositories. Returns the notes for the user."""
    options = gpu_options(spec) if spec.profile == "gpu" else None
    for name in models:
        write_model_config(spec, name, options)
    return write_gpu_build(spec, models, options) if options is not None else []


def write_model_config(spec: ExportSpec, name: str, options: triton_config.GpuOptions | None = None) -> None:
    header, config = triton_config.source_config(name)
    folder = repository_for(spec, name) / name
    if name in triton_config.ONNX_MODELS:
        triton_config.io_from_onnx(config, folder / "1" / "model.onnx")
    if name == contract.DETECTOR and spec.detector:
        from navig.export.detector import PER_PROMPT, SINGLE_PASS, VARIANT_KEY

        # which graph it is, for clients (Triton's model config API) as in the ONNX metadata
        config.parameters[VARIANT_KEY].string_value = SINGLE_PASS if spec.detector.single_pass else PER_PROMPT
    if name == contract.VLM:
        adapter_export.set_adapters(config, spec)
        if spec.vlm:
            config.parameters["vision_cache_mb"].string_value = f"{spec.vlm.vision_cache_mb:g}"
    if name in contract.VLM_MODELS and spec.vlm:
        config.parameters["max_tokens"].string_value = str(spec.vlm.max_tokens)
        config.max_batch_size = spec.vlm.max_batch
        config.dynamic_batching.max_queue_delay_microseconds = spec.vlm.max_queue_delay_us
        triton_config.set_streaming(config, spec.vlm.stream)
    if spec.profile == "gpu":
        config = triton_config.to_gpu(name, config, options or gpu_options(spec))
        if name in contract.VLM_MODELS:
            header += (
                "# gpu: TensorRT-LLM's LLM API as NVIDIA's llmapi model runs it: decoupled, one KIND_CPU\n"
                "# instance, no Triton batching (TensorRT-LLM batches in flight); LLM arguments: llm_args.\n"
            )
    triton_config.write_config(folder / "config.pbtxt", header, config, spec.profile)


def write_gpu_build(spec: ExportSpec, models: list[str], options: triton_config.GpuOptions) -> list[str]:
    written = gpu_deployment.write_deployment(spec.output, models, options, navig_version())
    names = ", ".join(p.name for p in written)
    notes = [
        f"gpu deployment ({gpu_deployment.NOT_RUN}): repositories "
        + ", ".join(f"{p.folder}/" for p in containers.POOLS if any(m in p.models for m in models))
        + f" and {names} in {spec.output}; the README there has the launch commands"
    ]
    if status := gpu_recipes.gpu_stack_status():
        notes.append(status)
    return notes


def _detector(spec: ExportSpec, reference: bool = False) -> list[ArtifactReport]:
    """`detector`, or (`reference`) `detector_reference`: every query in order at NAVIG's input size."""
    from navig.export.detector import export_detector

    d = spec.detector
    assert d and (d.reference_image_size or not reference)
    name = contract.DETECTOR_REFERENCE if reference else contract.DETECTOR
    repo = repository_for(spec, name)
    place_model_folder(name, repo)
    out = repo / name / "1" / "model.onnx"
    if reference:
        return [export_detector(d.checkpoint, out, image_size=d.reference_image_size, top_k=None, model=name)]
    return [
        export_detector(d.checkpoint, out, image_size=d.image_size, top_k=d.top_k, single_pass=d.single_pass)
    ]


def _clip(spec: ExportSpec) -> list[ArtifactReport]:
    from navig.export.clip import export_clip

    assert spec.clip
    repo = repository_for(spec, contract.CLIP_IMAGE)
    place_model_folder(contract.CLIP_IMAGE, repo)
    place_model_folder(contract.CLIP_TEXT, repo)
    return export_clip(spec.clip.checkpoint, repo)


def _vlm_base(spec: ExportSpec) -> list[ArtifactReport]:
    from navig.export.vlm import export_base

    assert spec.vlm
    repo = repository_for(spec, contract.VLM)
    place_model_folder(contract.VLM, repo)
    return [export_base(spec.vlm.base, repo, served_dtype(spec))]


def _reasoner(spec: ExportSpec) -> list[ArtifactReport]:
    from navig.export.vlm import export_merged_reasoner

    assert spec.vlm and spec.vlm.reasoner_adapter
    repo = repository_for(spec, contract.REASONER)
    place_model_folder(contract.REASONER, repo)
    vlm = spec.vlm
    return export_merged_reasoner(
        vlm.base, vlm.reasoner_adapter, repo, vlm.merge_tolerance, served_dtype(spec)
    )


def _reasoner_adapter(spec: ExportSpec) -> list[ArtifactReport]:
    assert spec.vlm and spec.vlm.reasoner_adapter
    repo = repository_for(spec, contract.VLM)
    adapter_export.remove_merged(repository_for(spec, contract.REASONER))
    vlm = spec.vlm
    return [adapter_export.export_adapter(vlm.base, vlm.reasoner_adapter, repo, vlm.merge_tolerance)]
