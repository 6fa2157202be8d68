"""Throughput of one fixed encoder-heavy load through a Triton pool of one, then two, real tritonservers.

The `--preset` repository (default `small`, built once under build/bench by `benchmarks.presets`) is
served by two embedded Tritons that load only `detector` and `clip_image` (explicit model control). The
load goes through the orchestrator's own routing (`TritonPools` from the settings, a `vision` pool whose
target is `ipv4:127.0.0.1:A` or `ipv4:127.0.0.1:A,127.0.0.1:B`): a closed loop at `--concurrency` where
every `--crops-per-photo`+1 calls are one detector call on a 480x640 photo and the rest clip_image calls
on 224x224 crops (a photo and its crops). Measured per pool size: calls/s, latency percentiles, how the
calls split over the servers (Triton's own statistics), and the CPU seconds each server's process tree
used against the wall time (the machine's cores bound it: two servers share the same cores).
Run: `python -m benchmarks.scale_out` -> build/bench/scale_out.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks.presets import prepare
from navig.client.profile.machine import machine
from navig.client.profile.triton_stats import settled_snapshot
from navig.model_repository import contract
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.pools import TritonPools
from navig.orchestrator.settings import load_settings

MODELS = (contract.DETECTOR, contract.CLIP_IMAGE)


def cpu_seconds(server: EmbeddedTriton) -> float:
    """User + system CPU of tritonserver and its python-backend stubs (the models run in the stubs)."""
    assert server.pid is not None
    root = psutil.Process(server.pid)
    total = 0.0
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def served(servers: list[EmbeddedTriton]) -> list[int]:
    """Successful requests of the load's models per server, from each server's own statistics."""
    counts = []
    for server in servers:
        stats = settled_snapshot(server.grpc_url, attempts=5)
        counts.append(sum(stats.get(m, {}).get("success_count", 0) for m in MODELS))
    return counts


async def closed_loop(
    pools: TritonPools,
    seconds: float,
    concurrency: int,
    crops_per_photo: int,
    progress: Progress | None,
    with_detector: bool = True,
) -> dict[str, list[float]]:
    """Latencies (s) per model of every call finished within `seconds`; any failure raises."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (1, 480, 640, 3), dtype=np.uint8)
    crop = rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    calls = [(contract.DETECTOR, {contract.DETECTOR_IMAGES: photo})] if with_detector else []
    calls += [(contract.CLIP_IMAGE, {contract.CLIP_IMAGE_IMAGES: crop})] * crops_per_photo
    latencies: dict[str, list[float]] = {m: [] for m in MODELS}
    started = time.monotonic()
    task = progress.add_task("load", total=seconds) if progress else None

    async def worker(offset: int) -> None:
        i = offset
        while time.monotonic() - started < seconds:
            model, inputs = calls[i % len(calls)]
            begun = time.perf_counter()
            await pools.infer(model, inputs, Deadline.after(60))
            latencies[model].append(time.perf_counter() - begun)
            i += 1
            if progress is not None and task is not None:
                progress.update(task, completed=min(seconds, time.monotonic() - started))

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return latencies


def measure(servers: list[EmbeddedTriton], args: argparse.Namespace, progress: Progress) -> dict:
    target = "ipv4:" + ",".join(s.grpc_url for s in servers)
    settings = load_settings(
        triton_url=servers[0].grpc_url, pools={"vision": {"target": target, "models": list(MODELS)}}
    )

    async def run() -> tuple[dict[str, list[float]], float, list[float], list[int], list[int]]:
        pools = TritonPools.from_settings(settings, Metrics())
        try:
            await closed_loop(pools, args.warmup, args.concurrency, args.crops_per_photo, None, args.detector)
            counts_before = await asyncio.to_thread(served, servers)
            cpu_before = [cpu_seconds(s) for s in servers]
            started = time.perf_counter()
            latencies = await closed_loop(
                pools, args.seconds, args.concurrency, args.crops_per_photo, progress, args.detector
            )
            wall = time.perf_counter() - started
            cpu = [cpu_seconds(s) - b for s, b in zip(servers, cpu_before)]
            counts_after = await asyncio.to_thread(served, servers)
            return latencies, wall, cpu, counts_before, counts_after
        finally:
            await pools.close()

    latencies, wall, cpu, before, after = asyncio.run(run())
    calls = sum(len(v) for v in latencies.values())
    every = sorted(x for v in latencies.values() for x in v)
    return {
        "servers": len(servers),
        "target": target,
        "wall_s": wall,
        "calls": calls,
        "calls_per_s": calls / wall,
        "photos_per_s": len(latencies[contract.DETECTOR]) / wall,
        "p50_ms": statistics.median(every) * 1e3,
        "p95_ms": every[int(0.95 * (len(every) - 1))] * 1e3,
        "per_model_p50_ms": {m: statistics.median(v) * 1e3 for m, v in latencies.items() if v},
        "calls_per_server": [a - b for a, b in zip(after, before)],
        "cpu_s_per_server": cpu,
        "cores_busy": sum(cpu) / wall,  # of psutil.cpu_count() cores
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--root", type=Path, default=Path("build/bench"))
    parser.add_argument("--model-repository", type=Path, help="serve this export instead of the preset's")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured load per pool size")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--crops-per-photo", type=int, default=4)
    parser.add_argument(
        "--detector",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a photo per crops (or crops only)",
    )
    args = parser.parse_args()
    console = Console()
    repository = args.model_repository or prepare(args.preset, args.root, console)[1]
    load_args = ("--model-control-mode=explicit", *(f"--load-model={m}" for m in MODELS))
    servers = [
        EmbeddedTriton(TritonConfig(repository, ports=TritonPorts.free(), extra_args=load_args))
        for _ in range(2)
    ]
    results = []
    try:
        with console.status("starting two Tritons (detector, clip_image)..."):
            for server in servers:
                server.start()
        with Progress(console=console, transient=True) as progress:
            for size in (1, 2):
                results.append(measure(servers[:size], args, progress))
    finally:
        for server in servers:
            server.stop()
    one, two = results
    summary = {"speedup_two_vs_one": two["calls_per_s"] / one["calls_per_s"]}
    table = Table(
        title=f"{args.model_repository or args.preset + ' preset'}, concurrency {args.concurrency}, "
        + (f"1 photo + {args.crops_per_photo} crops" if args.detector else "crops only")
        + " (cores busy: the Triton processes only)"
    )
    for column in ("servers", "calls/s", "photos/s", "p50 ms", "p95 ms", "calls per server", "cores busy"):
        table.add_column(column)
    for r in results:
        table.add_row(
            str(r["servers"]),
            f"{r['calls_per_s']:.1f}",
            f"{r['photos_per_s']:.1f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            " / ".join(map(str, r["calls_per_server"])),
            f"{r['cores_busy']:.2f} of {psutil.cpu_count()}",
        )
    console.print(table)
    console.print(f"two servers vs one: {summary['speedup_two_vs_one']:.2f}x calls/s")
    out = args.root / "scale_out.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    preset = "custom" if args.model_repository else args.preset
    payload = {"machine": machine(), "preset": preset, "args": {k: str(v) for k, v in vars(args).items()}}
    out.write_text(json.dumps(payload | {"results": results, "summary": summary}, indent=2) + "\n")
    console.print(f"-> {out}")


if __name__ == "__main__":
    main()
