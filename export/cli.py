"""`navig export ...`: build servable artifacts and model repositories."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from navig.export.errors import ExportError

if TYPE_CHECKING:
    from navig.export.build import BuildResult
    from navig.export.spec import ExportSpec

app = typer.Typer(help="Turn checkpoints into a Triton model repository.", no_args_is_help=True)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

DEFAULT_REPOSITORY = Path("build/model_repository")


def _progress() -> Progress:
    from navig.export.progress import BytesColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        BytesColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console, transient=True)


def run_build(spec: ExportSpec, reuse: bool = False, jobs: int | None = None) -> None:
    """Builds (or, with `reuse`, keeps a repository exported from the same inputs), prints the report
    table and notes; ExportError -> message + exit code 1."""
    from navig.export.build import build
    from navig.export.build import reuse as reused
    from navig.export.fingerprint import navig_version
    from navig.export.outputs import reused_or_built
    from navig.export.repository import REPORT_FILE

    def export() -> BuildResult:
        from navig.export.progress import attached

        quiet_transformers()
        with _progress() as progress, attached(progress):
            return build(spec, progress, jobs)

    started = time.perf_counter()
    try:
        with reused_or_built(
            spec.output, lambda: reused(spec), export, force=not reuse, waiting=lambda: _waiting(spec.output)
        ) as shared:
            assert shared is not None  # it waits
            result, was_reused = shared
    except ExportError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    recorded = " (reused: figures as recorded)" if was_reused else ""
    if was_reused:
        console.print(
            f"[green]reused[/green] {spec.output}: exported from the same inputs (spec, checkpoint "
            f"bytes, navig {navig_version()} sources, library versions); --force exports again"
        )
    table = Table(title=f"{spec.profile} model repository: {result.repository}{recorded}")
    for column in ("model", "artifact", "size", "parity vs source (tolerance)", "seconds"):
        table.add_column(column)
    for r in result.reports:
        path = str(r.path.relative_to(result.repository))
        table.add_row(r.model, path, f"{r.size_bytes / 1e6:.1f} MB", r.parity(), f"{r.seconds:.1f}")
    console.print(table)
    for warning in (w for r in result.reports for w in r.warnings):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print(
        f"{len(result.models)} models in {time.perf_counter() - started:.1f} s; "
        f"report, with what each figure compares ('check'): {result.repository / REPORT_FILE}"
    )


def _waiting(output: Path) -> None:
    console.print(f"waiting for {output}: a test session or another export is using it")


def quiet_transformers() -> None:
    """Our progress bars and report say what happens; the libraries' own chatter would interleave
    (transformers' bars, deprecation notices, torch.onnx noting that torchvision is absent)."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|navig)\.")
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)


@app.command("build")
def export_build(
    spec_file: Annotated[Path, typer.Argument(help="Export spec (YAML).", metavar="SPEC")],
    profile: Annotated[
        Literal["cpu", "gpu"] | None, typer.Option(help="Override the spec's profile.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Override the spec's output folder.")] = None,
    stream: Annotated[bool | None, typer.Option(help="Streaming (decoupled) VLM models.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Export even if the output was exported from the same inputs.")
    ] = False,
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes (default: 2 when there are 2 cores): the two GroundingDINO exports run side "
            "by side, each its own memory; 1 exports one model after the other.",
        ),
    ] = None,
) -> None:
    """Export everything SPEC names into a Triton model repository for one profile.

    An output folder exported before from the same inputs is reused: its export_report.json records
    a sha256 of the spec, the checkpoints' bytes, the navig version and sources and the library
    versions, and every artifact it lists must still be there."""
    from navig.export.spec import load_spec  # its GpuOptions module needs onnx: the [cpu] extra

    try:
        spec = load_spec(spec_file)
    except ExportError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    updates: dict[str, object] = {}
    if profile:
        updates["profile"] = profile
    if out:
        updates["output"] = out.resolve()
    if stream is not None and spec.vlm:
        updates["vlm"] = spec.vlm.model_copy(update={"stream": stream})
    run_build(spec.model_copy(update=updates), reuse=not force, jobs=jobs)


