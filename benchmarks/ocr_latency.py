"""OCR latency on the sample signs: the `ocr` model through Triton (gRPC) vs rapidocr in-process.

Both read the same images with the same PP-OCR weights and detector settings (rapidocr's
angle classifier off, as in the served pipeline). Each image is read once as warm-up, then
`--repeats` times; the medians over all requests are reported with the machine description.
Run: `make bench` (or `python benchmarks/ocr_latency.py --model-repository build/model_repository`).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
from rapidocr import RapidOCR
from rich.console import Console
from rich.progress import track

from navig.client.images import read_rgb
from navig.client.profile.machine import machine
from navig.client.triton_ocr import OcrClient
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.model_repository.ocr_pipeline import OcrSettings
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts


def timed(fn, images: list[np.ndarray], repeats: int, label: str) -> list[float]:
    for image in images:  # warm-up
        fn(image)
    samples = []
    for _ in track(range(repeats), description=label):
        for image in images:
            started = time.perf_counter()
            fn(image)
            samples.append((time.perf_counter() - started) * 1e3)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("build/bench/ocr_latency.json"))
    args = parser.parse_args()
    console = Console()
    images = [read_rgb(SAMPLES_DIR / s.file) for s in load_samples(SAMPLES_DIR)]

    settings = OcrSettings()
    logging.getLogger("RapidOCR").setLevel(logging.WARNING)
    engine = RapidOCR(
        params={
            "Global.use_cls": False,
            "Global.log_level": "warning",
            "Det.limit_type": settings.limit_type,
            "Det.limit_side_len": settings.limit_side_len,
        }
    )
    in_process = timed(lambda img: engine(img[:, :, ::-1]), images, args.repeats, "rapidocr in-process")

    config = TritonConfig(args.model_repository, ports=TritonPorts.free())
    with EmbeddedTriton(config) as triton:
        client = OcrClient(triton.grpc_url)
        served = timed(client.read, images, args.repeats, "Triton gRPC `ocr`  ")
        client.close()

    result = {
        "machine": machine(),
        "images": len(images),
        "repeats": args.repeats,
        "median_ms": {
            "triton_grpc": statistics.median(served),
            "rapidocr_in_process": statistics.median(in_process),
        },
        "p90_ms": {
            "triton_grpc": float(np.percentile(served, 90)),
            "rapidocr_in_process": float(np.percentile(in_process, 90)),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    m = result["median_ms"]
    console.print(
        f"OCR median latency over {len(served)} requests: Triton gRPC {m['triton_grpc']:.1f} ms, "
        f"rapidocr in-process {m['rapidocr_in_process']:.1f} ms "
        f"(ratio {m['triton_grpc'] / m['rapidocr_in_process']:.2f}); {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores -> {args.out}"
    )


if __name__ == "__main__":
    main()
