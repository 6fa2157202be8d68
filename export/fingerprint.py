"""Content fingerprints: `navig export` does not redo work whose inputs are unchanged.

A fingerprint is the sha256 of what decides an output: the inputs' bytes (relative path, size and
sha256 of every file), the settings, the navig version with a sha256 of the navig sources that
write the output (an edited exporter counts as a new version, as a release would), and the versions
of the libraries that compute it. It is recorded beside the output; `--force` redoes the work.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import navig.export as export_package
import navig.model_repository as model_repository_package

if TYPE_CHECKING:
    from navig.export.spec import ExportSpec

DISTRIBUTION = "navig-serve"
# What computes an export's bytes; and a demo checkpoint's.
EXPORT_LIBRARIES = (
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "tokenizers",
    "onnx",
    "onnx-ir",
    "onnxscript",
    "onnxruntime",
    "rapidocr",
    "tritonclient",
)
CHECKPOINT_LIBRARIES = ("torch", "transformers", "peft", "safetensors", "tokenizers")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under `folder` by relative path (caches and `skip` names left out)."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts and path.name not in skip
    }


def content_digest(path: Path) -> str:
    """A file's or a folder's content: relative path, size and sha256 of every file."""
    if not path.exists():
        return f"absent: {path}"
    digest = hashlib.sha256()
    files = {path.name: sha256_file(path)} if path.is_file() else file_digests(path)
    for name, sha256 in files.items():
        size = (path if path.is_file() else path / name).stat().st_size
        digest.update(f"{name}\0{size}\0{sha256}\n".encode())
    return digest.hexdigest()


def code_version(*packages: ModuleType) -> dict[str, str]:
    """The navig version and a sha256 of these packages' sources (*.py, config.pbtxt)."""
    digest = hashlib.sha256()
    for package in packages:
        root = Path(package.__file__).parent
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.pbtxt")]):
            if "__pycache__" not in path.parts:
                digest.update(f"{package.__name__}/{path.relative_to(root).as_posix()}\0".encode())
                digest.update(path.read_bytes())
    return {"navig": navig_version(), "sources_sha256": digest.hexdigest()}


def navig_version() -> str:
    return _version(DISTRIBUTION)


def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    return {name: _version(name) for name in names}


def fingerprint(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def export_inputs(spec: ExportSpec) -> dict[str, Any]:
    """What decides an export: the spec (not its output folder) with each checkpoint path replaced
    by the checkpoint's content, the PP-OCR files it defaults to, the code and library versions."""
    from navig.export.ocr import OcrSources

    settings = spec.model_dump(mode="json", exclude={"output"})
    for section in ("ocr", "detector", "clip", "vlm"):
        for key, value in getattr(spec, section) or ():
            if isinstance(value, Path):
                settings[section][key] = content_digest(value)
    if spec.ocr:
        bundled = OcrSources.from_rapidocr_wheel()
        for key in ("det", "rec"):
            if getattr(spec.ocr, key) is None:
                settings["ocr"][key] = content_digest(getattr(bundled, key))
    return {
        "spec": settings,
        "code": code_version(export_package, model_repository_package),
        "libraries": library_versions(EXPORT_LIBRARIES),
    }


def export_fingerprint(spec: ExportSpec) -> str:
    return fingerprint(export_inputs(spec))


def demo_checkpoints_fingerprint(preset: str) -> str:
    """Demo checkpoints are seeded: the preset, the code and the libraries decide them."""
    record = {
        "preset": preset,
        "code": code_version(export_package),
        "libraries": library_versions(CHECKPOINT_LIBRARIES),
    }
    return fingerprint(record)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "absent"
