"""Fuzzes a running Geolocator with generated cases (`benchmarks.fuzz_cases`) at a few concurrent calls.

Fails (exit 1) on any INTERNAL or UNKNOWN status, on a call that ended without a gRPC status, or when
the health service stops answering SERVING for `navig.v1.Geolocator` (checked every few seconds and at
the end). A status the case's kind does not expect (OK for a truncated image, say) is listed for a
person to read but does not fail the run: it is not a crash. Case `i` of seed `s` is the same bytes
every time (`--seed s --start i --cases 1` replays it); its request id is `fuzz-i` in the server log.
Run against `navig serve`: `python -m benchmarks.fuzz --address 127.0.0.1:50051 --cases 10000`.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from benchmarks import fuzz_cases
from benchmarks.fuzz_cases import Case
from navig.client.profile.load import Budget, GeolocatorTarget, Level, Sample, run_level
from navig.client.profile.machine import machine
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb

SERVICE = contract.GEOLOCATOR_SERVICE
CRASHES = ("INTERNAL", "UNKNOWN", "LOST")  # LOST: the call ended without any gRPC status


@dataclass
class FuzzSample(Sample):
    index: int = 0
    kind: str = ""


class FuzzTarget(GeolocatorTarget):
    """`Locate` with case `start + n` as request n: the load generator's channel, one case per call."""

    def __init__(self, address: str, make: Callable[[int], Case], timeout_s: float, start: int = 0) -> None:
        super().__init__(address, [], pb.LocateOptions(), stream=False, timeout_s=timeout_s)
        self.make, self.start = make, start

    async def __call__(self, n: int) -> FuzzSample:
        index = self.start + n
        case = await asyncio.to_thread(self.make, index)  # a bomb or 30 MiB takes a moment to make
        request = pb.LocateRequest(image=case.image, options=case.options, request_id=f"fuzz-{index}")
        started = time.perf_counter()
        status, error = "OK", ""
        try:
            await self._stub.Locate(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            status, error = exc.code().name, exc.details() or ""
        except Exception as exc:  # whatever it was, the call has no status: a finding
            status, error = "LOST", repr(exc)
        latency = (time.perf_counter() - started) * 1e3
        return FuzzSample(started, latency, status, error=error, index=index, kind=case.kind)


class HealthWatch:
    """grpc.health.v1 for the Geolocator, polled every `every_s`; any answer but SERVING is a loss."""

    def __init__(self, address: str, every_s: float) -> None:
        self.address, self.every_s = address, every_s
        self.checks: list[dict[str, float | str]] = []
        self._started = time.perf_counter()

    @property
    def lost(self) -> bool:
        return any(check["status"] != "SERVING" for check in self.checks)

    async def check(self) -> str:
        async with grpc.aio.insecure_channel(self.address) as channel:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=10
                )
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.aio.AioRpcError as exc:
                status = exc.code().name
        self.checks.append({"t_s": round(time.perf_counter() - self._started, 1), "status": status})
        return status

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.check()


async def fuzz(
    address: str,
    make: Callable[[int], Case],
    cases: int,
    concurrency: int,
    *,
    start: int = 0,
    timeout_s: float = 120.0,
    health_every_s: float = 10.0,
    progress: Progress | None = None,
) -> dict:
    """Sends `cases` cases, `concurrency` at a time; the report (also what `--out` holds)."""
    health = HealthWatch(address, health_every_s)
    if (status := await health.check()) != "SERVING":
        raise RuntimeError(f"{address}: health of {SERVICE} is {status}, not SERVING; is the server up?")
    task = progress.add_task("fuzz", total=cases) if progress else None
    crashes = 0

    def done(sample: Sample) -> None:
        nonlocal crashes
        crashes += sample.status in CRASHES
        if progress and task is not None:
            label = f"fuzz [red]{crashes} crashes" if crashes else "fuzz"
            progress.update(task, advance=1, description=label)

    watch = asyncio.create_task(health.watch())
    started = time.perf_counter()
    try:
        async with FuzzTarget(address, make, timeout_s, start) as target:
            samples = await run_level(target, Level(concurrency=concurrency), Budget(requests=cases), done)
    finally:
        watch.cancel()
    wall_s = time.perf_counter() - started
    await health.check()
    return report(samples, health, wall_s) | {"address": address, "concurrency": concurrency, "start": start}


