"""The declarative export spec: which checkpoints become which Triton models, for which profile.

One YAML file (`navig export build SPEC.yaml`), validated with pydantic so a typo or a missing
path is reported by name before any work starts. `navig export demo-checkpoints` writes one
next to the checkpoints it creates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from navig.export.errors import ExportError
from navig.export.triton_config import GpuOptions, LlmOptions
from navig.model_repository import contract
from navig.orchestrator import navig_reference


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VlmSpec(_Section):
    base: Path  # Qwen2-VL Hugging Face folder: served as `vlm` (GUESSER, describer)
    reasoner_adapter: Path | None = None  # peft LoRA folder: the REASONER
    # How the REASONER is served: `merged` into its own `reasoner` model (a second copy of the weights,
    # its own process), or as an `adapter` on `vlm` (one copy; its rows share the base's batches;
    # export/adapter_export.py).
    reasoner: Literal["merged", "adapter"] = "merged"
    merge_tolerance: float = 1e-3  # max |logit| difference, merged vs PEFT
    stream: bool = False  # cpu: decoupled models, one response per new piece of text (gpu: always)
    max_tokens: int = Field(128, ge=1, le=contract.MAX_NEW_TOKENS)
    max_batch: int = Field(8, ge=1, le=64)  # concurrent requests per batched generate (Triton max_batch_size)
    max_queue_delay_us: int = Field(5000, ge=0)  # how long a request may wait for others to join its batch
    # cpu: `vlm` keeps the vision tower's output per image (LRU within this many MiB) and reuses it for
    # a later row showing the same pixels: `reference` describes and reads every crop, two rows per
    # crop. Tokens unchanged (tests/test_shared_lora.py); 0: off. gpu: TensorRT-LLM's own.
    vision_cache_mb: float = Field(256, ge=0)
    # The dtype `reasoner` and `vlm` weights are saved in. auto: the base checkpoint's own (config.json
    # `torch_dtype`/`dtype`: bfloat16 for Qwen2-VL releases), except that the gpu profile never
    # saves float32: TensorRT-LLM's Qwen2-VL runs its vision tower with flash-attention in the
    # checkpoint's dtype, so a float32 checkpoint becomes bfloat16 there (float16 on pre-Ampere GPUs,
    # which have no bfloat16: set it).
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class DetectorSpec(_Section):
    checkpoint: Path  # GroundingDINO Hugging Face folder
    image_size: tuple[int, int] = (480, 640)  # (height, width) fixed at export: Swin windows
    top_k: int = Field(100, ge=1)
    # All prompts as phrases of one caption, the prompt-dependent part run once per image instead of
    # once per prompt. Faster; detections differ from NAVIG's per-prompt passes
    # (`benchmarks/detector_single_pass.py` measures the agreement). Off unless that agreement is high.
    single_pass: bool = False
    # `detector_reference` (the `reference` pipeline's): every query, in order, at this (height, width):
    # GroundingDINO's own resize of a 4:3 landscape photo (NAVIG's 800 / 1333 rule). Photos of another
    # shape are stretched to it. None: not exported (`reference` requests then fail FAILED_PRECONDITION).
    reference_image_size: tuple[int, int] | None = navig_reference.detector_input_size(480, 640)
    # int8: the `detector` decoder quantized behind a parity gate, or the export refuses (export/quantize.py).
    precision: Literal["fp32", "int8"] = "fp32"


class ClipSpec(_Section):
    checkpoint: Path  # CLIP Hugging Face folder: `clip_image` and `clip_text`
    # int8: `clip_image` quantized behind a parity gate, or the export refuses (export/quantize.py).
    precision: Literal["fp32", "int8"] = "fp32"


class OcrSpec(_Section):
    det: Path | None = None  # PP-OCR det ONNX; default: the one shipped in the rapidocr wheel
    rec: Path | None = None


class LlmSpec(_Section):
    """TensorRT-LLM `LLM(...)` arguments of one VLM on the gpu profile (triton_config.LlmOptions)."""

    kv_cache_fraction: float = Field(LlmOptions.kv_cache_fraction, gt=0, le=1)  # of FREE memory
    kv_cache_max_tokens: int | None = Field(None, ge=1)  # a fixed cap; with both, the smaller wins
    max_num_tokens: int = Field(LlmOptions.max_num_tokens, ge=64)
    max_batch_size: int | None = Field(None, ge=1)  # requests in flight; None: vlm.max_batch


class GpuSpec(_Section):
    encoders: Literal["tensorrt", "plan"] = GpuOptions.encoders
    precision: Literal["FP16", "FP32"] = GpuOptions.precision
    reasoner: LlmSpec = Field(default_factory=LlmSpec)
    vlm: LlmSpec = Field(default_factory=LlmSpec)

    def options(self, vlm: VlmSpec | None = None, dtype: str = LlmOptions.dtype) -> GpuOptions:
        """`dtype`: what the VLM weights are saved in (`build.served_dtype`)."""
        llm = {contract.REASONER: self.reasoner, contract.VLM: self.vlm}
        return GpuOptions(
            encoders=self.encoders,
            precision=self.precision,
            llm={
                name: LlmOptions(
                    dtype=dtype,
                    kv_cache_fraction=s.kv_cache_fraction,
                    kv_cache_max_tokens=s.kv_cache_max_tokens,
                    max_num_tokens=s.max_num_tokens,
                    max_batch_size=s.max_batch_size or (vlm.max_batch if vlm else LlmOptions.max_batch_size),
                )
                for name, s in llm.items()
            },
        )


class ExportSpec(_Section):
    profile: Literal["cpu", "gpu"] = "cpu"
    output: Path = Path("build/model_repository")
    ocr: OcrSpec | None = Field(default_factory=OcrSpec)
    detector: DetectorSpec | None = None
    clip: ClipSpec | None = None
    vlm: VlmSpec | None = None
    gpu: GpuSpec = Field(default_factory=GpuSpec)

    @model_validator(mode="after")
    def _something_to_do(self) -> ExportSpec:
        if not any((self.ocr, self.detector, self.clip, self.vlm)):
            raise ValueError("the spec exports nothing: give at least one of ocr, detector, clip, vlm")
        int8 = [
            name
            for name, part in (("detector", self.detector), ("clip", self.clip))
            if part and part.precision == "int8"
        ]
        if int8 and self.profile == "gpu":
            raise ValueError(
                f"{', '.join(int8)}: precision int8 is for the cpu profile (ONNX Runtime); TensorRT's int8 "
                "needs a calibration cache or a Q/DQ graph: use fp32 and gpu.precision FP16"
            )
        return self

    def resolved(self, base: Path) -> ExportSpec:
        """Relative paths are relative to the spec file's folder."""
        data = self.model_dump()
        for section in ("ocr", "detector", "clip", "vlm"):
            for key, value in (data.get(section) or {}).items():
                if isinstance(value, Path) and not value.is_absolute():
                    data[section][key] = base / value
        if not self.output.is_absolute():
            data["output"] = Path.cwd() / self.output
        return ExportSpec.model_validate(data)


def load_spec(path: Path) -> ExportSpec:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ExportError(f"export spec not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ExportError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return ExportSpec.model_validate(raw or {}).resolved(path.resolve().parent)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise ExportError(f"{path}: {problems}") from exc


def dump_spec(spec: ExportSpec, path: Path) -> None:
    data = spec.model_dump(mode="json", exclude_none=True)
    header = f"# navig export spec: `navig export build {path.name}`\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
