"""`navig profile`: load a running Geolocator (or one Triton model) and say where the time goes.

    navig profile --concurrency 1,4,16 --requests 32 --triton-url 127.0.0.1:8001
    navig profile --rate 0.5,1,2 --duration 60
    navig profile --triton-model ocr --triton-url 127.0.0.1:8001 --concurrency 1,8
    navig profile compare build/profile/before.json build/profile/after.json

Exit codes: 0 done; 2 bad usage or input; 3 the target is not serving.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from navig.client.images import ImageReadError, expand_paths, read_rgb
from navig.client.locate import PipelineOption, build_options
from navig.client.profile import triton_stats
from navig.client.profile.load import Budget, GeolocatorTarget, Level, run_level
from navig.client.profile.machine import machine
from navig.client.profile.report import compare as compare_reports
from navig.client.profile.report import summarise, write_reports
from navig.client.profile.triton_target import TritonModelTarget, UnsupportedModel
from navig.model_repository import contract

profile_app = typer.Typer(help="Latency profiling of a running Geolocator or Triton model.")
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
DEFAULT_OUT = Path("build/profile/profile")


def _numbers(text: str, kind: type) -> list:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"expected positive numbers, got {text!r}")
    return values


@profile_app.callback(invoke_without_command=True)
def profile(
    ctx: typer.Context,
    address: Annotated[str, typer.Option(help="The Geolocator service.")] = "127.0.0.1:50051",
    images: Annotated[
        list[Path] | None, typer.Option(help="Image files or folders (default: samples/).")
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Closed-loop levels, e.g. 1,4,16.")] = "1,4,16",
    rate: Annotated[
        str | None, typer.Option(help="Open-loop request rates (req/s) instead, e.g. 0.5,1,2.")
    ] = None,
    requests: Annotated[int | None, typer.Option(min=1, help="Requests per level.")] = None,
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Seconds per level (first limit wins).")
    ] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Unrecorded requests before each level.")] = 2,
    stream: Annotated[
        bool, typer.Option(help="LocateStream (measures time to first event) or Locate.")
    ] = True,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Per VLM generation.")] = None,
    pipeline: PipelineOption = None,
    timeout: Annotated[float, typer.Option(help="Deadline per request, seconds.")] = 300.0,
    triton_url: Annotated[
        str | None, typer.Option(help="Triton's gRPC address: per-model statistics.")
    ] = None,
    triton_model: Annotated[str | None, typer.Option(help="Profile this Triton model directly.")] = None,
    out: Annotated[Path, typer.Option(help="Report path stem: .json, .csv, .png.")] = DEFAULT_OUT,
) -> None:
    """Sweep concurrency levels (or request rates) against a running service; write JSON, CSV and PNG."""
    if ctx.invoked_subcommand is not None:
        return
    if triton_model and not triton_url:
        raise typer.BadParameter("--triton-model needs --triton-url")
    levels = (
        [Level(rate=r) for r in _numbers(rate, float)]
        if rate
        else [Level(concurrency=c) for c in _numbers(concurrency, int)]
    )
    budget = Budget(requests=requests if requests or duration else 16, duration_s=duration)
    try:
        images = images or [Path("samples")]
        paths = expand_paths(images)
        if not paths:
            raise ImageReadError(f"no images in {', '.join(map(str, images))}")
        pixels = [read_rgb(p) for p in paths] if triton_model else None
        payloads = [p.read_bytes() for p in paths]
    except (ImageReadError, OSError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    if triton_model:
        target: Any = TritonModelTarget(
            triton_url or "", triton_model, pixels or [], max_new_tokens or 16, timeout
        )
        name = f"Triton model {triton_model} at {triton_url}"
    else:
        _require_serving(address)
        options = build_options(max_new_tokens, set(), [], False, False, pipeline.value if pipeline else None)
        target = GeolocatorTarget(address, payloads, options, stream, timeout)
        name = f"Geolocator at {address} ({'LocateStream' if stream else 'Locate'})"
    config = {
        "target": name,
        "address": address,
        "triton_url": triton_url,
        "triton_model": triton_model,
        "images": len(paths),
        "requests": budget.requests,
        "duration_s": budget.duration_s,
        "warmup": warmup,
        "stream": stream,
        "max_new_tokens": max_new_tokens,
        "pipeline": pipeline.value if pipeline else "server's",
        "timeout_s": timeout,
    }
    try:
        results = asyncio.run(_sweep(target, levels, budget, warmup, triton_url))
    except UnsupportedModel as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    report = {
        "tool": "navig profile",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": config,
        "levels": results,
    }
    written = write_reports(report, out)
    _print(results)
    console.print("reports: " + ", ".join(map(str, written)))


async def _sweep(
    target: Any, levels: list[Level], budget: Budget, warmup: int, triton_url: str | None
) -> list:
    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    async with target:
        with Progress(*columns, console=errors, transient=True) as progress:
            for level in levels:
                if warmup:
                    task = progress.add_task(f"{level.label} warm-up", total=warmup)
                    await run_level(
                        target, level, Budget(requests=warmup), lambda _, t=task: progress.advance(t)
                    )
                    progress.remove_task(task)
                task = progress.add_task(level.label, total=budget.requests)
                before = await _triton_counters(triton_url)
                started = time.perf_counter()
                samples = await run_level(target, level, budget, lambda _, t=task: progress.advance(t))
                elapsed = time.perf_counter() - started
                inside = triton_stats.difference(before, await _triton_counters(triton_url))
                results.append(summarise(level, samples, elapsed, inside))
    return results


async def _triton_counters(url: str | None) -> triton_stats.Snapshot:
    return await asyncio.to_thread(triton_stats.settled_snapshot, url) if url else {}


def _require_serving(address: str) -> None:
    try:
        with grpc.insecure_channel(address) as channel:
            request = health_pb2.HealthCheckRequest(service=contract.GEOLOCATOR_SERVICE)
            status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status
    except grpc.RpcError as exc:
        errors.print(f"[red]error:[/red] no Geolocator at {address}: {exc.code().name}")
        raise typer.Exit(3) from exc
    if status != health_pb2.HealthCheckResponse.SERVING:
        errors.print(
            f"[red]error:[/red] the Geolocator at {address} is not serving (its Triton is not ready)"
        )
        raise typer.Exit(3)


def _print(results: list[dict[str, Any]]) -> None:
    columns = ("p50 ms", "p90 ms", "p95 ms", "p99 ms", "1st event p50", "1st reasoning p50")
    table = Table("level", "ok", "errors", "req/s", *columns)
    for lv in results:
        lat, ttfe, ttft = lv["latency_ms"], lv["ttfe_ms"], lv["ttft_ms"]
        cells = [f"{lat[k]:.0f}" if lat else "-" for k in ("p50", "p90", "p95", "p99")]
        cells += [f"{d['p50']:.0f}" if d else "-" for d in (ttfe, ttft)]
        errors_cell = json.dumps(lv["errors"]) if lv["errors"] else "0"
        table.add_row(lv["level"], str(lv["ok"]), errors_cell, f"{lv['throughput_rps']:.3f}", *cells)
    console.print(table)
    stages = sorted({s for lv in results for s in lv["stages_ms"]})
    if stages:
        by_stage = Table("level", *stages, title="mean stage duration, ms (reasoner and searcher overlap)")
        for lv in results:
            by_stage.add_row(lv["level"], *(f"{lv['stages_ms'].get(s, 0):.0f}" for s in stages))
        console.print(by_stage)
    models = sorted({m for lv in results for m in lv["triton"]})
    if models:
        inside = Table(
            "level",
            "model",
            "requests",
            "mean batch",
            "queue ms",
            "compute ms",
            title="inside Triton, per request",
        )
        for lv in results:
            for model in models:
                t = lv["triton"].get(model)
                if t:
                    inside.add_row(
                        lv["level"],
                        model,
                        str(t["requests"]),
                        f"{t['mean_batch']:.2f}",
                        f"{t['queue_ms']:.1f}",
                        f"{t['compute_ms']:.1f}",
                    )
        console.print(inside)


@profile_app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(help="Report A (.json).")],
    candidate: Annotated[Path, typer.Argument(help="Report B (.json).")],
) -> None:
    """B relative to A per level: throughput and latency ratios (> 1: B is higher)."""
    try:
        a, b = (json.loads(p.read_text()) for p in (baseline, candidate))
        rows = compare_reports(a, b)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        errors.print(f"[red]error:[/red] not a navig profile report: {exc}")
        raise typer.Exit(2) from exc
    if not rows:
        errors.print("[red]error:[/red] the reports share no level")
        raise typer.Exit(2)
    table = Table(
        "level",
        "throughput B/A",
        "p50 B/A",
        "p99 B/A",
        "first event p50 B/A",
        title=f"{candidate.name} vs {baseline.name}",
    )
    for row in rows:
        cells = [
            row[k] for k in ("throughput_ratio", "latency_p50_ratio", "latency_p99_ratio", "ttfe_p50_ratio")
        ]
        table.add_row(row["level"], *(f"{v:.2f}x" if v is not None else "-" for v in cells))
    console.print(table)
