"""Exported encoders served by Triton and on ONNX Runtime in-process vs the same modules in PyTorch
eager, batch 1 and 8.

Uses the `--preset` demo checkpoints (default `small`: the real architectures' proportions at CPU
scale) and their model repository, built once into build/bench/ (`benchmarks.presets`), and times
each encoder three ways on the same inputs: the served model through the embedded Triton (gRPC on
loopback, python backend), the exported graph on ONNX Runtime in-process, and PyTorch eager, with
the same thread count. Medians of `--repeats` runs after a warm-up. The int8 variants (export spec
`precision: int8`, export/quantize.py: the same fp32 graphs quantized behind their parity gates, into
build/bench/repository-<preset>-int8) are timed beside fp32 the same two ways, with their gate figures.
Run: `make bench`, or `python -m benchmarks.encoders --preset small`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table

from benchmarks.presets import prepare
from navig.client.profile.machine import machine
from navig.export.cli import quiet_transformers
from navig.export.demo_checkpoints import SPEC_FILE
from navig.export.quantize import quantize_artifact
from navig.export.report import ArtifactReport
from navig.export.repository import REPORT_FILE
from navig.export.spec import load_spec
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts

BATCHES = (1, 8)
DETECTOR, CLIP_IMAGE = "detector (480x640 photos)", "clip_image (224x224 crops)"
INT8_MODELS = {DETECTOR: contract.DETECTOR, CLIP_IMAGE: contract.CLIP_IMAGE}  # clip_text stays fp32


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1e3)
    return statistics.median(samples)


def encoders(checkpoints: Path, repository: Path, threads: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (eager(batch), ort(batch)) closures over identical inputs."""
    from transformers import CLIPModel

    from navig.export.checkpoints import load_pretrained
    from navig.export.clip import ImageEncoder, TextEncoder, load_preprocess, tokenize
    from navig.export.detector import build_detector

    spec = load_spec(checkpoints / SPEC_FILE)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = lambda name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"), options)  # noqa: E731
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)
    crops = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    ids, mask = tokenize(
        repository / contract.CLIP_TEXT / "1" / "tokenizer",
        ["a road sign in Poland", "yellow town sign with black border", "house with a red tiled roof"] * 3,
    )
    detector = build_detector(
        checkpoints / "grounding_dino", image_size=spec.detector.image_size, top_k=spec.detector.top_k
    )
    clip = load_pretrained(CLIPModel, checkpoints / "clip", ("clip",))
    image_encoder = ImageEncoder(clip, load_preprocess(checkpoints / "clip")).eval()
    text_encoder = TextEncoder(clip).eval()
    det_s, img_s, txt_s = (
        session(contract.DETECTOR),
        session(contract.CLIP_IMAGE),
        session(contract.CLIP_TEXT),
    )
    return {
        "detector (480x640 photos)": (
            lambda b: detector(torch.from_numpy(photos[:b])),
            lambda b: det_s.run(None, {contract.DETECTOR_IMAGES: photos[:b]}),
        ),
        "clip_image (224x224 crops)": (
            lambda b: image_encoder(torch.from_numpy(crops[:b])),
            lambda b: img_s.run(None, {contract.CLIP_IMAGE_IMAGES: crops[:b]}),
        ),
        "clip_text (short clues)": (
            lambda b: text_encoder(torch.from_numpy(ids[:b]), torch.from_numpy(mask[:b])),
            lambda b: txt_s.run(
                None, {contract.CLIP_TEXT_INPUT_IDS: ids[:b], contract.CLIP_TEXT_ATTENTION_MASK: mask[:b]}
            ),
        ),
    }


