"""Soak: N requests at concurrency C against a running Geolocator, watching every process's memory.

The sample photos go round in a closed loop (`client/profile/load.py`) with a small `max_new_tokens`.
The RSS of the orchestrator, of tritonserver and of each python-backend stub (labelled by its model, as
`benchmarks.cpu_time` does) is sampled before, every few seconds during, and after the run. Drift is
measured from the end of warm-up (the first 10% of requests: lazy loads, allocator arenas, caches) to the
end, per process and in total. RESOURCE_EXHAUSTED is load shedding, counted apart; a worker that is shed
backs off (doubling, up to `--backoff-max-s`) as a polite client would, so shedding does not crowd out the
work. Exit 1 on a lost request (no final status, or a stream without its result), any INTERNAL/UNKNOWN,
or total drift >= 5%.
Run against `navig serve`: `python -m benchmarks.soak --address 127.0.0.1:50051` (2,000 requests, c=32).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from benchmarks import cpu_time
from navig.client.profile.load import Budget, Call, GeolocatorTarget, Level, Sample, run_level
from navig.client.profile.machine import machine
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.orchestrator.api import geolocator_pb2 as pb

WARMUP_SHARE = 0.1
DRIFT_LIMIT_PCT = 5.0
CRASHES = ("INTERNAL", "UNKNOWN")
LOST = ("LOST", "INCOMPLETE")  # no gRPC status at all; a stream that ended without its result
SHED = "RESOURCE_EXHAUSTED"
MiB = 2**20


# --- processes ----------------------------------------------------------------------------------


def labels(processes: Iterable[tuple[int, str, list[str]]]) -> dict[int, str]:
    """(pid, name, command line) -> label: a python-backend stub by its model, any other process by its
    name; a model served by several instances (stubs) gets #2, #3, ... in pid order."""
    out: dict[int, str] = {}
    seen: Counter[str] = Counter()
    for pid, name, command in sorted(processes):
        base = cpu_time.model_of(command) or name
        seen[base] += 1
        out[pid] = base if seen[base] == 1 else f"{base}#{seen[base]}"
    return out


@dataclass
class Watched:
    """The processes whose memory is sampled: the orchestrator, and Triton's server with its stubs."""

    orchestrator: psutil.Process | None
    triton: psutil.Process | None

    def rss(self) -> dict[str, int]:
        """Resident bytes per labelled process now (Triton's children looked up again: a stub may restart)."""
        out: dict[str, int] = {}
        if self.orchestrator is not None:
            out |= _rss({self.orchestrator.pid: "orchestrator"}, [self.orchestrator])
        if self.triton is not None and not self.triton.is_running() and self.orchestrator is not None:
            self.triton = _started_triton(self.orchestrator) or self.triton  # restarted by its supervisor
        if self.triton is not None:
            try:
                members = [self.triton, *self.triton.children(recursive=True)]
            except psutil.NoSuchProcess:
                return out
            described = []
            for p in members:
                try:
                    described.append((p.pid, p.name(), p.cmdline()))
                except psutil.NoSuchProcess:
                    continue
            out |= _rss(labels(described), members)
        return out

    def pids(self) -> dict[str, int | None]:
        return {"orchestrator": _pid(self.orchestrator), "tritonserver": _pid(self.triton)}


def _pid(process: psutil.Process | None) -> int | None:
    return process.pid if process is not None else None


def _rss(named: Mapping[int, str], processes: Iterable[psutil.Process]) -> dict[str, int]:
    out = {}
    for p in processes:
        try:
            if p.pid in named:
                out[named[p.pid]] = p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return out


def find(address: str, orchestrator_pid: int | None, triton_pid: int | None) -> Watched:
    """The given pids; else the process listening on the address's port (or the one `navig serve`), and
    the tritonserver it started (or the only one running)."""
    orchestrator = psutil.Process(orchestrator_pid) if orchestrator_pid else _listening(address) or _only(
        lambda p: "serve" in p.info["cmdline"] and any("navig" in part for part in p.info["cmdline"])
    )  # fmt: skip
    if triton_pid:
        return Watched(orchestrator, psutil.Process(triton_pid))
    triton = orchestrator and _started_triton(orchestrator)
    return Watched(orchestrator, triton or _only(lambda p: p.info["name"] == "tritonserver"))


def _started_triton(orchestrator: psutil.Process) -> psutil.Process | None:
    try:
        return next((p for p in orchestrator.children(recursive=True) if p.name() == "tritonserver"), None)
    except psutil.NoSuchProcess:
        return None


def _listening(address: str) -> psutil.Process | None:
    port = int(address.rsplit(":", 1)[1])
    try:
        connections = psutil.net_connections("tcp")
    except psutil.AccessDenied:
        return None
    for c in connections:
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
            return psutil.Process(c.pid)
    return None


def _only(match) -> psutil.Process | None:
    """The one process that matches; None when there are none or several (then pass its pid)."""
    found = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["cmdline"] and match(p)]
    return found[0] if len(found) == 1 else None


