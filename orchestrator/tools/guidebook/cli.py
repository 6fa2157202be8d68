"""`navig guidebook ...`: write the open default guidebook as JSONL and build FAISS indexes from JSONL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from navig.export.cli import DEFAULT_REPOSITORY
from navig.model_repository import contract
from navig.orchestrator.tools.guidebook.entries import GuidebookError, read_entries, write_entries

guidebook_app = typer.Typer(
    help="The SEARCHER's clue book: default data and FAISS indexes.", no_args_is_help=True
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)

BAD_INPUT, FAILED = 2, 1


def _progress() -> Progress:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=console, transient=True)


def _fail(message: str, code: int) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@guidebook_app.command("default")
def guidebook_default(
    out: Annotated[Path, typer.Option(help="JSONL file to write.", metavar="FILE.jsonl")],
) -> None:
    """Write the open default guidebook (per-country clues from ISO 3166, CLDR, libphonenumber, GeoNames)."""
    from navig.orchestrator.tools.guidebook.default import default_entries

    rows = default_entries()
    try:
        write_entries(out, rows)
    except OSError as exc:
        raise _fail(f"{out}: {exc.strerror or exc}", FAILED) from exc
    countries = len({row["country_code"] for row in rows})
    console.print(f"{len(rows)} entries for {countries} countries -> {out}")


@guidebook_app.command("build")
def guidebook_build(
    src: Annotated[
        Path, typer.Argument(help="Guidebook JSONL (see docs/guidebook.md).", metavar="SRC.jsonl")
    ],
    out: Annotated[
        Path, typer.Option(help="Index folder to write (settings: guidebook_dir).", metavar="DIR")
    ],
    model_repository: Annotated[
        Path, typer.Option(help="Exported model repository: clip_text/clip_image ONNX + tokenizer.")
    ] = DEFAULT_REPOSITORY,
    triton_url: Annotated[
        str | None, typer.Option(help="Embed through a running Triton instead of in-process ONNX Runtime.")
    ] = None,
) -> None:
    """Embed every entry of SRC with CLIP and write a FAISS index folder to DIR."""
    from navig.orchestrator.tools.guidebook.build import (
        TOKENIZER_DIR,
        OnnxClipEmbedder,
        TritonClipEmbedder,
        embed_entries,
        save_atomically,
    )

    started = time.perf_counter()
    try:
        entries = read_entries(src)
    except GuidebookError as exc:
        raise _fail(str(exc), BAD_INPUT) from exc
    try:
        if triton_url:
            tokenizer = model_repository / contract.CLIP_TEXT / "1" / TOKENIZER_DIR
            embedder = TritonClipEmbedder(triton_url, tokenizer)
        else:
            embedder = OnnxClipEmbedder(model_repository)
        with _progress() as progress:
            book = embed_entries(entries, embedder, src.parent, progress)
        save_atomically(book, out)
    except GuidebookError as exc:
        raise _fail(str(exc), FAILED) from exc
    except OSError as exc:
        raise _fail(f"{out}: {exc.strerror or exc}", FAILED) from exc
    seconds = time.perf_counter() - started
    where = f"Triton at {triton_url}" if triton_url else str(model_repository)
    console.print(f"{book.count} entries x {book.dim} dims embedded via {where} in {seconds:.1f} s -> {out}")
