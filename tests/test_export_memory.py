"""The exporter holds one copy of the VLM in the checkpoint's dtype: its peak RSS, measured from the process.

`navig export build` runs in a child process on the `small` demo Qwen2-VL + LoRA saved in bfloat16 and
sharded (as real releases are), and on the `tiny` one saved alike. The child reports its own peak RSS
(getrusage ru_maxrss). The interpreter, torch, transformers, tokenizer and forward passes cost the same
few hundred MB for both presets and dwarf a small checkpoint, so the figure checked is the difference:
(peak small - peak tiny) / (bytes small - bytes tiny), the resident bytes the exporter needs per byte
of checkpoint. See PEAK_PER_CHECKPOINT_BYTE for the bound (benchmarks/export_7b.py measures the 7B).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from navig.export.demo_checkpoints.qwen2_vl import build_qwen2_vl

# One copy of the weights is 1.0: the model's pages, mapped from its files. Measured on this machine
# (2026-12-01, two runs): 3.41 and 3.42. The rest is not all explained: activations, the LoRA in float32
# and allocator growth scale with the model's width as well as with its bytes, and the tiny preset is
# 100x narrower. A second copy of the weights (an in-place merge turning the mapped pages into anonymous
# ones while they stay mapped, a deep copy for the parity check, a float32 load of the bfloat16 files)
# adds >= 1.0; 4.0 fails those.
PEAK_PER_CHECKPOINT_BYTE = 4.0
SHARD = "40MB"  # the small preset's 61 MB in bfloat16 -> two shards and an index
CHILD = """
import resource, sys
from pathlib import Path
from navig.export.cli import run_build
from navig.export.spec import load_spec
run_build(load_spec(Path(sys.argv[1])))
print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def bfloat16_checkpoint(folder: Path, preset: str) -> int:
    """The preset's Qwen2-VL + LoRA under `folder`, the base re-saved in bfloat16 and sharded; returns
    the base's weight bytes."""
    from transformers import Qwen2VLForConditionalGeneration

    built = folder / "float32"
    build_qwen2_vl(built / "qwen2_vl", folder / "lora", preset)
    model = Qwen2VLForConditionalGeneration.from_pretrained(built / "qwen2_vl", dtype=torch.bfloat16)
    model.save_pretrained(folder / "base", max_shard_size=SHARD)
    for side in (built / "qwen2_vl").iterdir():
        if not side.name.startswith(("model", "config")):
            shutil.copy2(side, folder / "base" / side.name)
    shutil.rmtree(built)
    spec = f"ocr: null\noutput: {folder / 'repository'}\nvlm:\n  base: base\n  reasoner_adapter: lora\n"
    (folder / "export.yaml").write_text(spec)
    return sum(p.stat().st_size for p in (folder / "base").glob("*.safetensors"))


def export_peak_rss(folder: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder / "export.yaml")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("MAXRSS")]
    return int(line.split()[1])


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int, int]]:
    """preset -> (folder, checkpoint bytes, exporter peak RSS)."""
    found = {}
    for preset in ("tiny", "small"):
        folder = tmp_path_factory.mktemp(preset)
        size = bfloat16_checkpoint(folder, preset)
        found[preset] = (folder, size, export_peak_rss(folder))
    return found


def test_peak_rss_is_one_copy_of_the_checkpoint(exports):
    (_, tiny_bytes, tiny_peak), (_, small_bytes, small_peak) = exports["tiny"], exports["small"]
    per_byte = (small_peak - tiny_peak) / (small_bytes - tiny_bytes)
    print(
        f"\npeak RSS: tiny {tiny_peak / 2**20:.0f} MiB ({tiny_bytes / 2**20:.1f} MiB checkpoint), small "
        f"{small_peak / 2**20:.0f} MiB ({small_bytes / 2**20:.1f} MiB): {per_byte:.2f} resident bytes per "
        f"checkpoint byte (bound {PEAK_PER_CHECKPOINT_BYTE})"
    )
    assert per_byte <= PEAK_PER_CHECKPOINT_BYTE


def test_bfloat16_sharded_checkpoint_exports_bfloat16_sharded(exports):
    folder, _, _ = exports["small"]
    weights = folder / "repository" / "reasoner" / "1" / "weights"
    index = json.loads((weights / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(p.name for p in weights.glob("*.safetensors"))
    assert len(list(weights.glob("*.safetensors"))) == len(list((folder / "base").glob("*.safetensors"))) > 1
    assert json.loads((weights / "config.json").read_text())["torch_dtype"] == "bfloat16"
    report = json.loads((folder / "repository" / "export_report.json").read_text())
    (reasoner,) = [a for a in report["artifacts"] if a["model"] == "reasoner"]
    assert "bfloat16, one model in memory at a time" in reasoner["check"] and "greedy" in reasoner["check"]
    assert 0 < reasoner["max_abs_diff"] <= reasoner["tolerance"]