def prepare_int8(repository: Path, output: Path, console: Console) -> tuple[Path, dict[str, dict]]:
    """The int8 encoders and their gate figures: `repository`'s fp32 `detector` and `clip_image` copied
    into `output` and quantized behind their gates, as `precision: int8` does after its fp32 export
    (export/quantize.py; tests/test_export_quantize.py runs that export), without exporting the same
    graphs again. Reused while `repository`'s export inputs are unchanged."""
    report = json.loads((repository / REPORT_FILE).read_text())
    stamp = output / "int8_gates.json"
    if (
        stamp.is_file()
        and (done := json.loads(stamp.read_text()))["fp32_inputs_sha256"] == report["inputs_sha256"]
    ):
        return output, done["gates"]
    shutil.rmtree(output, ignore_errors=True)
    gates = {}
    for artifact in (a for a in report["artifacts"] if a["model"] in INT8_MODELS.values()):
        model = artifact["model"]
        with console.status(f"{model}: int8, behind its parity gate..."):
            shutil.copytree(repository / model, output / model)
            fp32 = ArtifactReport(**{**artifact, "path": output / model / "1" / Path(artifact["path"]).name})
            gates[model] = quantize_artifact(fp32).gate
    stamp.write_text(json.dumps({"fp32_inputs_sha256": report["inputs_sha256"], "gates": gates}))
    return output, gates


