"""OCR once per photo: the `photo_first` strategy of the SEARCHER's `ocr` tool against `every_crop`.

The samples (samples/) are 640x480 photos of one sign each; a street scene has several. So the scenes
here are composed from the samples' own text lines with the samples' renderer (`navig.export.samples`:
sign, perspective, backdrop), several signs per photo at known places, which gives what the tiny demo
detector (random weights) cannot: a sign crop where each sign is (its box, loose as a detector's) and
the lines drawn on it. Each scene also has one textless "building sign" crop (a false detection).
Three scene sizes: 1280x960 (the detector's view is the photo), 1920x1080, and a 12 MP 4032x3024
phone photo with the signs at their rendered size (small in the photo).

Each strategy runs `ReadSigns.run` (the real tool) against the real `ocr`, `ocr_det` and `ocr_rec`
models in an embedded Triton over gRPC (`TritonModels`), one photo at a time after a warm-up photo.
Reported per strategy: the OCR stage time per photo, the `ocr` calls (a counting `Models` around
`TritonModels`) and the `ocr_det`/`ocr_rec` executions (Triton's statistics) per photo; the lines'
agreement with `every_crop` (exact after case/space normalisation: precision and recall; rapidfuzz
similarity of each `every_crop` line to its best match), the drawn lines read exactly, and how many
of the photo pass's exactly read lines were attributed to the crop of the sign they are on.
The OCR models are exported alone (`navig export build` of a PP-OCR-only spec, seconds) into a
temporary repository. Run: `python -m benchmarks.ocr_once`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from PIL import Image
from rapidfuzz import fuzz
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from navig.client.profile.machine import machine
from navig.export.build import build
from navig.export.samples import SAMPLES_DIR, load_samples, normalise_text, perspective, render_sign, scene
from navig.export.spec import ExportSpec
from navig.model_repository import contract
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.images import downscale
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.options import RunOptions
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.ocr import ReadSigns
from navig.orchestrator.searcher.search import Crop, Search
from navig.orchestrator.settings import load_settings
from navig.orchestrator.triton_client import TritonModels

# (width, height, columns, rows, sign width as a share of its cell or None for its rendered size)
LAYOUTS = ((1280, 960, 2, 2, 0.9), (1920, 1080, 3, 2, 0.85), (4032, 3024, 3, 2, None))
LABELS = ("road sign", "building sign")
# strategy name -> the ocr tool's settings
STRATEGIES = {
    "every_crop": {"strategy": "every_crop"},
    "photo_first": {"strategy": "photo_first"},  # the defaults: photo at 1280, small crops read alone
    "photo_first, no small rule": {"strategy": "photo_first", "small_crop_side": 0},
    "photo_first at 2000": {"strategy": "photo_first", "photo_side": 2000},
}
BASELINE = "every_crop"


@dataclass
class Street:
    """A composed photo: the sign crops a detector would give (the last textless), each sign's lines."""

    name: str
    image: np.ndarray
    crops: list[Crop]
    lines: list[list[str]]  # drawn lines per crop, [] for the textless one


