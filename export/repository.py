"""Writes a servable Triton model repository from an export spec: artifacts + profile configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import navig.model_repository as model_sources
from navig.export.ocr import OcrSources, export_det, export_rec
from navig.export.report import ArtifactReport
from navig.model_repository import contract

MODEL_SOURCES = Path(model_sources.__file__).parent
REPORT_FILE = "export_report.json"


def place_model_folder(name: str, repository: Path) -> Path:
    """Copies config.pbtxt and the version folder's code; existing artifacts there are replaced."""
    target = repository / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(MODEL_SOURCES / name, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def write_ocr_models(repository: Path, sources: OcrSources) -> list[ArtifactReport]:
    rng = np.random.default_rng(0)
    for name in contract.OCR_MODELS:
        place_model_folder(name, repository)
    det = export_det(sources.det, repository / contract.OCR_DET / "1" / "model.onnx", rng)
    rec, characters = export_rec(sources.rec, repository / contract.OCR_REC / "1" / "model.onnx", rng)
    (repository / contract.OCR / "1" / "characters.txt").write_text(characters, encoding="utf-8")
    return [det, rec]
