"""Random-initialised checkpoints in the real on-disk formats, for tests, demos and benchmarks.

Every later code path runs unchanged on real checkpoints; only the numbers inside differ.
Nothing is downloaded: tokenizers are trained offline in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

from navig.export.fingerprint import demo_checkpoints_fingerprint, file_digests
from navig.export.spec import ClipSpec, DetectorSpec, ExportSpec, VlmSpec, dump_spec

PRESETS = ("tiny", "small")
SPEC_FILE = "export.yaml"
STAMP_FILE = ".demo_checkpoints.json"  # preset, fingerprint, parameter counts, sha256 of every file


def build_demo_checkpoints(out: Path, preset: str) -> dict[str, int]:
    """Writes every checkpoint and an export spec for them; returns parameter counts by folder."""
    from navig.export.demo_checkpoints.clip import build_clip
    from navig.export.demo_checkpoints.grounding_dino import build_grounding_dino
    from navig.export.demo_checkpoints.qwen2_vl import build_qwen2_vl

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP_FILE).unlink(missing_ok=True)  # a half-rewritten folder is never reused
    base, adapter = build_qwen2_vl(out / "qwen2_vl", out / "reasoner_lora", preset)
    counts = {
        "qwen2_vl": base,
        "reasoner_lora": adapter,
        "grounding_dino": build_grounding_dino(out / "grounding_dino", preset),
        "clip": build_clip(out / "clip", preset),
    }
    spec = ExportSpec(
        detector=DetectorSpec(checkpoint=Path("grounding_dino")),
        clip=ClipSpec(checkpoint=Path("clip")),
        vlm=VlmSpec(base=Path("qwen2_vl"), reasoner_adapter=Path("reasoner_lora")),
    )
    dump_spec(spec, out / SPEC_FILE)
    stamp = {
        "preset": preset,
        "inputs_sha256": demo_checkpoints_fingerprint(preset),
        "counts": counts,
        "files": file_digests(out, skip=(STAMP_FILE,)),
    }
    (out / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
    return counts


def reused_demo_checkpoints(out: Path, preset: str) -> dict[str, int] | None:
    """The parameter counts when `out` holds the preset's checkpoints as built by this navig (sources,
    version) with these libraries, every file unchanged since; else None."""
    try:
        stamp = json.loads((out / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    if stamp.get("preset") != preset or stamp.get("inputs_sha256") != demo_checkpoints_fingerprint(preset):
        return None
    counts = stamp.get("counts")
    if not isinstance(counts, dict) or stamp.get("files") != file_digests(out, skip=(STAMP_FILE,)):
        return None
    return counts
