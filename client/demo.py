"""`navig demo`: the whole pipeline on the sample signs, through `Locate` on the embedded stack."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.progress import Progress
from rich.table import Table

from navig.client.geolocator import GeolocatorClient
from navig.export.samples import Sample, load_samples
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.cli import prepare_tools
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.geo import haversine_km
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import load_settings

CITY_KM = 25.0
# The demo's VLM weights are random placeholders: their grammar-constrained answers are valid JSON
# naming a random country. The table is answered from the evidence; one answer shows the VLM path.
EVIDENCE_ONLY = pb.LocateOptions(use_vlm_guesser=False)
DEFAULT_COUNT = 8  # samples located by default (`navig demo --all`: every one)


def pick_samples(samples: list[Sample], count: int | None) -> list[Sample]:
    """`count` samples spread evenly over the index, each from another country while countries
    last (the index lists a country's signs together); all of them when count is None."""
    if count is None or count >= len(samples):
        return list(samples)
    chosen: list[Sample] = []
    for i in range(count):
        rest = samples[i * len(samples) // count :] + samples
        taken = {s.country_code for s in chosen}
        pick = next((s for s in rest if s.country_code not in taken and s not in chosen), None)
        chosen.append(pick or next(s for s in rest if s not in chosen))
    return sorted(chosen, key=samples.index)


def run_demo(
    model_repository: Path, samples_dir: Path, console: Console, count: int | None = DEFAULT_COUNT
) -> float:
    """Locates `count` samples (None: all); returns the share of them whose country was found."""
    every = load_samples(samples_dir)
    samples = pick_samples(every, count)
    config = TritonConfig(model_repository, ports=TritonPorts.free(), log_file=Path("build/demo-triton.log"))
    started = time.perf_counter()
    with console.status("starting the embedded Triton server..."), EmbeddedTriton(config) as triton:
        console.print(f"Triton ready on {triton.grpc_url} in {time.perf_counter() - started:.1f} s")
        settings = load_settings(triton_url=triton.grpc_url, port=0, metrics_port=0, log_json=False)
        settings = prepare_tools(settings, model_repository, console)
        with console.status("starting the Geolocator service..."), OrchestratorThread(settings) as server:
            console.print(f"Geolocator serving on {server.address}")
            with GeolocatorClient(server.address) as client:
                with_vlm = client.locate_proto((samples_dir / samples[0].file).read_bytes())
            answers = _locate_all(server.address, samples, samples_dir)
    _print_detail(console, samples[0], with_vlm)
    console.print("placeholder VLM weights: the table below is answered by the evidence guesser")
    return _print_summary(console, samples, answers, len(every))


def _locate_all(address: str, samples: list[Sample], samples_dir: Path) -> list[pb.LocateResponse]:
    answers = []
    with GeolocatorClient(address) as client, Progress(transient=True) as progress:
        task = progress.add_task("Locate on the samples", total=len(samples))
        for sample in samples:
            answers.append(client.locate_proto((samples_dir / sample.file).read_bytes(), EVIDENCE_ONLY))
            progress.advance(task)
    return answers


def _print_detail(console: Console, sample: Sample, answer: pb.LocateResponse) -> None:
    loc = answer.location
    lines = [
        f"[bold]{loc.city}, {loc.country}[/bold] ({loc.country_code}) {loc.latitude:.3f},{loc.longitude:.3f}",
        f"confidence {loc.confidence:.2f}, answered by {_component(answer)}: " + "; ".join(answer.reasons),
        f"reasoning (placeholder weights): {answer.reasoning[:160]!r}",
        *(f"degraded: {d.component}: {d.reason}" for d in answer.degraded),
    ]
    title = f"{sample.file}: truth {sample.place} ({sample.country_code})"
    console.print(Panel.fit("\n".join(lines), title=title))
    evidence = Table("tool", "query", "result", "source", "score", title="evidence")
    for e in answer.evidence:
        evidence.add_row(e.tool, e.query[:40], e.result[:60], e.source, f"{e.score:.2f}")
    timings = Table("stage", "start ms", "duration ms", title="stage timings")
    for t in sorted(answer.timings, key=lambda t: t.start_ms):
        timings.add_row(t.stage, f"{t.start_ms:.0f}", f"{t.duration_ms:.0f}")
    console.print(evidence, timings)


def _print_summary(
    console: Console, samples: list[Sample], answers: list[pb.LocateResponse], available: int
) -> float:
    ran = (
        f"every sample ({available})"
        if len(samples) == available
        else f"{len(samples)} of the {available} samples, from {len({s.country_code for s in samples})} "
        "countries (--all: every one)"
    )
    table = Table("image", "truth", "answer", "by", "km off", "read", "ms", title=f"Locate on {ran}")
    countries = cities = 0
    for sample, answer in zip(samples, answers):
        loc = answer.location
        km = haversine_km(sample.latitude, sample.longitude, loc.latitude, loc.longitude)
        countries += loc.country_code == sample.country_code
        cities += km <= CITY_KM
        read = " | ".join(e.result for e in answer.evidence if e.tool == "ocr")
        ok = "green" if km <= CITY_KM else "yellow" if loc.country_code == sample.country_code else "red"
        truth, guess = f"{sample.place} ({sample.country_code})", f"[{ok}]{loc.city} ({loc.country_code})"
        by, ms = _component(answer), f"{answer.total_ms:.0f}"
        table.add_row(sample.file, truth, guess, by, f"{km:.0f}", read[:40], ms)
    console.print(table)
    by = Counter(_component(a) for a in answers)
    latencies = [a.total_ms for a in answers]
    console.print(
        f"on {ran}: country correct {countries}/{len(samples)}, "
        f"city within {CITY_KM:.0f} km {cities}/{len(samples)}; "
        f"answered by {dict(by)}; latency median {statistics.median(latencies):.0f} ms, "
        f"max {max(latencies):.0f} ms"
    )
    return countries / len(samples)


def _component(answer: pb.LocateResponse) -> str:
    return pb.Component.Name(answer.answered_by).lower()
