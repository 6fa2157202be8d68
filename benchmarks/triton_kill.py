"""Kill the embedded Triton under load: what the calls get, and how long until SERVING again.

Against a running `navig serve` that started its own Triton (no `--triton-url`): Locate calls in a
closed loop at `--concurrency` (a caller told UNAVAILABLE waits `--retry-after` s, as a client backs
off), and every `--period` seconds (after `--warmup`) a SIGKILL of its tritonserver, `--kills` times.
Each call is put in a phase by when it started and ended: `in flight` (running at a kill), `down`
(started while health was not SERVING) or `up`. Reported per phase: status counts, and per kill:
seconds until health said NOT_SERVING and until SERVING again. Exit 1 on any INTERNAL/UNKNOWN, a
call that outlived its deadline, or a Triton that did not come back.

    python -m benchmarks.triton_kill --address 127.0.0.1:50051 --serve-pid PID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from navig.client.profile.load import Budget, GeolocatorTarget, Level, Sample, run_level
from navig.client.profile.machine import machine
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
BAD = {"INTERNAL", "UNKNOWN"}


def tritonserver(serve_pid: int) -> psutil.Process:
    servers = [p for p in psutil.Process(serve_pid).children() if p.name() == "tritonserver"]
    if len(servers) != 1:
        sys.exit(f"navig serve (pid {serve_pid}) has {len(servers)} tritonserver children; is it embedded?")
    return servers[0]


async def serving(stub: health_pb2_grpc.HealthStub) -> bool:
    try:
        request = health_pb2.HealthCheckRequest(service=contract.GEOLOCATOR_SERVICE)
        reply = await stub.Check(request, timeout=2)
    except grpc.aio.AioRpcError:
        return False
    return reply.status == SERVING


async def kill_and_watch(address: str, serve_pid: int, started: float, cap_s: float) -> dict:
    """One SIGKILL; times (since the run started) of the kill, NOT_SERVING and SERVING again."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        killed = time.perf_counter()
        tritonserver(serve_pid).send_signal(signal.SIGKILL)
        down = up = None
        while time.perf_counter() - killed < cap_s:
            ok = await serving(stub)
            now = time.perf_counter()
            if down is None and not ok:
                down = now
            elif down is not None and ok:
                up = now
                break
            await asyncio.sleep(0.2)
    return {
        "kill_s": round(killed - started, 2),
        "not_serving_after_s": round(down - killed, 2) if down else None,
        "serving_again_after_s": round(up - killed, 2) if up else None,
        "down": (killed - started, (up or killed + cap_s) - started),
    }


def phase(sample: Sample, downs: list[tuple[float, float]]) -> str:
    end = sample.start_s + sample.latency_ms / 1000
    if any(sample.start_s < kill < end for kill, _ in downs):
        return "in flight at a kill"
    if any(kill <= sample.start_s < up for kill, up in downs):
        return "started while down"
    return "up"


async def run(args: argparse.Namespace) -> dict:
    samples = load_samples(SAMPLES_DIR)
    images = [(SAMPLES_DIR / s.file).read_bytes() for s in samples]
    options = pb.LocateOptions(max_new_tokens=args.max_new_tokens)
    duration = args.warmup + args.kills * args.period
    async with GeolocatorTarget(args.address, images, options, False, args.timeout) as target:
        started = time.perf_counter()

        async def killer() -> list[dict]:
            kills = []
            for k in range(args.kills):
                await asyncio.sleep(max(0.0, started + args.warmup + k * args.period - time.perf_counter()))
                kills.append(await kill_and_watch(args.address, args.serve_pid, started, args.cap))
            return kills

        async def polite(n: int) -> Sample:
            sample = await target(n)
            if sample.status == "UNAVAILABLE":
                await asyncio.sleep(args.retry_after)
            return sample

        level, budget = Level(concurrency=args.concurrency), Budget(duration_s=duration)
        load = run_level(polite, level, budget, lambda _: None)
        results, kills = await asyncio.gather(load, killer())
    downs = [k.pop("down") for k in kills]
    by_phase: dict[str, Counter[str]] = {}
    for sample in results:
        by_phase.setdefault(phase(sample, downs), Counter())[sample.status] += 1
    hung = [s for s in results if s.latency_ms > (args.timeout + 1) * 1000]
    return {
        "machine": machine(),
        "concurrency": args.concurrency,
        "deadline_s": args.timeout,
        "calls": len(results),
        "kills": kills,
        "statuses_by_phase": {p: dict(c) for p, c in by_phase.items()},
        "calls_past_their_deadline": len(hung),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--serve-pid", type=int, required=True, help="pid of `navig serve`")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the first kill")
    parser.add_argument("--period", type=float, default=60.0, help="seconds between kills")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, seconds")
    parser.add_argument("--cap", type=float, default=300.0, help="give up waiting for SERVING after this")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--retry-after", type=float, default=0.5, help="a caller's pause after UNAVAILABLE")
    parser.add_argument("--out", type=Path, default=Path("build/bench/triton_kill.json"))
    args = parser.parse_args()
    console = Console()
    with console.status(f"load at c={args.concurrency}, {args.kills} kills of tritonserver..."):
        result = asyncio.run(run(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    table = Table("phase", "statuses", title=f"{result['calls']} calls, deadline {args.timeout:.0f} s")
    for name, counts in result["statuses_by_phase"].items():
        table.add_row(name, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    console.print(table)
    for k in result["kills"]:
        console.print(f"kill at {k['kill_s']} s: NOT_SERVING after {k['not_serving_after_s']} s, "
                      f"SERVING again after {k['serving_again_after_s']} s")  # fmt: skip
    statuses = {s for counts in result["statuses_by_phase"].values() for s in counts}
    failed = (statuses & BAD or result["calls_past_their_deadline"]
              or any(k["serving_again_after_s"] is None for k in result["kills"]))  # fmt: skip
    if failed:
        console.print(
            "[red]FAILED[/red]: an INTERNAL/UNKNOWN status, a call past its deadline, or no recovery"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