@app.command("ocr")
def export_ocr(
    out: Annotated[Path, typer.Option(help="Model repository to write into.")] = DEFAULT_REPOSITORY,
    det: Annotated[Path | None, typer.Option(help="PP-OCR det ONNX (default: rapidocr's).")] = None,
    rec: Annotated[Path | None, typer.Option(help="PP-OCR rec ONNX (default: rapidocr's).")] = None,
    profile: Annotated[Literal["cpu", "gpu"], typer.Option()] = "cpu",
) -> None:
    """Only the PP-OCR models (ocr_det, ocr_rec, ocr)."""
    from navig.export.spec import ExportSpec, OcrSpec

    run_build(ExportSpec(profile=profile, output=out.resolve(), ocr=OcrSpec(det=det, rec=rec)))


@app.command("demo-checkpoints")
def export_demo_checkpoints(
    preset: Annotated[
        Literal["tiny", "small"], typer.Option(help="tiny: tests; small: benchmarks.")
    ] = "tiny",
    out: Annotated[Path, typer.Option(help="Folder for the checkpoints and export.yaml.")] = Path(
        "build/checkpoints"
    ),
    force: Annotated[bool, typer.Option("--force", help="Build even if OUT holds them already.")] = False,
) -> None:
    """Random-initialised Qwen2-VL + LoRA, GroundingDINO and CLIP checkpoints in the real formats.

    They are seeded: a folder built for the same preset by the same navig sources and libraries,
    its files unchanged since (sha256), is reused."""
    from navig.export.demo_checkpoints import SPEC_FILE, build_demo_checkpoints, reused_demo_checkpoints
    from navig.export.outputs import reused_or_built

    def build() -> dict[str, int]:
        quiet_transformers()
        with console.status(f"building {preset} checkpoints..."):
            return build_demo_checkpoints(out, preset)

    reuse = partial(reused_demo_checkpoints, out, preset)
    with reused_or_built(out, reuse, build, force=force, waiting=lambda: _waiting(out)) as shared:
        assert shared is not None  # it waits
        counts, was_reused = shared
    if was_reused:
        console.print(
            f"[green]reused[/green] the {preset} checkpoints in {out}: same preset, navig sources and "
            "libraries, files unchanged; --force builds them again"
        )
    table = Table(title=f"{preset} demo checkpoints in {out}")
    table.add_column("checkpoint")
    table.add_column("parameters", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    console.print(table)
    console.print(f"export them with: navig export build {out / SPEC_FILE}")


@app.command("convert-pickle")
def export_convert_pickle(
    folder: Annotated[Path, typer.Argument(help="Checkpoint or adapter folder with pickled weights.")],
) -> None:
    """Write safetensors beside pickled weights (*.bin, *.pt, *.pth, *.ckpt), which the exporter never loads.

    Reads them with torch.load(weights_only=True): tensors and plain containers only. Run it on files
    you trust; the pickled files are left in place."""
    from navig.export.pickled import convert_folder

    if not folder.is_dir():
        errors.print(f"[red]error:[/red] folder not found: {folder}")
        raise typer.Exit(2)
    try:
        with console.status(f"converting the pickled weights in {folder}..."):
            written = convert_folder(folder)
    except ExportError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    for path in written:
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@app.command("samples")
def export_samples(
    out: Annotated[Path, typer.Option(help="Folder for the images and index.json.")] = Path("samples"),
    seed: int = 0,
) -> None:
    """Render the street-sign sample photos with their GeoNames ground truth."""
    from navig.export.samples import render_samples

    samples = render_samples(out, seed)
    console.print(f"{len(samples)} sample signs written to {out}")
