"""Loading user checkpoints safely, with errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from navig.export.errors import CheckpointError
from navig.export.pickled import pickled_error

INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path, missing: str) -> dict[str, Any]:
    """A checkpoint's JSON file: CheckpointError `missing` when it is absent, naming it when invalid."""
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def read_config(folder: Path, expected_model_types: tuple[str, ...]) -> dict[str, Any]:
    """config.json of a Hugging Face model folder, checked for architecture and safetensors weights."""
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config = read_json(folder / "config.json", f"{folder}: no config.json; not a Hugging Face model folder")
    model_type = config.get("model_type")
    if model_type not in expected_model_types:
        raise CheckpointError(
            f"{folder}: model_type is {model_type!r}, expected {' or '.join(map(repr, expected_model_types))}"
        )
    if not any(folder.glob("*.safetensors")):
        raise pickled_error(folder, "*.safetensors weights")
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index (no weight_map): {exc}") from exc
        if absent := sorted(s for s in shards if not (folder / s).is_file()):
            raise CheckpointError(f"{index}: names shards that are not in the folder: {', '.join(absent)}")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of a model folder: its shards and their index, or its one file."""
    return sorted(folder.glob("*.safetensors")) + sorted(folder.glob(INDEX_FILE))


def shard_limit(folder: Path) -> int:
    """The `max_shard_size` (bytes) that writes a model sharded as `folder` is: shards no larger than
    its largest when it is sharded (with an index), one file when it is not."""
    sizes = [p.stat().st_size for p in folder.glob("*.safetensors")]
    if (folder / INDEX_FILE).is_file() and len(sizes) > 1:
        return max(sizes)
    return 2**62  # no limit: transformers writes one file and no index


def load_pretrained(
    model_class: Any, folder: Path, expected_model_types: tuple[str, ...], **kwargs: Any
) -> Any:
    """`from_pretrained` from safetensors only, in eval mode, offline (dtype: kwargs' `dtype`)."""
    read_config(folder, expected_model_types)
    try:
        model = model_class.from_pretrained(folder, use_safetensors=True, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{folder}: cannot load as {model_class.__name__}: {exc}") from exc
    return model.eval()
