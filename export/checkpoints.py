"""Loading user checkpoints safely, with errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from navig.export.errors import CheckpointError


def read_config(folder: Path, expected_model_types: tuple[str, ...]) -> dict[str, Any]:
    """config.json of a Hugging Face model folder, checked for architecture and safetensors weights."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: no config.json; not a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from exc
    model_type = config.get("model_type")
    if model_type not in expected_model_types:
        raise CheckpointError(
            f"{folder}: model_type is {model_type!r}, expected {' or '.join(map(repr, expected_model_types))}"
        )
    if not any(folder.glob("*.safetensors")):
        unsafe = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt*"))
        hint = (
            f" (found {', '.join(unsafe)}: pickled weights are not loaded; convert to safetensors)"
            if unsafe
            else ""
        )
        raise CheckpointError(f"{folder}: no *.safetensors weights{hint}")
    return config


def load_pretrained(
    model_class: Any, folder: Path, expected_model_types: tuple[str, ...], **kwargs: Any
) -> Any:
    """`from_pretrained` from safetensors only, in eval mode, float32, offline."""
    read_config(folder, expected_model_types)
    try:
        model = model_class.from_pretrained(folder, use_safetensors=True, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{folder}: cannot load as {model_class.__name__}: {exc}") from exc
    return model.eval()
