"""One vision pass per image (the `vlm` engine's vision cache), off and on, on `reference`'s VLM rows.

`reference` comments on every crop and reads its text with the VLM (NAVIG's getComment and getOSM):
two rows per crop, showing the same pixels. The rows here are served `reference`'s on the first
`--photos` of its photos (default 2 of versus_navig's 4, about 20 rows: `make bench` stays short):
the crops versus_navig.json recorded (run `benchmarks.versus_navig` first), cut and prepared as the
SEARCHER prepares them (JPEG round trip, `fit_for_vlm`), the comment rows then the reading rows as the
two tools start them, in batches of the model's `max_batch_size` as Triton's batcher fills them. Each
side is a fresh engine on the exported `vlm` weights (one warm-up row), timed over every row; tokens
must be identical. Writes build/bench/vision_cache.json.
Run: `python -m benchmarks.vision_cache --preset small` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from benchmarks.presets import prepare
from benchmarks.versus_navig import crop_of
from navig.client.profile.machine import machine
from navig.export.cli import quiet_transformers
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.model_repository import contract
from navig.model_repository.vlm_engine import TransformersVlm
from navig.orchestrator import images, prompts
from navig.orchestrator.searcher.search import fit_for_vlm
from navig.orchestrator.settings import load_settings

Rows = list[tuple[str, np.ndarray]]  # (prompt, pixels) of one VLM row
CACHE_MB = 256.0  # the export spec's default (`vlm.vision_cache_mb`)


def reference_rows(versus: dict[str, Any], photos: int) -> Rows:
    """(prompt, pixels) of each VLM row `reference` sent about the first `photos` photos' crops."""
    settings = load_settings(port=0, metrics_port=None, log_json=False)
    files = [SAMPLES_DIR / s.file for s in load_samples(SAMPLES_DIR)]
    rows: Rows = []
    for file, crops in zip(files, versus["served_reference_work"]["crops"][:photos], strict=False):
        s, data = settings, file.read_bytes()
        photo = images.decode_image(data, s.max_image_bytes, s.max_image_pixels, s.min_image_side)
        views = []
        for where in crops:
            label, (x0, y0, x1, y1) = crop_of(where)
            pixels = images.jpeg_round_trip(photo[y0:y1, x0:x1])
            views.append((label, fit_for_vlm(pixels, settings.vlm_image_max_side, settings.min_image_side)))
        rows += [(prompts.DESCRIBE[label], view) for label, view in views]
        rows += [(prompts.READ_TEXT, view) for _, view in views]
    return rows


def run(weights: Path, rows: Rows, batch: int, tokens: int, cache_mb: float, progress: Progress) -> dict:
    """One side: a fresh engine, warmed up, timed over every row."""
    engine = TransformersVlm(weights, vision_cache_mb=cache_mb)
    warm_up = np.full((224, 224, 3), 127, np.uint8)  # pixels no row shows: no hit for the timed rows
    engine.generate_batch([rows[0][0]], [warm_up], [tokens], [None])
    task = progress.add_task(f"vision cache {'on' if cache_mb else 'off'}", total=len(rows))
    token_ids: list[list[int]] = []
    started = time.perf_counter()
    for first in range(0, len(rows), batch):
        chunk = rows[first : first + batch]
        answers = engine.generate_batch(
            [p for p, _ in chunk], [v for _, v in chunk], [tokens] * len(chunk), [None] * len(chunk)
        )
        token_ids += [a.token_ids for a in answers]
        progress.advance(task, len(chunk))
    seconds = time.perf_counter() - started
    cache = engine.vision_cache
    return {
        "cache_mb": cache_mb,
        "seconds": seconds,
        "rows_per_s": len(rows) / seconds,
        "vision_passes": None if cache is None else cache.misses - 1,  # less the warm-up's
        "vision_hits": None if cache is None else cache.hits,
        "token_ids": token_ids,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--photos", type=int, default=2, help="the first photos of versus_navig's")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="as versus_navig")
    parser.add_argument("--root", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    quiet_transformers()
    console = Console()
    _, repository = prepare(args.preset, args.root, console)
    versus_file = args.root / "versus_navig.json"
    if not versus_file.is_file():
        raise SystemExit(f"{versus_file} is missing: run `python -m benchmarks.versus_navig` first")
    versus = json.loads(versus_file.read_text())
    args.photos = min(args.photos, versus["images"])
    rows = reference_rows(versus, args.photos)
    if not rows:
        raise SystemExit(f"served `reference` cut no crops in {args.photos} photos: nothing to time")
    weights = repository / contract.VLM / "1" / "weights"
    batch = 8  # the export spec's `vlm.max_batch`
    with Progress(console=console, transient=True) as progress:
        off, on = (run(weights, rows, batch, args.max_new_tokens, mb, progress) for mb in (0.0, CACHE_MB))
    identical = sum(a == b for a, b in zip(off.pop("token_ids"), on.pop("token_ids"), strict=True))
    report = {
        "machine": machine(),
        "preset": args.preset,
        "photos": args.photos,
        "rows": len(rows),
        "batch": batch,
        "max_new_tokens": args.max_new_tokens,
        "off": off,
        "on": on,
        "speedup": off["seconds"] / on["seconds"],
        "identical_rows": identical,
    }
    out = args.root / "vision_cache.json"
    out.write_text(json.dumps(report, indent=1))
    console.print(
        f"{len(rows)} `reference` VLM rows ({args.photos} photos): {off['seconds']:.1f} s without the vision"
        f" cache, {on['seconds']:.1f} s with it ({report['speedup']:.2f}x; {on['vision_passes']} vision"
        f" passes, {on['vision_hits']} reused); tokens identical on {identical}/{len(rows)} rows -> {out}"
    )


if __name__ == "__main__":
    main()
