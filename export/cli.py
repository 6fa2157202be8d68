"""`navig export ...`: build servable artifacts and model repositories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from navig.export.ocr import OcrExportError, OcrSources
from navig.export.report import write_report
from navig.export.repository import REPORT_FILE, write_ocr_models

app = typer.Typer(help="Turn checkpoints into a Triton model repository.", no_args_is_help=True)
console = Console()

DEFAULT_REPOSITORY = Path("build/model_repository")


@app.command("ocr")
def export_ocr(
    out: Annotated[Path, typer.Option(help="Model repository to write into.")] = DEFAULT_REPOSITORY,
    det: Annotated[Path | None, typer.Option(help="PP-OCR det ONNX (default: rapidocr's).")] = None,
    rec: Annotated[Path | None, typer.Option(help="PP-OCR rec ONNX (default: rapidocr's).")] = None,
) -> None:
    """Place the PP-OCR models (ocr_det, ocr_rec, ocr) into a cpu-profile model repository."""
    bundled = OcrSources.from_rapidocr_wheel()
    sources = OcrSources(det=det or bundled.det, rec=rec or bundled.rec)
    try:
        with Progress(console=console, transient=True) as progress:
            reports = write_ocr_models(out, sources, progress)
    except OcrExportError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    report_path = write_report(out / REPORT_FILE, reports)
    table = Table(title=f"Exported into {out}")
    for column in ("model", "file", "size", "max |diff| vs source"):
        table.add_column(column)
    for r in reports:
        table.add_row(
            r.model, str(r.path.relative_to(out)), f"{r.size_bytes / 1e6:.1f} MB", f"{r.max_abs_diff:.1e}"
        )
    console.print(table)
    console.print(f"report: {report_path}")


@app.command("samples")
def export_samples(
    out: Annotated[Path, typer.Option(help="Folder for the images and index.json.")] = Path("samples"),
    seed: int = 0,
) -> None:
    """Render the street-sign sample photos with their GeoNames ground truth."""
    from navig.export.samples import render_samples

    samples = render_samples(out, seed)
    console.print(f"{len(samples)} sample signs written to {out}")