# --- memory over time ---------------------------------------------------------------------------


class RssSampler:
    """RSS of the watched processes, every `every_s` on a thread while entered, and on demand (`take`)."""

    def __init__(self, watched: Watched, every_s: float) -> None:
        self.watched, self.every_s = watched, every_s
        self.samples: list[dict] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._started = time.perf_counter()

    def take(self, phase: str) -> dict:
        t_s = round(time.perf_counter() - self._started, 2)
        sample = {"t_s": t_s, "phase": phase, "rss": self.watched.rss()}
        with self._lock:
            self.samples.append(sample)
        return sample

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.take("during")


def drift(baseline: Mapping[str, int], final: Mapping[str, int]) -> dict[str, float]:
    """Percent RSS change from `baseline` to `final` per process present at both, and "total" over those
    (a process that appeared or vanished in between is reported apart, not averaged in)."""
    common = [name for name in baseline if name in final and baseline[name] > 0]
    out = {name: 100.0 * (final[name] - baseline[name]) / baseline[name] for name in common}
    before, after = sum(baseline[n] for n in common), sum(final[n] for n in common)
    out["total"] = 100.0 * (after - before) / before if before else 0.0
    return out


# --- load ---------------------------------------------------------------------------------------


def polite(call: Call, backoff_max_s: float) -> Call:
    """`call`, backing off after RESOURCE_EXHAUSTED (doubling per worker), and with any exception that
    carries no gRPC status turned into a LOST sample instead of ending the run."""
    delays: dict[asyncio.Task | None, float] = {}

    async def wrapped(n: int) -> Sample:
        started = time.perf_counter()
        try:
            sample = await call(n)
        except Exception as exc:  # the request ended without a status: lost, and counted
            sample = Sample(started, (time.perf_counter() - started) * 1e3, "LOST", error=repr(exc))
        worker = asyncio.current_task()  # run_level's workers are tasks: the backoff is per worker
        if sample.status == SHED:
            delays[worker] = min(backoff_max_s, delays.get(worker, 0.125) * 2)
            await asyncio.sleep(delays[worker] * random.uniform(0.5, 1.0))
        else:
            delays.pop(worker, None)
        return sample

    return wrapped


async def soak(
    address: str,
    images: list[bytes],
    requests: int,
    concurrency: int,
    options: pb.LocateOptions,
    watched: Watched,
    *,
    every_s: float = 5.0,
    timeout_s: float = 300.0,
    stream: bool = False,
    backoff_max_s: float = 8.0,
    progress: Progress | None = None,
) -> dict:
    """Runs the soak; the report (also what `--out` holds)."""
    sampler = RssSampler(watched, every_s)
    sampler.take("before")
    warm_at, completed, counts = max(1, round(requests * WARMUP_SHARE)), 0, Counter()
    task = progress.add_task("soak", total=requests) if progress else None

    def done(sample: Sample) -> None:
        nonlocal completed
        completed += 1
        counts[sample.status] += 1
        if completed == warm_at:
            sampler.take("warm")
        if progress and task is not None:
            shed, bad = counts[SHED], sum(counts[s] for s in CRASHES + LOST)
            progress.update(task, advance=1, description=f"soak  ok {counts['OK']} shed {shed} bad {bad}")

    started = time.perf_counter()
    async with GeolocatorTarget(address, images, options, stream, timeout_s) as target:
        with sampler:
            call = polite(target, backoff_max_s)
            samples = await run_level(call, Level(concurrency=concurrency), Budget(requests=requests), done)
    wall_s = time.perf_counter() - started
    sampler.take("after")
    return report(samples, requests, sampler.samples, wall_s) | {
        "address": address,
        "concurrency": concurrency,
        "max_new_tokens": options.max_new_tokens,
        "stream": stream,
        "processes": watched.pids(),
    }


def report(samples: list[Sample], requests: int, rss_samples: list[dict], wall_s: float) -> dict:
    statuses = Counter(s.status for s in samples)
    ok = [s.latency_ms for s in samples if s.status == "OK"]
    lost = requests - len(samples) + sum(statuses[s] for s in LOST)
    crashes = sum(statuses[s] for s in CRASHES)
    errors = [{"status": s.status, "error": s.error} for s in samples if s.status not in ("OK", SHED)]
    phase = {s["phase"]: s["rss"] for s in rss_samples if s["phase"] != "during"}
    warm, after = phase.get("warm", {}), phase.get("after", {})
    drifts = drift(warm, after) if warm and after else {}
    measured = bool(drifts) and "total" in drifts and len(drifts) > 1
    failed_drift = measured and drifts["total"] >= DRIFT_LIMIT_PCT
    return {
        "machine": machine(),
        "requests": requests,
        "wall_s": round(wall_s, 1),
        "statuses": dict(statuses.most_common()),
        "ok": statuses["OK"],
        "shed": statuses[SHED],
        "lost": lost,
        "crashes": crashes,
        "ok_per_s": round(len(ok) / wall_s, 3) if wall_s else 0.0,
        "latency_ms": {f"p{q}": float(np.percentile(ok, q)) for q in (50, 99)} if ok else {},
        "errors": errors[:20],
        "rss_bytes": phase,
        "drift_pct": drifts,
        "drift_measured": measured,
        "appeared": sorted(set(after) - set(warm)),
        "vanished": sorted(set(warm) - set(after)),
        "rss_samples": rss_samples,
        "passed": lost == 0 and crashes == 0 and not failed_drift,
    }


