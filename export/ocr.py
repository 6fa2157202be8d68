"""PP-OCR det/rec ONNX (shipped in the rapidocr wheel) -> `ocr_det`, `ocr_rec`, `ocr` models.

The exported graphs differ from the shipped ones only at their edges: the detector takes uint8
BGR pixels (normalisation folded in) and tensors get descriptive names. Each artifact is
checked against the shipped file on the same input before it is placed.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from navig.export import onnx_edit
from navig.export.errors import ExportError
from navig.export.report import ArtifactReport
from navig.model_repository import contract

PARITY_TOLERANCE = 1e-4


class OcrExportError(ExportError):
    """A PP-OCR source file is missing or does not compute what it should."""


@dataclass(frozen=True)
class OcrSources:
    det: Path
    rec: Path

    @classmethod
    def from_rapidocr_wheel(cls) -> OcrSources:
        """The PP-OCRv6 small det/rec files bundled in the installed rapidocr package."""
        try:
            import rapidocr
        except ImportError as exc:
            raise OcrExportError("rapidocr is not installed: pip install 'navig-serve[cpu]'") from exc
        models = Path(rapidocr.__file__).parent / "models"
        return cls(det=models / "PP-OCRv6_det_small.onnx", rec=models / "PP-OCRv6_rec_small.onnx")


def export_det(source: Path, out: Path, rng: np.random.Generator) -> ArtifactReport:
    started = time.perf_counter()
    model = _load(source)
    onnx_edit.fold_uint8_nhwc_input(model, contract.OCR_DET_INPUT, scale=2.0 / 255.0, offset=-1.0)
    onnx_edit.rename_output(model, contract.OCR_DET_OUTPUT)
    pixels = rng.integers(0, 256, (1, 64, 96, 3), dtype=np.uint8)
    reference = ((pixels.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2)
    return _save_checked(
        "ocr_det", model, source, out, {contract.OCR_DET_INPUT: pixels}, {"x": reference}, started
    )


def export_rec(source: Path, out: Path, rng: np.random.Generator) -> tuple[ArtifactReport, str]:
    """Returns the report and the character list stored in the model's metadata."""
    started = time.perf_counter()
    model = _load(source)
    characters = {p.key: p.value for p in model.metadata_props}.get("character")
    if not characters:
        raise OcrExportError(f"{source}: no 'character' metadata; not a PP-OCR rec model")
    onnx_edit.rename_input(model, contract.OCR_REC_INPUT)
    onnx_edit.rename_output(model, contract.OCR_REC_OUTPUT)
    crops = rng.uniform(-1, 1, (2, 3, 48, 320)).astype(np.float32)
    report = _save_checked(
        "ocr_rec", model, source, out, {contract.OCR_REC_INPUT: crops}, {"x": crops}, started
    )
    return report, characters


def _load(source: Path) -> onnx.ModelProto:
    if not source.is_file():
        raise OcrExportError(f"PP-OCR model file not found: {source}")
    try:
        model = onnx.load(str(source))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise OcrExportError(f"{source} is not a valid ONNX model: {exc}") from exc
    return model


def _save_checked(
    name: str,
    model: onnx.ModelProto,
    source: Path,
    out: Path,
    feeds: dict[str, np.ndarray],
    reference_feeds: dict[str, np.ndarray],
    started: float,
) -> ArtifactReport:
    onnx.checker.check_model(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    exported = _session(out).run(None, feeds)[0]
    expected = _session(source).run(None, reference_feeds)[0]
    diff = float(np.max(np.abs(exported - expected)))
    if not diff <= PARITY_TOLERANCE:
        out.unlink()
        raise OcrExportError(f"{name}: exported graph differs from {source.name} by {diff:.2e}")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    check = f"ORT: exported vs shipped {source.name} (sha256 {digest}...)"
    return ArtifactReport.of_file(name, out, diff, PARITY_TOLERANCE, started, check)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
