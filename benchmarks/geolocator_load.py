"""End-to-end `Locate` latency and throughput: the whole stack on the embedded Triton, over gRPC.

Starts the embedded Triton on the model repository and the Geolocator service on loopback, warms
up, then sends the sample signs at each concurrency (closed loop: each worker sends its next
request when the last one returns). Reports p50/p90/p99 latency, throughput and the mean
duration of every pipeline stage from the responses' own timings.
Run: `make bench` (or `python -m benchmarks.geolocator_load --model-repository build/model_repository`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from navig.client.geolocator import GeolocatorClient
from navig.client.profile.machine import machine
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.cli import prepare_tools
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import load_settings


def run(address: str, images: list[bytes], concurrency: int, requests: int, options, progress) -> dict:
    task = progress.add_task(f"concurrency {concurrency}", total=requests)
    latencies: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)

    def one(i: int) -> None:
        started = time.perf_counter()
        response = client.locate_proto(images[i % len(images)], options)
        latencies.append((time.perf_counter() - started) * 1e3)
        for timing in response.timings:
            stages[timing.stage].append(timing.duration_ms)
        progress.advance(task)

    with GeolocatorClient(address) as client, ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(one, range(requests)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": requests,
        "throughput_rps": requests / elapsed,
        "latency_ms": {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90, 99)},
        "stage_mean_ms": {stage: statistics.fmean(values) for stage, values in sorted(stages.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=24, help="per concurrency level")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the server's")
    parser.add_argument("--out", type=Path, default=Path("build/bench/geolocator.json"))
    args = parser.parse_args()
    console = Console()
    images = [(SAMPLES_DIR / s.file).read_bytes() for s in load_samples(SAMPLES_DIR)]
    options = pb.LocateOptions(max_new_tokens=args.max_new_tokens)  # None: the server default

    config = TritonConfig(args.model_repository, ports=TritonPorts.free())
    with console.status("starting Triton and the Geolocator..."), EmbeddedTriton(config) as triton:
        settings = load_settings(triton_url=triton.grpc_url, port=0, metrics_port=None, log_json=False)
        settings = prepare_tools(settings, args.model_repository, console)
        with OrchestratorThread(settings) as server, Progress(console=console, transient=True) as progress:
            run(server.address, images, 2, 4, options, progress)  # warm-up: lazy loads, first batches
            results = [run(server.address, images, c, max(args.requests, c), options, progress)
                       for c in args.concurrency]  # fmt: skip
    report = {"machine": machine(), "max_new_tokens": args.max_new_tokens or settings.max_new_tokens,
              "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))

    table = Table("concurrency", "req/s", "p50 ms", "p90 ms", "p99 ms", *results[0]["stage_mean_ms"])
    for r in results:
        lat = r["latency_ms"]
        table.add_row(str(r["concurrency"]), f"{r['throughput_rps']:.2f}", *(f"{lat[k]:.0f}" for k in lat),
                      *(f"{v:.0f}" for v in r["stage_mean_ms"].values()))  # fmt: skip
    console.print(table)
    console.print(f"stage columns: mean duration in ms from the responses' timings; -> {args.out}")


if __name__ == "__main__":
    main()
