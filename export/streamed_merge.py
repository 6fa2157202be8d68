"""The LoRA merge streamed tensor by tensor from the base's safetensors files into the merged ones.

peft's `merge_and_unload` writes W + s B A into the loaded weights. transformers 5 maps safetensors
files into memory lazily, so a loaded model's weights are file pages the kernel can drop and re-read
under memory pressure; the merge would turn 13 of a 7B model's 16.6 GB into anonymous memory that must
stay resident (there is no swap here), and the export would need a machine with ~18 GB free. Streaming
needs one tensor: each is read from its source shard, the adapted ones merged in float32
(W + s B A, rounded once to the stored dtype: peft rounds s B A to it first, then the sum), and written
to a shard of the same name, so the output is sharded as the source is, with the same index.

safetensors' `save_file` takes a whole shard's tensors (3.9 GB for Qwen2-VL-7B's); the writer here
streams the documented format (8-byte little-endian header length, JSON header with dtype, shape and
byte offsets, the raw bytes in order) one tensor at a time.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from navig.export import progress
from navig.export.adapters import loaded_name
from navig.export.errors import CheckpointError, ExportError

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class Lora:
    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scale: float

    def merged(self, weight: torch.Tensor) -> torch.Tensor:
        delta = (self.b.float() @ self.a.float()) * self.scale
        return (weight.float() + delta).to(weight.dtype)


def lora_weights(peft_model: Any, adapted: list[str]) -> dict[str, Lora]:
    """Each adapted Linear's LoRA factors (copied: small), by its name in the loaded model."""
    from peft.tuners.lora import LoraLayer

    found = {}
    for name in adapted:
        layer = peft_model.base_model.model.get_submodule(name)
        assert isinstance(layer, LoraLayer)
        (adapter,) = layer.active_adapters
        if not isinstance(layer.base_layer, torch.nn.Linear) or layer.use_dora.get(adapter):
            raise CheckpointError(
                f"{name}: only plain LoRA on Linear layers is merged (found {type(layer).__name__})"
            )
        found[name] = Lora(
            layer.lora_A[adapter].weight.detach().clone(),
            layer.lora_B[adapter].weight.detach().clone(),
            float(layer.scaling[adapter]),
        )
    return found


def write_safetensors(path: Path, names: list[str], tensor: Any, metadata: dict[str, str]) -> int:
    """Streams `tensor(name)` for each name into a safetensors file; `tensor` is called twice per name
    only for its header (dtype, shape: `tensor(name, header=True)` returns a meta tensor)."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in names:
        meta = tensor(name, header=True)
        nbytes = meta.numel() * meta.element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[meta.dtype],
            "shape": list(meta.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as f:
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for name in names:
            data = tensor(name).contiguous()
            f.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
    return 8 + len(encoded) + offset


def merge_files(base: Path, target: Path, loras: dict[str, Lora], shards: list[Path]) -> None:
    """Every shard of `base` into `target` under its name, the LoRA-adapted weights merged."""
    from safetensors import safe_open

    used: set[str] = set()
    total = sum(s.stat().st_size for s in shards)
    with progress.byte_task("reasoner: writing merged weights", total) as update:
        for k, shard in enumerate(shards, 1):
            update(shards=f"shard {k}/{len(shards)}")
            with safe_open(shard, "pt") as f:
                keys = list(f.keys())
                lora = {
                    key: loras.get(loaded_name(key).removesuffix(".weight"))
                    for key in keys
                    if key.endswith(".weight")
                }
                used.update(loaded_name(key).removesuffix(".weight") for key, found in lora.items() if found)

                def tensor(key: str, header: bool = False, f: Any = f, lora: dict = lora) -> torch.Tensor:
                    if header:
                        s = f.get_slice(key)
                        return torch.empty(s.get_shape(), dtype=_torch_dtype(s.get_dtype()), device="meta")
                    value = f.get_tensor(key)
                    if (adapter := lora.get(key)) is not None:
                        value = adapter.merged(value)
                    update(value.numel() * value.element_size())
                    return value

                write_safetensors(target / shard.name, keys, tensor, f.metadata() or {"format": "pt"})
    if missing := sorted(set(loras) - used):
        raise ExportError(f"reasoner: adapted layers with no weight in {base}: {missing[:3]}")


def _torch_dtype(name: str) -> torch.dtype:
    for dtype, code in SAFETENSORS_DTYPES.items():
        if code == name:
            return dtype
    raise CheckpointError(f"safetensors dtype {name} is not supported")


def copy_index(base: Path, target: Path, index_name: str) -> None:
    if (base / index_name).is_file():
        shutil.copy2(base / index_name, target / index_name)
