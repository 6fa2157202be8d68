"""The `navig` command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from tritonclient.utils import InferenceServerException

from navig.client.eval.cli import eval_command
from navig.client.gpu_check.cli import gpu_check_app
from navig.client.images import ImageReadError, expand_paths, read_rgb
from navig.client.locate import locate
from navig.client.profile.cli import profile_app
from navig.client.triton_ocr import OcrClient
from navig.export.cli import DEFAULT_REPOSITORY
from navig.export.cli import app as export_app
from navig.orchestrator.cli import serve_geolocator, triton_app
from navig.orchestrator.embedded_triton import TritonLaunchError
from navig.orchestrator.tools.gazetteer.cli import gazetteer_app
from navig.orchestrator.tools.guidebook.cli import guidebook_app

# What `pip install navig-serve` leaves out: the [cpu] extra's model stack (export, serving models,
# building guidebooks). Only the verbs that need it import it; `locate`, `profile`, `eval` never do.
EXTRA_MODULES = frozenset(
    "cv2 faiss onnx onnxruntime onnxscript peft pytriton rapidocr safetensors tokenizers torch transformers "
    "xgrammar".split()
)
EXTRA_HINT = "pip install 'navig-serve[cpu]'"


class NavigTyper(typer.Typer):
    """A verb that needs the [cpu] extra, run without it, exits 1 with the install hint, not a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if (exc.name or "").partition(".")[0] not in EXTRA_MODULES:
                raise
            hint = escape(EXTRA_HINT)
            errors.print(f"[red]error:[/red] this command needs {exc.name}, from the cpu extra: {hint}")
            raise SystemExit(1) from None


app = NavigTyper(help="navig-serve: Triton-served NAVIG geo-localization.", no_args_is_help=True)
app.add_typer(export_app, name="export")
app.add_typer(triton_app, name="triton")
app.add_typer(gazetteer_app, name="gazetteer")
app.add_typer(guidebook_app, name="guidebook")
app.add_typer(profile_app, name="profile")
app.add_typer(gpu_check_app, name="gpu-check")
app.command("serve")(serve_geolocator)
app.command()(locate)
app.command("eval")(eval_command)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

TritonUrl = Annotated[str, typer.Option(help="gRPC address of a running Triton server.")]


@app.command()
def ocr(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    triton_url: TritonUrl = "127.0.0.1:8001",
) -> None:
    """Read the text in IMAGES with the `ocr` model of a running Triton server."""
    try:
        paths = expand_paths(images)
        client = OcrClient(triton_url)
        client.wait_ready()
        for path in paths:
            image = read_rgb(path)
            started = time.perf_counter()
            lines = client.read(image)
            elapsed_ms = (time.perf_counter() - started) * 1e3
            console.print(f"[bold]{path}[/bold]  ({elapsed_ms:.0f} ms)")
            for line in lines:
                console.print(f"  {line.text}  [dim]{line.score:.2f}[/dim]")
    except ImageReadError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    except InferenceServerException as exc:
        errors.print(f"[red]error:[/red] Triton at {triton_url}: {exc.message()}")
        raise typer.Exit(1) from exc


@app.command()
def demo(
    model_repository: Annotated[Path, typer.Option(help="Built by `navig export`.")] = DEFAULT_REPOSITORY,
    samples: Annotated[Path, typer.Option(help="Rendered sample signs.")] = Path("samples"),
    all_samples: Annotated[
        bool, typer.Option("--all", help="Every sample sign, not a handful from different countries.")
    ] = False,
) -> None:
    """Start the embedded Triton, Locate a handful of sample signs (--all: every one), stop it."""
    from navig.client.demo import DEFAULT_COUNT, run_demo

    try:
        run_demo(model_repository, samples, console, None if all_samples else DEFAULT_COUNT)
    except TritonLaunchError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
