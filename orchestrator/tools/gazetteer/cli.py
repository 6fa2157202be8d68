"""`navig gazetteer build|search`: build the offline index ahead of time, try queries against it."""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from navig.orchestrator.tools.gazetteer.build import build_index
from navig.orchestrator.tools.gazetteer.index import GazetteerError, GazetteerIndex, default_dir
from navig.orchestrator.tools.gazetteer.search import Gazetteer
from navig.orchestrator.tools.language import LanguagePriorModel

gazetteer_app = typer.Typer(help="The offline gazetteer (GeoNames) behind map search.", no_args_is_help=True)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
IndexDir = Annotated[Path | None, typer.Option("--dir", help="Index directory [~/.cache/navig/gazetteer].")]


def open_with_progress(path: Path | None, console: Console = errors) -> GazetteerIndex:
    """Opens the index, building it first (with a progress bar) when it is missing or stale."""
    columns = (TextColumn("gazetteer: {task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("checking", total=3)
        return GazetteerIndex.open(
            path, progress=lambda step, done, total: progress.update(task, description=step, completed=done)
        )


@gazetteer_app.command()
def build(out: IndexDir = None) -> None:
    """Build (or rebuild) the index from the GeoNames data in the installed wheels."""
    path = out or default_dir()
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=errors, transient=True) as progress:
            task = progress.add_task("starting", total=3)
            build_index(path, lambda step, done, _: progress.update(task, description=step, completed=done))
        meta = GazetteerIndex(path).meta
    except (OSError, GazetteerError) as exc:
        errors.print(f"[red]error:[/red] cannot build the gazetteer at {path}: {exc}")
        raise typer.Exit(1) from exc
    console.print(f"gazetteer: {meta['places']:,} places, {meta['keys']:,} names -> {path} "
                  f"({time.perf_counter() - started:.1f} s)")  # fmt: skip


@gazetteer_app.command()
def search(
    lines: Annotated[list[str], typer.Argument(help="Text lines as read on a sign.")],
    index_dir: IndexDir = None,
    limit: Annotated[int, typer.Option(min=1, max=50)] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Look LINES up as the server would (language prior included) and show the candidates."""
    try:
        started = time.perf_counter()
        index = open_with_progress(index_dir)
        loaded_ms = (time.perf_counter() - started) * 1e3
    except (OSError, GazetteerError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    prior = LanguagePriorModel()
    language, weights = prior(lines)
    gazetteer = Gazetteer(index, prior)
    gazetteer.lookup(lines, limit)  # warm: the language models load on first use
    started = time.perf_counter()
    places = gazetteer.lookup(lines, limit)
    query_ms = (time.perf_counter() - started) * 1e3
    if as_json:
        console.print_json(json.dumps({"language": language, "places": [asdict(p) for p in places]}))
        return
    table = Table("name", "admin1", "country", "lat", "lon", "population", "score", "matched", "source")
    for p in places:
        table.add_row(p.name, p.admin1, p.country_code, f"{p.latitude:.4f}", f"{p.longitude:.4f}",
                      f"{p.population:,}", f"{p.score:.3f}", p.matched, p.source)  # fmt: skip
    console.print(table)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    top = ", ".join(f"{c} {w:.2f}" for c, w in sorted(weights.items(), key=lambda kv: -kv[1])[:5])
    console.print(f"language: {language or '?'} ({top or 'no prior'}); index load {loaded_ms:.0f} ms, "
                  f"query {query_ms:.2f} ms, peak RSS {rss_mb:.0f} MB")  # fmt: skip