def report(samples: list, health: HealthWatch, wall_s: float) -> dict:
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    latency: dict[str, list[float]] = defaultdict(list)
    for s in samples:
        by_kind[s.kind][s.status] += 1
        latency[s.kind].append(s.latency_ms)
    crashes = [s for s in samples if s.status in CRASHES]
    unexpected = [s for s in samples if s.status not in fuzz_cases.KINDS[s.kind].expect and s not in crashes]

    def listed(items: list) -> list[dict]:
        keep = ("index", "kind", "status", "error", "latency_ms")
        ordered = sorted(items, key=lambda s: s.index)
        return [{k: v for k, v in asdict(s).items() if k in keep} for s in ordered]

    return {
        "machine": machine(),
        "cases": len(samples),
        "wall_s": round(wall_s, 1),
        "by_kind": {kind: dict(counts) for kind, counts in sorted(by_kind.items())},
        "latency_ms": {k: {"p50": float(np.percentile(v, 50)), "max": max(v)} for k, v in latency.items()},
        "crashes": listed(crashes),
        "unexpected": listed(unexpected)[:200],
        "unexpected_count": len(unexpected),
        "health": health.checks,
        "health_lost": health.lost,
        "passed": not crashes and not health.lost,
    }


def table(result: dict) -> Table:
    statuses = sorted({s for counts in result["by_kind"].values() for s in counts},
                      key=lambda s: (s not in ("OK", "INVALID_ARGUMENT"), s))  # fmt: skip
    unexpected = Counter(item["kind"] for item in result["unexpected"])
    out = Table("kind", "cases", *statuses, "unexpected", "p50 ms", "max ms", title="statuses by case kind")
    for kind, counts in result["by_kind"].items():
        cells = [str(counts.get(s, "")) for s in statuses]
        cells = [f"[red]{c}" if s in CRASHES and c else c for s, c in zip(statuses, cells)]
        lat = result["latency_ms"][kind]
        out.add_row(kind, str(sum(counts.values())), *cells, str(unexpected.get(kind, "")),
                    f"{lat['p50']:.0f}", f"{lat['max']:.0f}")  # fmt: skip
    return out


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--address", default="127.0.0.1:50051", help="a running Geolocator")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="index of the first case (replays)")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per call")
    parser.add_argument("--health-every-s", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("build/bench/fuzz.json"))
    args = parser.parse_args()
    console = Console()
    make = functools.partial(fuzz_cases.case, args.seed)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            result = asyncio.run(fuzz(args.address, make, args.cases, args.concurrency, start=args.start,
                                      timeout_s=args.timeout_s, health_every_s=args.health_every_s,
                                      progress=progress))  # fmt: skip
    except RuntimeError as exc:
        console.print(f"[red]{exc}")
        sys.exit(2)
    result["seed"] = args.seed
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    console.print(table(result))
    for item in result["crashes"][:20]:
        console.print(f"[red]{item['status']}[/] case {item['index']} ({item['kind']}): {item['error']}")
    if result["unexpected_count"]:
        console.print(f"{result['unexpected_count']} statuses the case kind does not expect (see {args.out})")
    health = "lost at least once" if result["health_lost"] else "SERVING throughout"
    console.print(f"{result['cases']} cases in {result['wall_s']} s; health {health}; -> {args.out}")
    if not result["passed"]:
        console.print("[red]FAILED[/]: INTERNAL/UNKNOWN/lost calls or health not SERVING")
        sys.exit(1)


if __name__ == "__main__":
    main()
