"""`navig demo`: the main job end to end on the sample signs, on the embedded Triton server."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from navig.client.images import read_rgb
from navig.client.triton_ocr import OcrClient
from navig.export.samples import load_samples
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts


def run_demo(model_repository: Path, samples_dir: Path, console: Console) -> int:
    """Returns the number of signs read exactly."""
    samples = load_samples(samples_dir)
    config = TritonConfig(model_repository, ports=TritonPorts.free(), log_file=Path("build/demo-triton.log"))
    with console.status("starting the embedded Triton server..."):
        started = time.perf_counter()
        triton = EmbeddedTriton(config)
        triton.start()
    console.print(
        f"Triton ready on {triton.grpc_url} in {time.perf_counter() - started:.1f} s (log: {config.log_file})"
    )
    table = Table(title="OCR through Triton (gRPC) on the sample signs")
    for column in ("image", "place (ground truth)", "what the sign says", "exact", "ms"):
        table.add_column(column)
    latencies, exact = [], 0
    try:
        client = OcrClient(triton.grpc_url)
        for sample in samples:
            image = read_rgb(samples_dir / sample.file)
            t0 = time.perf_counter()
            lines = client.read(image)
            latencies.append((time.perf_counter() - t0) * 1e3)
            ok = sample.read_exactly([line.text for line in lines])
            exact += ok
            table.add_row(
                sample.file,
                f"{sample.place} ({sample.country_code})",
                " | ".join(line.text for line in lines),
                "[green]yes[/green]" if ok else "[red]no[/red]",
                f"{latencies[-1]:.0f}",
            )
        client.close()
    finally:
        triton.stop()
    console.print(table)
    console.print(
        f"{exact}/{len(samples)} signs read exactly; OCR latency median "
        f"{statistics.median(latencies):.0f} ms, max {max(latencies):.0f} ms (first request included)"
    )
    return exact
