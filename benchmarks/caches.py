"""Repeated photos through the served stack, with the result cache and Triton's response cache off and on.

`--photos` distinct sample photos, each asked `--repeats` times (round robin: every photo once, then
again...), closed loop at `--concurrency` over gRPC, on the embedded Triton and the Geolocator, in three
set-ups on the same photos and options:
- `none`: no cache: every request runs the pipeline;
- `result`: the Geolocator's result cache (`result_cache_entries`); a repeat is answered from memory;
- `triton`: Triton's response cache on the deterministic models (`--cache-config local`), the result
  cache off: a repeat still runs the pipeline and its VLM generations, but its detector, OCR and CLIP
  calls are answered from Triton's cache (what a result-cache miss on a known photo costs, e.g. other
  options).
Each set-up warms up on other photos first (so no measured photo is cached before its first ask).
Reports photos/s, p50/p90 latency, the share of answers marked `cached`, and Triton's cache hits per
model from its statistics. Writes build/bench/caches.json (with the machine description).
Run: `python -m benchmarks.caches --model-repository build/model_repository` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from navig.client.geolocator import GeolocatorClient
from navig.client.profile.machine import machine
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.cli import prepare_tools
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings, load_settings

# The models whose config.pbtxt enables the response cache (ocr_rec measured no hits: the ocr model above
# it answers a repeat first). An export made before they did gets a copy with it enabled.
CACHED_MODELS = (contract.DETECTOR, contract.CLIP_IMAGE, contract.OCR, contract.OCR_DET)
RESPONSE_CACHE = "\nresponse_cache { enable: true }\n"
WARM_UP = 4  # requests, on photos outside the measured set


def with_response_cache(repository: Path, folder: Path) -> Path:
    """`repository` with Triton's response cache enabled on CACHED_MODELS (a copy of their configs, the
    rest linked); returned as is when its configs enable it already."""
    configs = {m: (repository / m / "config.pbtxt").read_text() for m in CACHED_MODELS}
    if all("response_cache" in text for text in configs.values()):
        return repository
    for model in repository.iterdir():
        if not model.is_dir():
            continue
        if model.name not in configs:
            (folder / model.name).symlink_to(model.resolve())
            continue
        (folder / model.name).mkdir()
        for part in model.iterdir():
            if part.name != "config.pbtxt":
                (folder / model.name / part.name).symlink_to(part.resolve())
        text = configs[model.name]
        (folder / model.name / "config.pbtxt").write_text(
            text + ("" if "response_cache" in text else RESPONSE_CACHE)
        )
    return folder


def triton_cache_hits(url: str) -> dict[str, int]:
    """Response-cache hits per model since Triton started (models without the cache have none)."""
    client = triton_grpc.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)["model_stats"]
    finally:
        client.close()
    hits = {s["name"]: int(s["inference_stats"].get("cache_hit", {}).get("count", 0)) for s in stats}
    return {name: count for name, count in hits.items() if count}


def wait_serving(server: OrchestratorThread, timeout_s: float = 120.0) -> None:
    """Until health has seen every model ready (its first poll may come after the server starts)."""
    until = time.monotonic() + timeout_s
    while not server.orchestrator.health.serving:
        if time.monotonic() > until:
            raise TimeoutError(f"the Geolocator was not SERVING within {timeout_s:.0f} s")
        time.sleep(0.1)


def closed_loop(
    address: str,
    images: list[bytes],
    order: list[int],
    concurrency: int,
    options: pb.LocateOptions,
    progress: Progress,
    label: str,
) -> tuple[list[float], list[bool], float, list[int]]:
    """Closed loop: each worker sends its next photo once its last answer is back."""
    task = progress.add_task(label, total=len(order))
    latencies: list[float] = []
    cached: list[bool] = []
    sizes: list[int] = []

    def one(i: int) -> None:
        started = time.perf_counter()
        response = client.locate_proto(images[i], options)
        latencies.append((time.perf_counter() - started) * 1e3)
        cached.append(response.cached)
        sizes.append(response.ByteSize())
        progress.advance(task)

    with GeolocatorClient(address) as client, ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        list(pool.map(one, order))
        seconds = time.perf_counter() - started
    progress.remove_task(task)
    return latencies, cached, seconds, sizes


def measure(
    name: str,
    settings: Settings,
    triton: EmbeddedTriton,
    images: list[bytes],
    warm: list[bytes],
    args: argparse.Namespace,
    progress: Progress,
) -> dict[str, Any]:
    options = pb.LocateOptions(max_new_tokens=args.max_new_tokens)
    order = [i for _ in range(args.repeats) for i in range(len(images))]
    with OrchestratorThread(settings.model_copy(update={"triton_url": triton.grpc_url})) as server:
        wait_serving(server)
        closed_loop(server.address, warm, list(range(len(warm))), 2, options, progress, f"{name}: warm-up")
        before = triton_cache_hits(triton.grpc_url)
        latencies, cached, seconds, sizes = closed_loop(
            server.address, images, order, args.concurrency, options, progress, f"{name}: measured"
        )
        after = triton_cache_hits(triton.grpc_url)
    return {
        "setup": name,
        "requests": len(order),
        "photos_per_s": len(order) / seconds,
        "latency_ms": {f"p{q}": float(np.percentile(latencies, q)) for q in (50, 90)},
        "cached_share": sum(cached) / len(cached),
        "response_bytes_mean": sum(sizes) / len(sizes),  # about what one result-cache entry holds
        "triton_cache_hits": {
            m: after.get(m, 0) - before.get(m, 0) for m in after if after[m] != before.get(m, 0)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--photos", type=int, default=6, help="distinct sample photos")
    parser.add_argument("--repeats", type=int, default=3, help="times each photo is asked")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="per VLM generation")
    parser.add_argument("--triton-cache-mb", type=int, default=256, help="Triton's response cache size")
    parser.add_argument("--out", type=Path, default=Path("build/bench/caches.json"))
    args = parser.parse_args()
    console = Console()
    files = [SAMPLES_DIR / s.file for s in load_samples(SAMPLES_DIR)]
    images = [f.read_bytes() for f in files[: args.photos]]
    warm = [f.read_bytes() for f in files[args.photos : args.photos + WARM_UP]]
    settings = load_settings(port=0, metrics_port=None, log_json=False, max_concurrency=args.concurrency)
    settings = prepare_tools(settings, args.model_repository, console)
    result_cache = settings.model_copy(update={"result_cache_entries": 1024, "result_cache_ttl_s": 3600.0})
    results = []
    started = time.perf_counter()
    with ExitStack() as stack, Progress(console=console, transient=True) as progress:
        plain = TritonConfig(args.model_repository, ports=TritonPorts.free())
        with console.status("starting Triton..."), EmbeddedTriton(plain) as triton:
            results.append(measure("none", settings, triton, images, warm, args, progress))
            results.append(measure("result", result_cache, triton, images, warm, args, progress))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        repository = with_response_cache(args.model_repository, folder)
        cached = TritonConfig(repository, ports=TritonPorts.free(), response_cache_mb=args.triton_cache_mb)
        with console.status("starting Triton with its response cache..."), EmbeddedTriton(cached) as triton:
            results.append(measure("triton", settings, triton, images, warm, args, progress))
    report = {
        "machine": machine(),
        "model_repository": str(args.model_repository),
        "photos": args.photos,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "max_new_tokens": args.max_new_tokens,
        "triton_cache_models": list(CACHED_MODELS),
        "seconds": time.perf_counter() - started,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))

    base = results[0]["photos_per_s"]
    table = Table("caches", "photos/s", "vs none", "p50 ms", "p90 ms", "answers cached", "Triton cache hits")
    for r in results:
        hits = ", ".join(f"{m} {n}" for m, n in sorted(r["triton_cache_hits"].items())) or "-"
        table.add_row(r["setup"], f"{r['photos_per_s']:.2f}", f"{r['photos_per_s'] / base:.2f}x",
                      f"{r['latency_ms']['p50']:.0f}", f"{r['latency_ms']['p90']:.0f}",
                      f"{r['cached_share']:.0%}", hits)  # fmt: skip
    console.print(table)
    console.print(
        f"{args.photos} photos x {args.repeats} asks, concurrency {args.concurrency}, "
        f"{args.max_new_tokens} new tokens -> {args.out}"
    )


if __name__ == "__main__":
    main()
