"""This stack against the NAVIG-faithful baseline and against the machine's limit, in one run.

On the same `--preset` checkpoints and the same sample photos, with the same new-token budget:
1. served: the embedded Triton (`cpu` profile) + the Geolocator over gRPC, closed loop at each
   `--concurrency` (every component on; `max_concurrency` raised to the highest level so the
   admission queue does not cap it);
2. in-process: the orchestrator's own pipeline with every model called in-process
   (`benchmarks/in_process.py`), one photo at a time: the compute on the critical path;
3. baseline: `benchmarks/navig_baseline`, the reference's loop in eager PyTorch, one photo at a time
   (it has no concurrency: its throughput is the same at every level).
Writes build/bench/versus_navig.json (with the machine description).
Run: `python -m benchmarks.versus_navig --preset small` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks import cpu_time
from benchmarks.in_process import latency_summary
from benchmarks.presets import prepare
from navig.client.images import read_rgb
from navig.client.profile.load import Budget, GeolocatorTarget, Level, run_level
from navig.client.profile.machine import machine
from navig.client.profile.report import summarise
from navig.client.profile.triton_stats import difference, settled_snapshot
from navig.export.cli import quiet_transformers
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings, load_settings
from navig.orchestrator.tools.guidebook.build import ensure_default_guidebook


def served(
    settings: Settings,
    repository: Path,
    images: list[bytes],
    levels: list[int],
    tokens: int,
    console: Console,
) -> list[dict]:
    options = pb.LocateOptions(max_new_tokens=tokens)
    config = TritonConfig(repository, ports=TritonPorts.free())
    with console.status("starting Triton and the Geolocator..."), EmbeddedTriton(config) as triton:
        settings = settings.model_copy(update={"triton_url": triton.grpc_url})
        cpu_now = functools.partial(cpu_time.snapshot, triton.pid, "orchestrator + load generator")
        with OrchestratorThread(settings) as server, Progress(console=console, transient=True) as progress:

            async def sweep() -> list[dict]:
                out = []
                async with GeolocatorTarget(server.address, images, options, False, 3600) as target:
                    await run_level(
                        target, Level(concurrency=2), Budget(requests=4), lambda _: None
                    )  # warm-up
                    for c in levels:
                        task = progress.add_task(f"served, concurrency {c}", total=max(len(images), 2 * c))
                        before = settled_snapshot(triton.grpc_url)
                        cpu_before = cpu_now()
                        started = time.perf_counter()
                        samples = await run_level(
                            target,
                            Level(concurrency=c),
                            Budget(requests=max(len(images), 2 * c)),
                            lambda _, t=task: progress.advance(t),
                        )
                        seconds = time.perf_counter() - started
                        cpu = cpu_time.spent(cpu_before, cpu_now(), len(samples))
                        models = difference(before, settled_snapshot(triton.grpc_url))
                        summary = summarise(Level(concurrency=c), samples, seconds, models)
                        ok = [s.latency_ms for s in samples if s.status == "OK"]
                        out.append(
                            {
                                "concurrency": c,
                                "errors": summary["errors"],
                                "stages_ms": summary["stages_ms"],
                                "triton_models": models,
                                "cpu_s_per_photo": cpu,
                                "cpu_utilisation": cpu_time.utilisation(cpu, len(samples), seconds),
                                **latency_summary(ok, summary["duration_s"]),
                            }
                        )
                return out

            return asyncio.run(sweep())


def in_process(repository: Path, guidebook: Path, images: int, tokens: int, root: Path) -> dict:
    """`benchmarks.in_process` in its own process, with OpenMP's idle threads passive as in the VLM stubs."""
    out = root / "in_process.json"
    command = [sys.executable, "-m", "benchmarks.in_process", "--repository", str(repository)]
    command += ["--guidebook", str(guidebook), "--images", str(images), "--max-new-tokens", str(tokens)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run([*command, "--out", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def baseline(checkpoints: Path, root: Path, photos: list[np.ndarray], tokens: int, console: Console) -> dict:
    from benchmarks.navig_baseline.pipeline import NavigBaseline

    with console.status("loading the NAVIG-faithful baseline..."):
        started = time.perf_counter()
        navig = NavigBaseline(checkpoints, root / "baseline-work", tokens)
        load_s = time.perf_counter() - started
    latencies, steps = [], []
    cpu_now = functools.partial(cpu_time.snapshot, None, "baseline (one process)")
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("baseline, one photo at a time", total=len(photos))
        cpu_before = cpu_now()
        started = time.perf_counter()
        for photo in photos:
            t = time.perf_counter()
            result = navig.locate(photo)
            latencies.append((time.perf_counter() - t) * 1e3)
            steps.append(result.timings_ms)
            progress.advance(task)
        seconds = time.perf_counter() - started
        cpu = cpu_time.spent(cpu_before, cpu_now(), len(photos))
    step_means = {k: statistics.fmean(s.get(k, 0.0) for s in steps) for k in steps[0]} if steps else {}
    return {
        "load_s": load_s,
        "steps_ms": step_means,
        "cpu_s_per_photo": cpu,
        "cpu_utilisation": cpu_time.utilisation(cpu, len(photos), seconds),
        **latency_summary(latencies, seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--images", type=int, default=6, help="sample photos, the same for every side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--root", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    quiet_transformers()
    console = Console()
    checkpoints, repository = prepare(args.preset, args.root, console)
    files = [SAMPLES_DIR / s.file for s in load_samples(SAMPLES_DIR)][: args.images]
    images = [f.read_bytes() for f in files]
    with console.status("embedding the default guidebook with the preset's CLIP..."):
        guidebook = ensure_default_guidebook(repository)
    settings = load_settings(
        port=0,
        metrics_port=None,
        log_json=False,
        guidebook_dir=guidebook,
        max_concurrency=max(args.concurrency),
        max_queue=4 * max(args.concurrency),
    )
    report = {
        "machine": machine(),
        "preset": args.preset,
        "images": len(images),
        "max_new_tokens": args.max_new_tokens,
    }
    report["served"] = served(settings, repository, images, args.concurrency, args.max_new_tokens, console)
    with console.status("the same pipeline with in-process models..."):
        report["in_process"] = in_process(repository, guidebook, len(images), args.max_new_tokens, args.root)
    report["baseline"] = baseline(
        checkpoints, args.root, [read_rgb(f) for f in files], args.max_new_tokens, console
    )
    out = args.root / "versus_navig.json"
    out.write_text(json.dumps(report, indent=1))

    base, limit = report["baseline"], report["in_process"]
    table = Table("", "req/s", "p50 ms", "p99 ms", "throughput vs baseline", title=f"{args.preset} preset")
    table.add_row(
        "baseline (eager, sequential)",
        f"{base['throughput_rps']:.3f}",
        f"{base['p50_ms']:.0f}",
        f"{base['p99_ms']:.0f}",
        "1.00x",
    )
    table.add_row(
        "in-process pipeline, c=1",
        f"{limit['throughput_rps']:.3f}",
        f"{limit['p50_ms']:.0f}",
        f"{limit['p99_ms']:.0f}",
        f"{limit['throughput_rps'] / base['throughput_rps']:.2f}x",
    )
    for s in report["served"]:
        table.add_row(
            f"served, c={s['concurrency']}",
            f"{s['throughput_rps']:.3f}",
            f"{s['p50_ms']:.0f}",
            f"{s['p99_ms']:.0f}",
            f"{s['throughput_rps'] / base['throughput_rps']:.2f}x",
        )
    console.print(table)
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
