"""Pickled weights (*.bin, *.pt, *.pth, *.ckpt): named in a clear error, converted on request.

Unpickling can run arbitrary code, so the exporter never loads them. `navig export convert-pickle`
converts them with `torch.load(weights_only=True)`, which unpickles tensors and plain containers only
and refuses anything else: the user runs it deliberately, on files they trust.
"""

from __future__ import annotations

import json
from pathlib import Path

from navig.export.errors import CheckpointError

PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
CONVERT_COMMAND = "navig export convert-pickle"


def pickled_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in PICKLED_SUFFIXES)


def pickled_error(folder: Path, wanted: str) -> CheckpointError:
    """The error for a folder without `wanted` safetensors weights: names the pickled files, if any,
    and the command that converts them."""
    unsafe = pickled_files(folder) if folder.is_dir() else []
    if not unsafe:
        return CheckpointError(f"{folder}: no {wanted}")
    names = ", ".join(p.name for p in unsafe)
    return CheckpointError(
        f"{folder}: no {wanted}, only pickled weights ({names}), which are never loaded (unpickling runs "
        f"code). Convert them to safetensors with: {CONVERT_COMMAND} {folder}"
    )


def safetensors_name(path: Path) -> str:
    """pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors; adapter_model.bin ->
    adapter_model.safetensors: the names transformers and peft look for."""
    stem = path.stem.removeprefix("pytorch_")
    return f"{stem}.safetensors"


def convert_folder(folder: Path) -> list[Path]:
    """Every pickled file in `folder` as safetensors beside it (a pytorch_model.bin.index.json as a
    model.safetensors.index.json); returns the files written. The pickled files are left in place."""
    import torch
    from safetensors.torch import save_file

    written = []
    for path in pickled_files(folder):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot be read as a tensor state dict: {exc}") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # Lightning-style *.ckpt
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: not a flat name -> tensor state dict; convert it by hand")
        seen: set[int] = set()
        tensors = {}
        for name, tensor in state.items():  # shared storage (tied weights) is saved once per name
            tensor = tensor.contiguous()
            tensors[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
            seen.add(tensor.data_ptr())
        target = folder / safetensors_name(path)
        save_file(tensors, target, metadata={"format": "pt"})
        written.append(target)
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {k: safetensors_name(Path(v)) for k, v in data["weight_map"].items()}
        target = folder / "model.safetensors.index.json"
        target.write_text(json.dumps(data, indent=2) + "\n")
        written.append(target)
    if not written:
        raise CheckpointError(f"{folder}: no pickled weights ({', '.join(PICKLED_SUFFIXES)}) to convert")
    return written
