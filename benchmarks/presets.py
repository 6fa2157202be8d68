"""A preset's demo checkpoints and their full model repository, built once and shared by the benchmarks.

The export is rebuilt when the model repository's source (configs and model code) changed since.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from navig import model_repository as model_repository_package
from navig.export.build import build
from navig.export.demo_checkpoints import SPEC_FILE, build_demo_checkpoints
from navig.export.spec import load_spec


def checkpoints_of(preset: str, root: Path, console: Console) -> Path:
    """The preset's demo checkpoints, built once under `root`."""
    checkpoints = root / f"checkpoints-{preset}"
    if not (checkpoints / SPEC_FILE).is_file():
        with console.status(f"building the {preset} checkpoints..."):
            build_demo_checkpoints(checkpoints, preset)
    return checkpoints


def prepare(preset: str, root: Path, console: Console) -> tuple[Path, Path]:
    """The preset's checkpoints and their full model repository, built once under `root`."""
    checkpoints, repository = checkpoints_of(preset, root, console), root / f"repository-{preset}-full"
    stamp = repository / ".source-digest"
    if not stamp.is_file() or stamp.read_text() != source_digest():
        spec = load_spec(checkpoints / SPEC_FILE).model_copy(update={"output": repository})
        with Progress(console=console, transient=True) as progress:
            build(spec, progress)
        stamp.write_text(source_digest())
    return checkpoints, repository


def source_digest() -> str:
    """The model repository's source (configs and model code): an export made from other sources is stale."""
    root = Path(model_repository_package.__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("*.py"), *root.glob("*/config.pbtxt"), *root.glob("*/1/model.py")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()
