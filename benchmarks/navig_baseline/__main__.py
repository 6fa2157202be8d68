"""`python -m benchmarks.navig_baseline`: times the NAVIG-faithful baseline on sample photos.

Run from the repository root, e.g.
    python -m benchmarks.navig_baseline --checkpoints build/bench/checkpoints-small --images samples \
        --limit 4 --max-new-tokens 32
Model loading is timed apart from the photos. The first photo is run once untimed (warm-up, as the
served and in-process sides), then every photo is timed, split by step, with its work counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks import cpu_time
from benchmarks.navig_baseline.pipeline import MAX_CROPS_PER_PROMPT, STEPS, BaselineResult, NavigBaseline
from navig.client.images import ImageReadError, expand_paths, read_rgb
from navig.client.profile.machine import machine
from navig.export.cli import quiet_transformers
from navig.orchestrator.navig_reference import MAX_NEW_TOKENS

COLUMNS = (*STEPS, "total")
HERE = "baseline (one process)"


def image_files(paths: list[Path], limit: int) -> list[Path]:
    try:
        files = expand_paths(paths)
    except ImageReadError as exc:
        raise SystemExit(str(exc)) from None
    if not files:
        raise SystemExit(f"{', '.join(map(str, paths))}: no images")
    return files[:limit] if limit > 0 else files


def timing_table(names: list[str], results: list[BaselineResult]) -> Table:
    table = Table(title="NAVIG baseline (eager PyTorch, one photo at a time): seconds per step")
    table.add_column("image")
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for column in ("crops", "gens", "answer"):
        table.add_column(column, justify="right" if column != "answer" else "left")
    for name, result in zip(names, results):
        answer = "ok" if result.answer is not None else "unparsed"
        seconds = [f"{result.timings_ms[c] / 1000:.2f}" for c in COLUMNS]
        table.add_row(name, *seconds, str(result.counts["crops"]), str(result.counts["generations"]), answer)
    mean = mean_timings_ms(results)
    table.add_row(
        "[bold]mean[/bold]",
        *[f"[bold]{mean[c] / 1000:.2f}[/bold]" for c in COLUMNS],
        f"{statistics.fmean(r.counts['crops'] for r in results):.1f}",
        f"{statistics.fmean(r.counts['generations'] for r in results):.1f}",
        "",
    )
    return table


def mean_timings_ms(results: list[BaselineResult]) -> dict[str, float]:
    return {c: statistics.fmean(r.timings_ms[c] for r in results) for c in COLUMNS}


def summary(results: list[BaselineResult]) -> dict[str, dict[str, float]]:
    """Means and medians over the photos (the machine may be shared: a median resists one noisy
    photo), and the work done in total."""
    details = results[0].detail_ms
    return {
        "mean_ms": mean_timings_ms(results),
        "median_ms": {c: statistics.median(r.timings_ms[c] for r in results) for c in COLUMNS},
        "mean_detail_ms": {k: statistics.fmean(r.detail_ms[k] for r in results) for k in details},
        "mean_counts": {k: statistics.fmean(r.counts[k] for r in results) for k in results[0].counts},
        "total_counts": {k: sum(r.counts[k] for r in results) for k in results[0].counts},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", type=Path, default=Path("build/bench/checkpoints-small"))
    parser.add_argument("--images", type=Path, nargs="+", default=[Path("samples")], help="files or folders")
    parser.add_argument("--limit", type=int, default=4, help="first N images (0: all)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="every generation (NAVIG: %(default)s)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default, as the in-process side)"
    )
    parser.add_argument("--max-crops-per-prompt", type=int, default=MAX_CROPS_PER_PROMPT)
    parser.add_argument("--out", type=Path, default=Path("build/bench/baseline.json"))
    args = parser.parse_args(argv)

    quiet_transformers()
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for every column
        console = Console(width=160)
    files = image_files(args.images, args.limit)
    with tempfile.TemporaryDirectory(prefix="navig-baseline-") as work_dir:
        started = time.perf_counter()
        with console.status("loading models (reasoner = base + unmerged LoRA, base, GroundingDINO)"):
            baseline = NavigBaseline(
                args.checkpoints,
                Path(work_dir),
                args.max_new_tokens,
                args.threads,
                max_crops_per_prompt=args.max_crops_per_prompt,
            )
        load_seconds = time.perf_counter() - started
        console.print(f"models loaded in {load_seconds:.1f} s: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in baseline.load_seconds.items()))  # fmt: skip
        photos = [read_rgb(path) for path in files]
        with console.status(f"warm-up on {files[0].name} (not timed)"):
            started = time.perf_counter()
            baseline.locate(photos[0])
            warmup_seconds = time.perf_counter() - started
        results = []
        cpu_before, started = cpu_time.snapshot(None, HERE), time.perf_counter()
        for path, photo in zip(files, photos):
            with console.status(f"{path.name}"):
                results.append(baseline.locate(photo))
            total = results[-1].timings_ms["total"] / 1000
            console.print(f"{path.name}: {total:.1f} s, {results[-1].counts}")
        timed_seconds = time.perf_counter() - started
        cpu = cpu_time.spent(cpu_before, cpu_time.snapshot(None, HERE), len(results))

    console.print(timing_table([p.name for p in files], results))
    report = {
        "benchmark": "navig_baseline",
        "machine": machine(),
        "settings": {
            "checkpoints": str(args.checkpoints),
            "images": [str(p) for p in files],
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "max_crops_per_prompt": args.max_crops_per_prompt,
            "dtype": "float32",
            "device": "cpu",
        },
        "load_seconds": {"total": load_seconds, **baseline.load_seconds},
        "warmup_seconds": warmup_seconds,
        "timed_seconds": timed_seconds,
        "cpu_s_per_photo": cpu,
        "cpu_utilisation": cpu_time.utilisation(cpu, len(results), timed_seconds),
        **summary(results),
        "images": [{"file": p.name, **r.to_json()} for p, r in zip(files, results)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
