"""Random-initialised checkpoints in the real on-disk formats, for tests, demos and benchmarks.

Every later code path runs unchanged on real checkpoints; only the numbers inside differ.
Nothing is downloaded: tokenizers are trained offline in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from navig.export.spec import ClipSpec, DetectorSpec, ExportSpec, VlmSpec, dump_spec

PRESETS = ("tiny", "small")
SPEC_FILE = "export.yaml"


def build_demo_checkpoints(out: Path, preset: str) -> dict[str, int]:
    """Writes every checkpoint and an export spec for them; returns parameter counts by folder."""
    from navig.export.demo_checkpoints.clip import build_clip
    from navig.export.demo_checkpoints.grounding_dino import build_grounding_dino
    from navig.export.demo_checkpoints.qwen2_vl import build_qwen2_vl

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out.mkdir(parents=True, exist_ok=True)
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
    return counts