def int8_sessions(repository: Path, threads: int) -> dict[str, Callable[[int], object]]:
    """name -> ort(batch) on the int8 graphs, the same inputs as `encoders`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)
    crops = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    det_s, img_s = (
        ort.InferenceSession(str(repository / m / "1" / "model.onnx"), options)
        for m in (contract.DETECTOR, contract.CLIP_IMAGE)
    )
    return {
        DETECTOR: lambda b: det_s.run(None, {contract.DETECTOR_IMAGES: photos[:b]}),
        CLIP_IMAGE: lambda b: img_s.run(None, {contract.CLIP_IMAGE_IMAGES: crops[:b]}),
    }


def time_served(repository: Path, rows: list[dict], repeats: int, console: Console, what: str) -> None:
    """Adds served_ms and served_speedup to the rows whose encoder the repository serves (only the
    timed models loaded: the full repository's VLMs would take longer to start than the timing)."""
    models = [f"--load-model={m}" for m in INT8_MODELS.values() if (repository / m).is_dir()]
    config = TritonConfig(
        repository, ports=TritonPorts.free(), extra_args=("--model-control-mode=explicit", *models)
    )
    with console.status(f"starting Triton on the {what} encoders..."), EmbeddedTriton(config) as triton:
        calls = served(repository, triton.grpc_url)
        for r in track(rows, description=f"timing the served {what} encoders"):
            call = calls.get(r["encoder"])
            if call is not None:
                r["served_ms"] = median_ms(lambda: call(r["batch"]), repeats)  # noqa: B023
                r["served_speedup"] = r["eager_ms"] / r["served_ms"]


def served(repository: Path, url: str) -> dict[str, Callable[[int], object]]:
    """name -> served(batch): the same inputs as `encoders`, through Triton's gRPC API."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(url)
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8)
    crops = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)

    def call(model: str, name: str, images: np.ndarray) -> object:
        tensor = triton_grpc.InferInput(name, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        return client.infer(model, [tensor])

    return {
        "detector (480x640 photos)": lambda b: call(contract.DETECTOR, contract.DETECTOR_IMAGES, photos[:b]),
        "clip_image (224x224 crops)": lambda b: call(
            contract.CLIP_IMAGE, contract.CLIP_IMAGE_IMAGES, crops[:b]
        ),
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['encoder'].split(' ')[0]} {r['precision']}\nbatch {r['batch']}" for r in results]
    x = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.bar(x - 0.27, [r["eager_ms"] for r in results], 0.27, label="PyTorch eager")
    ax.bar(x, [r["ort_ms"] for r in results], 0.27, label="ONNX Runtime in-process (exported)")
    ax.bar(x + 0.27, [r.get("served_ms") or 0 for r in results], 0.27, label="served by Triton (gRPC)")
    for i, r in enumerate(results):
        ax.text(i, r["ort_ms"], f"{r['speedup']:.1f}x", ha="center", va="bottom", fontsize=8)
        if r.get("served_ms"):
            ax.text(
                i + 0.27, r["served_ms"], f"{r['served_speedup']:.1f}x", ha="center", va="bottom", fontsize=8
            )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("median latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Exported encoders vs PyTorch eager (same inputs, same threads)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--root", type=Path, default=Path("build/bench"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    console = Console()
    checkpoints, repository = prepare(args.preset, args.root, console)
    with console.status("loading the encoders..."):
        pairs = encoders(checkpoints, repository, args.threads)
    results = []
    with torch.inference_mode():
        for name, (eager, onnx_run) in track(list(pairs.items()), description="timing encoders in-process"):
            for batch in BATCHES:
                eager_ms = median_ms(lambda: eager(batch), args.repeats)  # noqa: B023
                ort_ms = median_ms(lambda: onnx_run(batch), args.repeats)  # noqa: B023
                results.append(
                    {
                        "encoder": name,
                        "precision": "fp32",
                        "batch": batch,
                        "eager_ms": eager_ms,
                        "ort_ms": ort_ms,
                        "speedup": eager_ms / ort_ms,
                    }
                )
    del pairs  # the in-process models give the cores back to Triton
    int8_repository, gates = prepare_int8(repository, args.root / f"repository-{args.preset}-int8", console)
    eager = {(r["encoder"], r["batch"]): r["eager_ms"] for r in results}
    int8_rows = []
    for name, run in track(
        list(int8_sessions(int8_repository, args.threads).items()), description="timing int8"
    ):
        for batch in BATCHES:
            ort_ms = median_ms(lambda: run(batch), args.repeats)  # noqa: B023
            eager_ms = eager[(name, batch)]  # the same eager module and inputs as the fp32 row
            row = {"encoder": name, "precision": "int8", "batch": batch, "eager_ms": eager_ms}
            int8_rows.append(
                {**row, "ort_ms": ort_ms, "speedup": eager_ms / ort_ms, "gate": gates[INT8_MODELS[name]]}
            )
    time_served(repository, results, args.repeats, console, "fp32")
    time_served(int8_repository, int8_rows, args.repeats, console, "int8")
    order = {name: k for k, name in enumerate(dict.fromkeys(r["encoder"] for r in results))}
    results = sorted(results + int8_rows, key=lambda r: (order[r["encoder"]], r["precision"], r["batch"]))
    table = Table(title=f"{args.preset} preset, {args.threads} threads: median ms")
    columns = (
        "encoder",
        "precision",
        "batch",
        "PyTorch eager",
        "ONNX Runtime",
        "speedup",
        "Triton",
        "speedup",
    )
    for column in (*columns, "int8 gate"):
        table.add_column(column)
    for r in results:
        table.add_row(
            r["encoder"],
            r["precision"],
            str(r["batch"]),
            f"{r['eager_ms']:.1f}",
            f"{r['ort_ms']:.1f}",
            f"{r['speedup']:.2f}x",
            f"{r['served_ms']:.1f}" if "served_ms" in r else "-",
            f"{r['served_speedup']:.2f}x" if "served_ms" in r else "-",
            gate_text(r.get("gate")),
        )
    console.print(table)
    out = args.root / f"encoders-{args.preset}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "preset": args.preset,
                "threads": args.threads,
                "results": results,
                "int8_gates": gates,
            },
            indent=2,
        )
        + "\n"
    )
    plot(results, out.with_suffix(".png"))
    console.print(f"-> {out} and {out.with_suffix('.png')}")


def gate_text(gate: dict | None) -> str:
    """The int8 export gate's figure: the first entry of the report's gate (quantize.py)."""
    if not gate:
        return ""
    metric, value = next(iter(gate.items()))
    return f"{metric} {value:.4f} (>= {gate['required']})"


if __name__ == "__main__":
    main()
