"""This stack against the NAVIG-faithful baseline and against the machine's limit, in one run.

On the same `--preset` checkpoints and the same sample photos, with the same new-token budget:
1. served, in both pipeline modes (`reference`: NAVIG's rules; `fast`: the product), one after the
   other: the embedded Triton (`cpu` profile) + the Geolocator over gRPC, closed loop at each
   `--concurrency` (every component on; `max_concurrency` raised to the highest level so the
   admission queue does not cap it);
2. in-process: the orchestrator's own pipeline with every model called in-process
   (`benchmarks/in_process.py`), one photo at a time: the compute on the critical path;
3. baseline: `benchmarks/navig_baseline`, NAVIG's calls in eager PyTorch, one photo at a time
   (it has no concurrency: its throughput is the same at every level).
Every side warms up first on one photo, not timed; the in-process side and the baseline run in
their own processes with OMP_WAIT_POLICY=PASSIVE (as the VLM stubs) and torch's default thread count
(as the VLM stubs and the in-process side: `threads` 0).

Every side records its work, per photo, in total and as a mean per photo (`baseline.work`,
`in_process.work` and `served_work` in the JSON, one shape): crops, generations, prompt and
generated tokens (where measurable), calls per model, CLIP and index reloads.
- baseline: its own counters (`benchmarks/navig_baseline`, checked from outside by
  tests/test_navig_baseline.py).
- in-process: the models counted where the pipeline calls them (`infer`/`generate` of its
  `LocalModels`, the VLM engines' inputs and outputs for tokens), crops from the pipeline's
  `detector` evidence; the timed run itself is counted.
- served: model calls from Triton's statistics (the difference around each photo, one photo at a
  time: the concurrency-1 level, whose wall time is its requests' own), crops from the response's
  `detector` evidence. Tokens are not measurable there: neither the response nor Triton's
  statistics carry them. Each level also records its calls per photo from Triton's statistics over
  the level.
Writes build/bench/versus_navig.json (with the machine description).
Run: `python -m benchmarks.versus_navig --preset small` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks import cpu_time
from benchmarks.in_process import latency_summary
from benchmarks.presets import prepare
from navig.client.profile.load import Budget, GeolocatorTarget, Level, Sample, run_level
from navig.client.profile.machine import machine
from navig.client.profile.report import summarise
from navig.client.profile.triton_stats import difference, settled_snapshot
from navig.export.cli import quiet_transformers
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.model_repository import contract
from navig.orchestrator import wire
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings, load_settings
from navig.orchestrator.tools.guidebook.build import ensure_default_guidebook

PASSIVE_OPENMP = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}  # as the VLM stubs set it before torch loads

# -- work counts: one shape for every side ---------------------------------------------------------


def photo_work(
    crops: int,
    model_calls: dict[str, int],
    prompt_tokens: int | None = None,
    generated_tokens: int | None = None,
    reloads: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One photo's work. Generations = calls of the two VLM models (`reasoner`, `vlm`)."""
    return {
        "crops": crops,
        "generations": sum(model_calls.get(m, 0) for m in contract.VLM_MODELS),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated_tokens,
        "model_calls": dict(sorted(model_calls.items())),
        "reloads": reloads if reloads is not None else {"clip": 0, "index": 0},
    }


