"""VLM decoding speed: the merged REASONER (what we serve) vs base + LoRA unmerged through peft (what
the reference runs), and one batched generation vs the same requests one after another.

Same checkpoints, same prompt and image, greedy, a fixed number of new tokens (EOS suppressed so
every run decodes exactly `--tokens`), in-process transformers on `--threads` threads. Medians of
`--repeats` after a warm-up.
Run: `python -m benchmarks.vlm_decode --checkpoints build/bench/checkpoints-small`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from navig.client.images import read_rgb
from navig.client.profile.machine import machine
from navig.export.cli import quiet_transformers
from navig.export.samples import SAMPLES_DIR
from navig.model_repository.vlm_engine import VlmInputs
from navig.orchestrator import prompts

BATCH = 8


def decode_seconds(model, inputs: dict[str, torch.Tensor], tokens: int, repeats: int) -> float:
    def run() -> None:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)

    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def batched(inputs_for: VlmInputs, images: list[np.ndarray], prompt: str) -> dict[str, torch.Tensor]:
    """One left-padded batch of (prompt, image) rows, as a batching server would build it."""
    rows = [inputs_for(prompt, image) for image in images]
    width = max(r["input_ids"].shape[1] for r in rows)
    pad = inputs_for.tokenizer.pad_token_id or 0

    def left(t: torch.Tensor, value: int) -> torch.Tensor:
        return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)

    out = {
        "input_ids": torch.cat([left(r["input_ids"], pad) for r in rows]),
        "attention_mask": torch.cat([left(r["attention_mask"], 0) for r in rows]),
        "mm_token_type_ids": torch.cat([left(r["mm_token_type_ids"], 0) for r in rows]),
        "pixel_values": torch.cat([r["pixel_values"] for r in rows]),
        "image_grid_thw": torch.cat([r["image_grid_thw"] for r in rows]),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoints", type=Path, default=Path("build/bench/checkpoints-small"))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("build/bench/vlm_decode.json"))
    args = parser.parse_args()
    from peft import PeftModel
    from transformers import Qwen2VLForConditionalGeneration

    quiet_transformers()
    torch.set_num_threads(args.threads)
    console = Console()
    base_dir, adapter = args.checkpoints / "qwen2_vl", args.checkpoints / "reasoner_lora"

    def load():
        return Qwen2VLForConditionalGeneration.from_pretrained(
            base_dir, local_files_only=True, use_safetensors=True, dtype=torch.float32
        ).eval()

    unmerged = PeftModel.from_pretrained(load(), adapter, is_trainable=False).eval()
    merged = PeftModel.from_pretrained(load(), adapter, is_trainable=False).merge_and_unload().eval()
    config = merged.config
    inputs_for = VlmInputs(base_dir, config.vision_config.spatial_merge_size, config.image_token_id)
    images = [read_rgb(p) for p in sorted(SAMPLES_DIR.glob("*.jpg"))[:BATCH]]
    images = [np.asarray(Image.fromarray(i).resize((320, 240))) for i in images]  # one size: no padding
    one = inputs_for(prompts.REASONER, images[0])

    with console.status("decoding: peft unmerged, merged, sequential and batched..."):
        unmerged_s = decode_seconds(unmerged, one, args.tokens, args.repeats)
        merged_s = decode_seconds(merged, one, args.tokens, args.repeats)
        sequential_s = sum(
            decode_seconds(merged, inputs_for(prompts.REASONER, image), args.tokens, 1) for image in images
        )
        batch_s = decode_seconds(
            merged, batched(inputs_for, images, prompts.REASONER), args.tokens, args.repeats
        )
    results = {
        "tokens": args.tokens,
        "peft_unmerged_tok_s": args.tokens / unmerged_s,
        "merged_tok_s": args.tokens / merged_s,
        "merged_vs_unmerged": unmerged_s / merged_s,
        "sequential_8_tok_s": BATCH * args.tokens / sequential_s,
        "batched_8_tok_s": BATCH * args.tokens / batch_s,
        "batched_vs_sequential": sequential_s / batch_s,
    }
    table = Table("decoding", "tokens/s", title=f"{args.checkpoints.name}: {args.tokens} new tokens")
    table.add_row("base + LoRA unmerged (peft), one request", f"{results['peft_unmerged_tok_s']:.1f}")
    table.add_row("merged, one request", f"{results['merged_tok_s']:.1f}")
    table.add_row(f"merged, {BATCH} requests one after another", f"{results['sequential_8_tok_s']:.1f}")
    table.add_row(f"merged, {BATCH} requests in one batch", f"{results['batched_8_tok_s']:.1f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": machine(), "checkpoints": str(args.checkpoints), **results}, indent=1)
    )
    console.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