def street_scene(
    lines: list[list[str]], width: int, height: int, columns: int, rows: int, share: float | None, seed: int
) -> Street:
    """One sign per grid cell (the last cell holds none: its crop is a textless false detection), each
    at a random place in its cell, on the samples' backdrop stretched to the photo."""
    rng = random.Random(seed)
    photo = scene(rng).resize((width, height), Image.Resampling.BICUBIC)
    cell_w, cell_h = width // columns, height // rows
    crops, drawn = [], []
    for k in range(columns * rows):
        x0, y0 = (k % columns) * cell_w, (k // columns) * cell_h
        label = LABELS[k % 2]
        if k == columns * rows - 1 or k >= len(lines):
            box = (x0 + cell_w // 4, y0 + cell_h // 4, x0 + 3 * cell_w // 4, y0 + 3 * cell_h // 4)
            crops.append(Crop("building sign", 0.4, box, np.asarray(photo)[box[1] : box[3], box[0] : box[2]]))
            drawn.append([])
            break
        sign = perspective(render_sign(lines[k], rng), rng)
        fit = min((share or 1.0) * cell_w / sign.width, 0.9 * cell_h / sign.height)
        if share is not None or fit < 1:
            sign = sign.resize((round(sign.width * fit), round(sign.height * fit)), Image.Resampling.LANCZOS)
        x = x0 + rng.randint(0, cell_w - sign.width)
        y = y0 + rng.randint(0, cell_h - sign.height)
        photo.paste(sign, (x, y), sign)
        crops.append(Crop(label, 0.9, (x, y, x + sign.width, y + sign.height), np.zeros(0)))
        drawn.append(lines[k])
    image = np.asarray(photo)
    crops = [c if c.pixels.size else _cut(c, image) for c in crops]
    return Street(f"{width}x{height}#{seed}", image, crops, drawn)


def _cut(crop: Crop, image: np.ndarray) -> Crop:
    x0, y0, x1, y1 = crop.box
    return Crop(crop.label, crop.score, crop.box, np.ascontiguousarray(image[y0:y1, x0:x1]))


def streets() -> list[Street]:
    """The samples' lines, in order, over the layouts in turn, while samples are left for a whole scene."""
    pool = [s.lines for s in load_samples(SAMPLES_DIR)]
    out, seed = [], 0
    while True:
        width, height, columns, rows, share = LAYOUTS[seed % len(LAYOUTS)]
        signs = columns * rows - 1
        if len(pool) < signs:
            return out
        out.append(street_scene(pool[:signs], width, height, columns, rows, share, seed))
        pool, seed = pool[signs:], seed + 1


class CountingModels:
    """`TritonModels` with a count of calls per model: delegates every call unchanged."""

    def __init__(self, models: TritonModels) -> None:
        self.models = models
        self.calls: dict[str, int] = {}

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline) -> dict:
        self.calls[model] = self.calls.get(model, 0) + 1
        return await self.models.infer(model, inputs, deadline)

    def generate(self, *args, **kwargs):  # the OCR tool never generates; delegated all the same
        return self.models.generate(*args, **kwargs)


def executions(client: grpcclient.InferenceServerClient) -> dict[str, int]:
    """Requests each OCR model has answered so far (BLS calls included)."""
    counts = {}
    for model in (contract.OCR, contract.OCR_DET, contract.OCR_REC):
        (stats,) = client.get_inference_statistics(model).model_stats
        counts[model] = stats.inference_stats.success.count
    return counts


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by the Triton server and its python-backend stubs: the OCR's work, which
    other load on a shared machine stretches in wall time but not in CPU time."""
    server = psutil.Process(pid)
    times = [p.cpu_times() for p in (server, *server.children(recursive=True))]
    return sum(t.user + t.system for t in times)


async def settled(
    stats: grpcclient.InferenceServerClient, before: dict[str, int], calls: int
) -> dict[str, int]:
    """Triton's counts once they show the `ocr` calls made (its statistics lag the responses a little)."""
    for _ in range(100):
        after = await asyncio.to_thread(executions, stats)
        if after[contract.OCR] - before[contract.OCR] >= calls:
            return after
        await asyncio.sleep(0.01)
    raise RuntimeError(f"Triton's statistics never showed the {calls} ocr calls made")


async def read(tool: ReadSigns, models: CountingModels, street: Street) -> tuple[float, list[Evidence]]:
    """One OCR stage on one photo, as the searcher runs it: seconds and the evidence."""
    settings = tool.settings
    options = RunOptions(
        use_reasoner=False, use_vlm_guesser=False, tools=frozenset({"ocr"}), max_new_tokens=16
    )
    evidence: list[Evidence] = []
    started = time.perf_counter()
    view = await asyncio.to_thread(downscale, street.image, contract.DETECTOR_MAX_SIDE, 1)
    search = Search(models, settings, options, street.image, view, Deadline.after(120), evidence.append)  # type: ignore[arg-type]
    search.crops = street.crops
    await tool.run(search)
    return time.perf_counter() - started, evidence


def agreement(lines: list[set[str]], baseline: list[set[str]]) -> dict[str, float]:
    """Micro precision/recall of the normalised lines per photo against the baseline's, and the mean best
    rapidfuzz ratio (0-100) of each baseline line among this strategy's lines of the same photo."""
    common = sum(len(a & b) for a, b in zip(lines, baseline))
    similarity = [
        max((fuzz.ratio(line, other) for other in mine), default=0.0)
        for mine, theirs in zip(lines, baseline)
        for line in theirs
    ]
    return {
        "precision": common / max(1, sum(map(len, lines))),
        "recall": common / max(1, sum(map(len, baseline))),
        "similarity": statistics.fmean(similarity) if similarity else 100.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/bench/ocr_once.json"))
    args = parser.parse_args()
    console = Console(width=max(Console().width, 120))
    photos = streets()
    with tempfile.TemporaryDirectory(prefix="ocr-once-") as folder:
        with console.status("exporting the OCR models..."), Progress(disable=True) as quiet:
            build(ExportSpec(output=Path(folder)), quiet)  # the spec's default: PP-OCR only
        config = TritonConfig(Path(folder), ports=TritonPorts.free())
        with console.status("starting Triton with the OCR models..."), EmbeddedTriton(config) as triton:
            stats = grpcclient.InferenceServerClient(triton.grpc_url)
            assert triton.pid is not None
            results = asyncio.run(measure(triton.grpc_url, photos, stats, triton.pid, console))
            stats.close()
    report(results, photos, machine(), args.out, console)


async def measure(
    url: str, photos: list[Street], stats: grpcclient.InferenceServerClient, server: int, console: Console
) -> dict[str, dict]:
    """Every strategy on every photo, interleaved (the order turns with the photo) so that load from
    elsewhere on the machine falls on all of them alike; Triton's counts are read around each stage."""
    triton = TritonModels(url, Metrics(), load_settings().max_message_bytes)
    tools = {name: ReadSigns.create(load_settings(tools={"ocr": c})) for name, c in STRATEGIES.items()}
    counting = CountingModels(triton)
    results = {
        name: {
            "seconds": [],
            "cpu": [],
            "ocr": [],
            "evidence": [],
            "calls": dict.fromkeys(contract.OCR_MODELS, 0),
        }
        for name in tools
    }
    try:
        for tool in tools.values():  # warm-up
            await read(tool, counting, photos[0])  # type: ignore[arg-type]
        with Progress(console=console, transient=True) as progress:
            for k, photo in enumerate(progress.track(photos, description="photos")):
                names = list(tools)[k % len(tools) :] + list(tools)[: k % len(tools)]
                for name in names:
                    counting.calls.clear()
                    before = await asyncio.to_thread(executions, stats)
                    cpu = cpu_seconds(server) + time.process_time()
                    took, found = await read(tools[name], counting, photo)  # type: ignore[arg-type]
                    after = await settled(stats, before, counting.calls.get(contract.OCR, 0))
                    results[name]["cpu"].append(cpu_seconds(server) + time.process_time() - cpu)
                    results[name]["seconds"].append(took)
                    results[name]["ocr"].append(after[contract.OCR] - before[contract.OCR])
                    results[name]["evidence"].append(found)
                    for model in contract.OCR_MODELS:
                        results[name]["calls"][model] += after[model] - before[model]
    finally:
        await triton.close()
    return results


def report(results: dict[str, dict], photos: list[Street], host: dict, out: Path, console: Console) -> None:
    def line_sets(evidence: list[list[Evidence]]) -> list[set[str]]:
        return [{normalise_text(e.result) for e in found} for found in evidence]

    truth = [{normalise_text(line) for lines in p.lines for line in lines} for p in photos]
    baseline = line_sets(results[BASELINE]["evidence"])
    summary: dict[str, dict] = {}
    for name, r in results.items():
        sets = line_sets(r["evidence"])
        where = {
            normalise_text(line): crop.where
            for p in photos
            for crop, lines in zip(p.crops, p.lines)
            for line in lines
        }
        exact = [e for found in r["evidence"] for e in found if normalise_text(e.result) in where]
        summary[name] = {
            "ocr_stage_ms_mean": 1e3 * statistics.fmean(r["seconds"]),
            "ocr_stage_ms_median": 1e3 * statistics.median(r["seconds"]),
            "ocr_stage_ms_per_photo": [round(1e3 * s, 1) for s in r["seconds"]],
            "cpu_ms_mean": 1e3 * statistics.fmean(r["cpu"]),
            "calls_per_photo": {m: n / len(photos) for m, n in r["calls"].items()},
            "agreement_with_every_crop": agreement(sets, baseline),
            "drawn_lines_read_exactly": sum(len(a & b) for a, b in zip(sets, truth)) / sum(map(len, truth)),
            "exact_lines_on_their_sign": sum(e.query == where[normalise_text(e.result)] for e in exact)
            / max(1, len(exact)),
        }
    layouts = sorted({p.name.split("#")[0] for p in photos}, key=lambda s: int(s.split("x")[0]))
    result = {
        "machine": host,
        "photos": [
            {"name": p.name, "signs": sum(1 for lines in p.lines if lines), "crops": len(p.crops)}
            for p in photos
        ],
        "strategies": STRATEGIES,
        "baseline": BASELINE,
        "results": summary,
        "by_layout": {
            name: {
                layout: {
                    key: scale
                    * statistics.fmean(v for p, v in zip(photos, r[key]) if p.name.startswith(layout))
                    for key, scale in (("seconds", 1e3), ("cpu", 1e3), ("ocr", 1))
                }
                for layout in layouts
            }
            for name, r in results.items()
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    signs = sum(r["signs"] for r in result["photos"])
    table = Table(
        title=f"OCR once per photo: {len(photos)} street scenes, {signs} signs (+1 textless crop each)"
    )
    for column in ("strategy", "OCR stage ms", "CPU ms", "ocr/det/rec calls", "P/R vs every_crop",
                   "similarity", "drawn lines read", "on their sign"):  # fmt: skip
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for name, s in summary.items():
        c, a = s["calls_per_photo"], s["agreement_with_every_crop"]
        table.add_row(
            name,
            f"{s['ocr_stage_ms_mean']:.0f}",
            f"{s['cpu_ms_mean']:.0f}",
            f"{c[contract.OCR]:.1f}/{c[contract.OCR_DET]:.1f}/{c[contract.OCR_REC]:.1f}",
            f"{a['precision']:.2f}/{a['recall']:.2f}",
            f"{a['similarity']:.1f}",
            f"{s['drawn_lines_read_exactly']:.0%}",
            f"{s['exact_lines_on_their_sign']:.0%}",
        )
    console.print(table)
    for name, by_layout in result["by_layout"].items():
        console.print(
            f"{name}, by photo size (OCR stage ms, CPU ms, ocr calls): "
            + ", ".join(f"{k} {v['seconds']:.0f}/{v['cpu']:.0f}/{v['ocr']:.1f}" for k, v in by_layout.items())
        )
    console.print(f"{host['cpu']}, {host['cores']} cores -> {out}")


if __name__ == "__main__":
    main()