def work_summary(per_photo: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """Per photo, in total and the mean per photo; a count that is not measurable stays None."""

    def add(values: Iterable[Any]) -> Any:
        values = list(values)
        if any(v is None for v in values):
            return None
        if values and isinstance(values[0], dict):
            keys = sorted({k for v in values for k in v})
            return {k: sum(v.get(k, 0) for v in values) for k in keys}
        return sum(values)

    total = {key: add(p[key] for p in per_photo) for key in per_photo[0]} if per_photo else {}

    def mean(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            return {k: v / len(per_photo) for k, v in value.items()}
        return value / len(per_photo)

    return {
        "source": source,
        "per_photo": per_photo,
        "total": total,
        "mean_per_photo": {key: mean(value) for key, value in total.items()},
    }


# -- served ----------------------------------------------------------------------------------------


def level_entry(
    concurrency: int, samples: list[Sample], seconds: float, models: dict, cpu: dict[str, float]
) -> dict[str, Any]:
    """One served level's figures (`seconds`: the wall time its requests were in flight)."""
    summary = summarise(Level(concurrency=concurrency), samples, seconds, models)
    ok = [s.latency_ms for s in samples if s.status == "OK"]
    return {
        "concurrency": concurrency,
        "errors": summary["errors"],
        "stages_ms": summary["stages_ms"],
        "triton_models": models,
        "calls_per_photo": {m: s["requests"] / max(len(samples), 1) for m, s in models.items()},
        "cpu_s_per_photo": cpu,
        "cpu_utilisation": cpu_time.utilisation(cpu, len(samples), seconds),
        **latency_summary(ok, seconds),
    }


async def counted_pass(
    target: GeolocatorTarget,
    answers: dict[int, pb.LocateResponse],
    triton_url: str,
    cpu_now: Callable[[], Counter[str]],
) -> tuple[dict, dict]:
    """Each photo once, alone: the Triton calls it caused (statistics before and after, settled) and
    the crops its response reports (`detector` evidence, one per crop the SEARCHER cut). Timed, it is
    also the concurrency-1 level: its wall time is its requests' own, the settling between them left
    out. `target` puts each answer into `answers`."""
    samples, calls = [], []
    first, cpu_before = await asyncio.to_thread(settled_snapshot, triton_url), cpu_now()
    before = first
    for n in range(len(target.images)):
        samples.append(await target(n))
        after = await asyncio.to_thread(settled_snapshot, triton_url)
        calls.append({model: int(s["requests"]) for model, s in difference(before, after).items()})
        before = after
    cpu = cpu_time.spent(cpu_before, cpu_now(), len(samples))
    level = level_entry(1, samples, sum(s.latency_ms for s in samples) / 1e3, difference(first, before), cpu)
    missing = pb.LocateResponse()  # a failed request: no crops, no answer
    responses = [answers.get(n, missing) for n in range(len(samples))]
    # each photo's crops (Crop.where, in order) and answer, for the comparisons
    crops = [[e.result for e in r.evidence if e.tool == "detector"] for r in responses]
    countries = [r.location.country_code or None for r in responses]
    work = work_summary(
        [photo_work(len(cut), photo_calls) for cut, photo_calls in zip(crops, calls, strict=True)],
        "model calls: Triton's statistics around each photo (ocr_det/ocr_rec are called by the `ocr` "
        "model through BLS); crops: the response's detector evidence; tokens: not measurable; "
        "reloads: none (CLIP and the guidebook index are loaded once at start)",
    )
    return level, work | {"countries": countries, "crops": crops}


def requests_at(concurrency: int, images: int) -> int:
    """A level's requests: every photo at least once, in whole rounds of `concurrency` (each caller sends
    as many requests: no caller idles while the others finish an extra one)."""
    return concurrency * -(-images // concurrency)


def served(
    settings: Settings,
    repository: Path,
    images: list[bytes],
    levels: list[int],
    tokens: int,
    console: Console,
) -> dict[str, tuple[list[dict], dict]]:
    """Each pipeline mode (`reference`: NAVIG's calls; `fast`: the product's) on one Triton and one
    Geolocator, one after the other: (levels, work) by mode. Concurrency 1 is the counting pass."""
    config = TritonConfig(repository, ports=TritonPorts.free())
    with console.status("starting Triton and the Geolocator..."), EmbeddedTriton(config) as triton:
        settings = settings.model_copy(update={"triton_url": triton.grpc_url})
        cpu_now = functools.partial(cpu_time.snapshot, triton.pid, "orchestrator + load generator")
        with OrchestratorThread(settings) as server, Progress(console=console, transient=True) as progress:

            async def sweep(mode: str) -> tuple[list[dict], dict]:
                options = pb.LocateOptions(max_new_tokens=tokens, pipeline=wire.PIPELINES[mode])
                answers: dict[int, pb.LocateResponse] = {}
                keep = answers.__setitem__
                async with GeolocatorTarget(server.address, images, options, False, 3600, keep) as target:
                    warm_up = Budget(requests=1)  # one photo, as the other sides: every model's first calls
                    await run_level(target, Level(concurrency=1), warm_up, lambda _: None)
                    answers.clear()
                    task = progress.add_task(f"served {mode}, each photo alone, its work counted", total=None)
                    counted, work = await counted_pass(target, answers, triton.grpc_url, cpu_now)
                    target.on_result = None
                    progress.remove_task(task)
                    out = [counted] if 1 in levels else []
                    for c in (c for c in levels if c != 1):
                        total = requests_at(c, len(images))
                        task = progress.add_task(f"served {mode}, concurrency {c}", total=total)
                        before = settled_snapshot(triton.grpc_url)
                        cpu_before = cpu_now()
                        started = time.perf_counter()
                        samples = await run_level(
                            target,
                            Level(concurrency=c),
                            Budget(requests=total),
                            lambda _, t=task: progress.advance(t),
                        )
                        seconds = time.perf_counter() - started
                        cpu = cpu_time.spent(cpu_before, cpu_now(), len(samples))
                        models = difference(before, settled_snapshot(triton.grpc_url))
                        out.append(level_entry(c, samples, seconds, models, cpu))
                return out, work

            return {mode: asyncio.run(sweep(mode)) for mode in wire.PIPELINES}


# -- in-process ------------------------------------------------------------------------------------


def in_process(repository: Path, guidebook: Path, images: int, tokens: int, root: Path) -> dict:
    """`benchmarks.in_process`, counted (`in_process_worker`), in its own process with OpenMP's idle
    threads passive as in the VLM stubs."""
    out = root / "in_process.json"
    command = [sys.executable, "-c", "from benchmarks.versus_navig import in_process_worker as w; w()"]
    command += ["--repository", str(repository), "--guidebook", str(guidebook), "--images", str(images)]
    command += ["--max-new-tokens", str(tokens), "--out", str(out)]
    subprocess.run(command, check=True, env=PASSIVE_OPENMP, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


class _CountingInputs:
    """A VLM engine's `VlmInputs`, counting the prompt tokens of every row it builds."""

    def __init__(self, inner: Any, tally: Counter[str]) -> None:
        self._inner, self._tally = inner, tally

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        row = self._inner(*args, **kwargs)
        self._tally["prompt_tokens"] += int(row["input_ids"].shape[1])
        return row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def in_process_worker() -> None:
    """`benchmarks.in_process.measure` with its models counted, the same arguments as its CLI.

    `LocalModels` becomes a subclass counting every `infer`/`generate` per model, the VLM engines'
    inputs count prompt tokens and their results the generated tokens; each `Pipeline.run` is one
    photo, its crops read from its `detector` evidence. measure()'s first photo is its warm-up.
    """
    from benchmarks import in_process as side
    from navig.model_repository.vlm_api import Generation

    photos: list[dict[str, Any]] = []
    tally: Counter[str] = Counter()

    class CountingModels(side.LocalModels):
        def __init__(self, repository: Path, threads: int = 0) -> None:
            super().__init__(repository, threads)
            for vlm in self.vlms.values():
                engine = vlm.engine
                engine.inputs = _CountingInputs(engine.inputs, tally)
                batch = engine.generate_batch

                def counted(*args: Any, _batch: Any = batch, **kwargs: Any) -> list[Generation]:
                    answers = _batch(*args, **kwargs)
                    tally["generated_tokens"] += sum(len(a.token_ids) for a in answers)
                    return answers

                engine.generate_batch = counted

        async def infer(self, model: str, *args: Any, **kwargs: Any) -> dict:
            tally[f"call:{model}"] += 1
            return await super().infer(model, *args, **kwargs)

        async def generate(self, model: str, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
            tally[f"call:{model}"] += 1
            async for piece in super().generate(model, *args, **kwargs):
                yield piece

    build_pipeline = side.in_process_pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipeline = build_pipeline(*args, **kwargs)
        run = pipeline.run

        async def counted_run(*a: Any, **k: Any) -> Any:
            tally.clear()
            outcome = await run(*a, **k)
            calls = {key[5:]: n for key, n in tally.items() if key.startswith("call:")}
            crops = sum(1 for e in outcome.evidence if e.tool == "detector")
            photos.append(photo_work(crops, calls, tally["prompt_tokens"], tally["generated_tokens"]))
            return outcome

        pipeline.run = counted_run
        return pipeline

    side.LocalModels = CountingModels  # type: ignore[misc]
    side.in_process_pipeline = counting_pipeline

    report, out = side.measure_command_line("benchmarks.in_process, counted")
    report["work"] = work_summary(
        photos[1:],  # the first run is measure()'s warm-up
        "model calls: LocalModels.infer/generate per model; tokens: the VLM engines' inputs and "
        "outputs; crops: the pipeline's detector evidence; reloads: none (loaded once)",
    )
    import torch

    report["torch_threads"] = torch.get_num_threads()
    out.write_text(json.dumps(report, indent=1))


# -- baseline --------------------------------------------------------------------------------------


def baseline_work(images: list[dict[str, Any]]) -> dict[str, Any]:
    per_photo = []
    for image in images:
        c = image["counts"]
        calls = {
            contract.REASONER: c["reasoner_calls"],
            contract.VLM: c["vlm_calls"],
            contract.DETECTOR: c["detector_passes"],
            contract.CLIP_IMAGE: c["clip_calls"],
            "map": c["map_calls"],
        }
        reloads = {"clip": c["clip_loads"], "index": c["index_loads"]}
        per_photo.append(photo_work(c["crops"], calls, c["prompt_tokens"], c["generated_tokens"], reloads))
    return work_summary(
        per_photo,
        "the baseline's own counters (tests/test_navig_baseline.py checks them from outside); "
        "`map` is gazetteer look-ups, `clip_image` CLIP image embeddings",
    )


def baseline(checkpoints: Path, root: Path, files: list[Path], tokens: int) -> dict:
    """`python -m benchmarks.navig_baseline` on the same photos, in its own process (OpenMP passive,
    torch's default threads); it warms up on the first photo, then times each."""
    out = root / "baseline.json"
    command = [sys.executable, "-m", "benchmarks.navig_baseline", "--checkpoints", str(checkpoints)]
    command += ["--images", *map(str, files), "--limit", "0", "--max-new-tokens", str(tokens)]
    subprocess.run([*command, "--out", str(out)], check=True, env=PASSIVE_OPENMP, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    latencies = [image["timings_ms"]["total"] for image in report["images"]]
    return {
        "load_s": report["load_seconds"]["total"],
        "warmup_s": report["warmup_seconds"],
        "settings": report["settings"],
        "steps_ms": report["mean_ms"],
        "cpu_s_per_photo": report["cpu_s_per_photo"],
        "cpu_utilisation": report["cpu_utilisation"],
        "work": baseline_work(report["images"]),
        "crops": [image["crops"] for image in report["images"]],
        **latency_summary(latencies, report["timed_seconds"]),
    }


def agreement(fast: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """The two modes' answers on the same photos: the same country or not. With placeholder weights
    this says nothing about accuracy; it shows where the modes' evidence leads apart."""
    pairs = list(zip(fast["countries"], reference["countries"], strict=True))
    return {
        "photos": len(pairs),
        "same_country": sum(1 for f, r in pairs if f is not None and f == r),
        "countries": pairs,
    }


def crop_of(where: str) -> tuple[str, list[int]]:
    """A recorded crop (`Crop.where`: "label at [x0, y0, x1, y1]") as its label and box."""
    label, box = where.split(" at ")
    return label, json.loads(box)


def same_crops(reference: list[list[str]], baseline: list[list[str]]) -> dict[str, Any]:
    """Whether served `reference` and the baseline cut the same crops, photo by photo: identical lists
    (label, box and order), and crops matched by label with boxes within `tolerance_px` on every side
    (the two detectors resize the photo with different resamplers, so boxes can move by a pixel or
    scores cross the threshold). The counts beside the times are only the same work if these agree."""
    tolerance_px = 4
    photos = []
    for served_crops, baseline_crops in zip(reference, baseline, strict=True):
        left = [crop_of(w) for w in baseline_crops]
        matched = 0
        for label, box in map(crop_of, served_crops):
            near = next(
                (
                    c
                    for c in left
                    if c[0] == label and max(abs(a - b) for a, b in zip(c[1], box)) <= tolerance_px
                ),
                None,
            )
            if near is not None:
                left.remove(near)
                matched += 1
        photos.append(
            {
                "reference": len(served_crops),
                "baseline": len(baseline_crops),
                "matched": matched,
                "identical": served_crops == baseline_crops,
            }
        )
    return {
        "tolerance_px": tolerance_px,
        "photos": photos,
        "identical_photos": sum(p["identical"] for p in photos),
        "matched": sum(p["matched"] for p in photos),
        "reference_crops": sum(p["reference"] for p in photos),
        "baseline_crops": sum(p["baseline"] for p in photos),
    }


# -- the run ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--images", type=int, default=4, help="sample photos, the same for every side")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="every generation of every side (NAVIG: 256)"
    )
    parser.add_argument("--root", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    quiet_transformers()
    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough for the work table
        console = Console(width=200)
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
    report: dict[str, Any] = {
        "machine": machine(),
        "preset": args.preset,
        "images": len(images),
        "max_new_tokens": args.max_new_tokens,
    }
    by_mode = served(settings, repository, images, args.concurrency, args.max_new_tokens, console)
    report["served"], report["served_work"] = by_mode["fast"]
    report["served_reference"], report["served_reference_work"] = by_mode["reference"]
    report["agreement"] = agreement(report["served_work"], report["served_reference_work"])
    with console.status("the same pipeline with in-process models..."):
        report["in_process"] = in_process(repository, guidebook, len(images), args.max_new_tokens, args.root)
    with console.status("the NAVIG-faithful baseline, one photo at a time..."):
        report["baseline"] = baseline(checkpoints, args.root, files, args.max_new_tokens)
    report["same_crops"] = same_crops(report["served_reference_work"]["crops"], report["baseline"]["crops"])
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
    for mode, levels in (("reference", report["served_reference"]), ("fast", report["served"])):
        for s in levels:
            table.add_row(
                f"served {mode}, c={s['concurrency']}",
                f"{s['throughput_rps']:.3f}",
                f"{s['p50_ms']:.0f}",
                f"{s['p99_ms']:.0f}",
                f"{s['throughput_rps'] / base['throughput_rps']:.2f}x",
            )
    console.print(table)
    agree = report["agreement"]
    console.print(
        f"fast vs reference: the same country on {agree['same_country']} of {agree['photos']} photos"
    )
    same = report["same_crops"]
    console.print(
        f"reference vs baseline crops: {same['matched']} matched of {same['reference_crops']} / "
        f"{same['baseline_crops']}; identical on {same['identical_photos']} of {len(same['photos'])} photos"
    )
    console.print(work_table(report))
    console.print(f"-> {out}")


def work_table(report: dict[str, Any]) -> Table:
    """Mean work per photo of each side."""
    sides = {
        "baseline": report["baseline"]["work"],
        "served reference": report["served_reference_work"],
        "in-process (fast)": report["in_process"]["work"],
        "served fast": report["served_work"],
    }
    table = Table(
        "", "crops", "generations", "prompt tokens", "generated tokens", "model calls", "reloads",
        title="work per photo (mean)",
    )  # fmt: skip
    for name, work in sides.items():
        mean = work["mean_per_photo"]

        def number(value: Any) -> str:
            return "n/a" if value is None else f"{value:.1f}"

        calls = ", ".join(f"{m} {n:.1f}" for m, n in mean["model_calls"].items())
        reloads = ", ".join(f"{m} {n:.1f}" for m, n in mean["reloads"].items())
        table.add_row(
            name,
            number(mean["crops"]),
            number(mean["generations"]),
            number(mean["prompt_tokens"]),
            number(mean["generated_tokens"]),
            calls,
            reloads,
        )
    return table


if __name__ == "__main__":
    main()