# --- output -------------------------------------------------------------------------------------


def write_png(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["rss_samples"]
    peak = Counter[str]()
    for s in samples:
        peak |= Counter(s["rss"])  # the largest first in the legend
    names = [name for name, _ in peak.most_common()]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # a dozen processes: no colour twice
    for name in names:
        points = [(s["t_s"], s["rss"][name] / MiB) for s in samples if name in s["rss"]]
        ax.plot(*zip(*points), marker=".", label=name)
    warm = [s["t_s"] for s in samples if s["phase"] == "warm"]
    if warm:
        ax.axvline(warm[0], color="grey", linestyle="--", label="end of warm-up")
    total = result["drift_pct"].get("total")
    drift_text = f"; total drift after warm-up {total:+.1f}%" if total is not None else ""
    ax.set_title(f"RSS per process: {result['requests']} requests at c={result['concurrency']}{drift_text}")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tables(result: dict) -> list[Table]:
    statuses = Table("status", "requests", title="statuses")
    for status, n in result["statuses"].items():
        note = " (load shedding)" if status == SHED else ""
        statuses.add_row(f"[red]{status}" if status in CRASHES + LOST else status + note, str(n))
    memory = Table("process", "before MiB", "warm MiB", "after MiB", "drift %", title="RSS")
    rss = result["rss_bytes"]
    for name in sorted(rss.get("after", {}) | rss.get("warm", {}) | rss.get("before", {})):
        at = [rss.get(phase, {}).get(name) for phase in ("before", "warm", "after")]
        cells = [f"{b / MiB:.0f}" if b is not None else "-" for b in at]
        pct = result["drift_pct"].get(name)
        memory.add_row(name, *cells, f"{pct:+.1f}" if pct is not None else "-")
    if "total" in result["drift_pct"]:
        totals = [f"{sum(rss.get(p, {}).values()) / MiB:.0f}" for p in ("before", "warm", "after")]
        memory.add_row("[bold]total", *totals, f"[bold]{result['drift_pct']['total']:+.1f}")
    return [statuses, memory]


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--address", default="127.0.0.1:50051", help="a running Geolocator")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--samples", type=Path, default=SAMPLES_DIR, help="folder with index.json")
    parser.add_argument("--orchestrator-pid", type=int, help="default: the process listening on --address")
    parser.add_argument("--triton-pid", type=int, help="default: the tritonserver the orchestrator started")
    parser.add_argument("--sample-every-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per request")
    parser.add_argument("--backoff-max-s", type=float, default=8.0, help="after RESOURCE_EXHAUSTED")
    parser.add_argument("--stream", action="store_true", help="LocateStream instead of Locate")
    parser.add_argument("--out", type=Path, default=Path("build/bench/soak.json"), help="and a .png beside")
    args = parser.parse_args()
    console = Console()
    images = [(args.samples / s.file).read_bytes() for s in load_samples(args.samples)]
    watched = find(args.address, args.orchestrator_pid, args.triton_pid)
    if watched.orchestrator is None or watched.triton is None:
        console.print("[yellow]could not find the orchestrator and Triton processes: memory not (fully) "
                      "watched; pass --orchestrator-pid / --triton-pid")  # fmt: skip
    options = pb.LocateOptions(max_new_tokens=args.max_new_tokens)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        result = asyncio.run(soak(args.address, images, args.requests, args.concurrency, options, watched,
                                  every_s=args.sample_every_s, timeout_s=args.timeout_s, stream=args.stream,
                                  backoff_max_s=args.backoff_max_s, progress=progress))  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    write_png(result, args.out.with_suffix(".png"))
    for table in tables(result):
        console.print(table)
    lat = result["latency_ms"]
    console.print(f"{result['requests']} requests in {result['wall_s']} s: {result['ok']} OK "
                  f"({result['ok_per_s']}/s; p50 {lat.get('p50', 0):.0f}, p99 {lat.get('p99', 0):.0f} ms), "
                  f"{result['shed']} shed, {result['lost']} lost; -> {args.out} and .png")  # fmt: skip
    for error in result["errors"][:5]:
        console.print(f"  {error['status']}: {error['error']}")
    if result["appeared"] or result["vanished"]:
        console.print(f"[yellow]processes appeared {result['appeared']} vanished {result['vanished']}")
    if not result["drift_measured"]:
        console.print("[yellow]RSS drift not measured")
    if not result["passed"]:
        console.print(f"[red]FAILED[/]: lost requests, INTERNAL/UNKNOWN or total drift >= {DRIFT_LIMIT_PCT}%")
        sys.exit(1)


if __name__ == "__main__":
    main()
