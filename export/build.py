"""`navig export build`: run an export spec step by step into a model repository."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from navig.export import gpu_recipes, triton_config
from navig.export.fingerprint import export_fingerprint, export_inputs, fingerprint, navig_version
from navig.export.ocr import OcrSources
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


def plan(spec: ExportSpec) -> list[Step]:
    repo = spec.output
    steps: list[Step] = []
    if spec.ocr:
        bundled = OcrSources.from_rapidocr_wheel()
        sources = OcrSources(det=spec.ocr.det or bundled.det, rec=spec.ocr.rec or bundled.rec)
        steps.append(
            Step("OCR: PP-OCR det/rec", contract.OCR_MODELS, lambda: write_ocr_models(repo, sources))
        )
    if spec.detector:
        steps.append(Step("detector: GroundingDINO -> ONNX", (contract.DETECTOR,), lambda: _detector(spec)))
    if spec.clip:
        steps.append(
            Step("CLIP: image + text -> ONNX", (contract.CLIP_IMAGE, contract.CLIP_TEXT), lambda: _clip(spec))
        )
    if spec.vlm:
        steps.append(Step("vlm: base checkpoint", (contract.VLM,), lambda: _vlm_base(spec)))
        if spec.vlm.reasoner_adapter:
            steps.append(Step("reasoner: merge LoRA + check", (contract.REASONER,), lambda: _reasoner(spec)))
    return steps


def build(spec: ExportSpec, progress: Progress) -> BuildResult:
    check_inputs(spec)
    inputs = export_inputs(spec)
    spec.output.mkdir(parents=True, exist_ok=True)
    (spec.output / REPORT_FILE).unlink(missing_ok=True)  # a half-rewritten repository is never reused
    steps = plan(spec)
    overall = progress.add_task("export", total=len(steps) + 1)
    reports: list[ArtifactReport] = []
    models: list[str] = []
    for step in steps:
        progress.update(overall, description=step.description)
        reports.extend(step.work())
        models.extend(step.models)
        progress.advance(overall)
    progress.update(overall, description=f"configs ({spec.profile} profile)")
    result = BuildResult(spec.output, reports, models)
    for name in models:
        write_model_config(spec, name)
    if spec.profile == "gpu":
        result.notes.extend(write_gpu_build(spec, models))
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
    if not all((spec.output / m / "config.pbtxt").is_file() for m in models) or not all(
        r.path.exists() and folder_size(r.path) == r.size_bytes for r in reports
    ):
        return None
    return BuildResult(spec.output, reports, models, list(report.get("notes", [])))


def write_model_config(spec: ExportSpec, name: str) -> None:
    header, config = triton_config.source_config(name)
    version_dir = spec.output / name / "1"
    if name in triton_config.ONNX_MODELS:
        triton_config.io_from_onnx(config, version_dir / "model.onnx")
    if name in contract.VLM_MODELS and spec.vlm:
        config.parameters["max_tokens"].string_value = str(spec.vlm.max_tokens)
        config.max_batch_size = spec.vlm.max_batch
        config.dynamic_batching.max_queue_delay_microseconds = spec.vlm.max_queue_delay_us
        triton_config.set_streaming(config, spec.vlm.stream)
    if spec.profile == "gpu":
        config = triton_config.to_gpu(name, config, spec.gpu.options())
    triton_config.write_config(spec.output / name / "config.pbtxt", header, config, spec.profile)


def write_gpu_build(spec: ExportSpec, models: list[str]) -> list[str]:
    commands: list[list[str]] = []
    if spec.gpu.encoders == "plan":
        fp16 = spec.gpu.precision == "FP16"
        commands += [
            gpu_recipes.trtexec_command(m, spec.output, fp16)
            for m in models
            if m in triton_config.ONNX_MODELS
        ]
    if spec.gpu.vlm_engine_recipe:
        for model in (m for m in models if m in contract.VLM_MODELS):
            commands += gpu_recipes.trtllm_engine_commands(model, spec.output)
    notes = []
    if commands:
        script = gpu_recipes.write_script(
            spec.output / "gpu_build.sh",
            commands,
            "TensorRT builds for this repository (run on the GPU host)",
        )
        notes.append(f"GPU build commands written to {script}")
    if status := gpu_recipes.gpu_stack_status(script_written=bool(commands)):
        notes.append(status)
    return notes


def _detector(spec: ExportSpec) -> list[ArtifactReport]:
    from navig.export.detector import export_detector

    assert spec.detector
    place_model_folder(contract.DETECTOR, spec.output)
    out = spec.output / contract.DETECTOR / "1" / "model.onnx"
    d = spec.detector
    return [export_detector(d.checkpoint, out, image_size=d.image_size, top_k=d.top_k)]


def _clip(spec: ExportSpec) -> list[ArtifactReport]:
    from navig.export.clip import export_clip

    assert spec.clip
    place_model_folder(contract.CLIP_IMAGE, spec.output)
    place_model_folder(contract.CLIP_TEXT, spec.output)
    return export_clip(spec.clip.checkpoint, spec.output)


def _vlm_base(spec: ExportSpec) -> list[ArtifactReport]:
    from navig.export.vlm import export_base

    assert spec.vlm
    place_model_folder(contract.VLM, spec.output)
    return [export_base(spec.vlm.base, spec.output)]


def _reasoner(spec: ExportSpec) -> list[ArtifactReport]:
    from navig.export.vlm import export_merged_reasoner

    assert spec.vlm and spec.vlm.reasoner_adapter
    place_model_folder(contract.REASONER, spec.output)
    vlm = spec.vlm
    return [export_merged_reasoner(vlm.base, vlm.reasoner_adapter, spec.output, vlm.merge_tolerance)]
