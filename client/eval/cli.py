"""`navig eval DATASET.csv`: evaluate a running Geolocator on a dataset and print the paper metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from navig.client.eval.dataset import DatasetError, load_dataset
from navig.client.eval.metrics import SCALES, THRESHOLDS_KM, summarise
from navig.client.eval.runner import ResultsFileError, ServerUnavailable, evaluate, new_progress
from navig.client.geolocator import GeolocatorClient
from navig.client.locate import PipelineOption, build_options

DEFAULT_OUT_DIR = Path("build/eval")
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def summary_path(out: Path) -> Path:
    """`build/eval/x.jsonl` -> `build/eval/x.summary.json`."""
    return out.with_name(f"{out.stem if out.suffix == '.jsonl' else out.name}.summary.json")


def eval_command(
    dataset: Annotated[
        Path, typer.Argument(metavar="DATASET.csv", help="Images and true coordinates (see docs/eval.md).")
    ],
    images: Annotated[
        Path | None, typer.Option(help="Folder of the images; relative paths resolve here (default: CSV's).")
    ] = None,
    address: Annotated[str, typer.Option(help="host:port of a running Geolocator.")] = "127.0.0.1:50051",
    out: Annotated[
        Path | None, typer.Option(help="Results JSONL, resumed if there (default: build/eval/<stem>.jsonl).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight.")] = 4,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N images.")] = None,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds per image, retries included.")] = 300.0,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Per VLM generation.")] = None,
    pipeline: PipelineOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary JSON only.")] = False,
) -> None:
    """Geolocate every image of DATASET with a running Geolocator and report geo-accuracy.

    Each image's result is appended to a JSONL file as soon as it is known.

    Running the same command again resumes: only images without an OK answer are sent.
    """
    stdout = Console(soft_wrap=True)
    stderr = Console(stderr=True, soft_wrap=True)
    out = out or DEFAULT_OUT_DIR / f"{dataset.stem}.jsonl"
    try:
        items = load_dataset(dataset, images, limit)
    except DatasetError as exc:
        _error(stderr, str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    if not items:
        _error(stderr, f"{dataset}: no images listed")
        raise typer.Exit(EXIT_USAGE)

    def on_resume(done: int, todo: int) -> None:
        if done and not todo:
            stderr.print(f"all {done} images already evaluated in {out}; nothing to request", markup=False)
        elif done:
            stderr.print(f"resuming {out}: {done} done, {todo} to go", markup=False)

    options = build_options(max_new_tokens, set(), [], False, False, pipeline.value if pipeline else None)
    try:
        records = evaluate(
            items,
            lambda: GeolocatorClient(address, timeout_s=timeout),
            out,
            concurrency,
            options=options,
            progress=new_progress(console=stderr, transient=True),
            on_resume=on_resume,
        )
    except ResultsFileError as exc:
        _error(stderr, str(exc))
        raise typer.Exit(EXIT_USAGE) from None
    except ServerUnavailable as exc:
        _error(
            stderr,
            f"{exc} at {address}; stopped with {sum(r['status'] == 'OK' for r in exc.records)} of "
            f"{len(items)} images done. "
            f"Results so far are in {out}; run the same command again to resume.",
        )
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    except KeyboardInterrupt:
        stderr.print(f"interrupted; results so far are in {out}; run again to resume.", markup=False)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug or a full disk: say so plainly, the results file is intact
        _error(stderr, f"{type(exc).__name__}: {exc}. Results so far are in {out}.")
        raise typer.Exit(1) from None

    summary = summarise(records) | {"dataset": str(dataset), "address": address, "results": str(out)}
    summary_file = summary_path(out)
    try:
        summary_file.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        _error(stderr, f"cannot write the summary: {exc}")
        raise typer.Exit(1) from None
    if json_output:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    stdout.print(summary_table(summary))
    stdout.print(f"results: {out}\nsummary: {summary_file}", markup=False, highlight=False)


def summary_table(summary: dict[str, Any]) -> Table:
    """The summary as a two-column table, in the order the papers report the metrics."""
    table = Table(title=f"{escape(summary['dataset'])}: {summary['records']} images", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for km, scale in zip(THRESHOLDS_KM, SCALES):
        within = summary["within"][str(km)]
        table.add_row(f"within {km} km ({scale})", f"{_pct(summary['accuracy'][str(km)])}  ({within})")
    table.add_row("mean error (answered)", _km(summary["mean_error_km"]))
    table.add_row("median error (answered)", _km(summary["median_error_km"]))
    table.add_row("GeoScore (mean, max 5000)", _num(summary["geoscore"], ".0f"))
    country = summary["country"]
    table.add_row(
        "country accuracy", f"{_pct(country['accuracy'])}  ({country['correct']}/{country['evaluated']})"
    )
    if country["unresolved_truth"]:
        table.add_row("unknown truth countries", ", ".join(country["unresolved_truth"][:5]))
    table.add_row("answered / unanswered", f"{summary['answered']} / {summary['unanswered']}")
    for component, share in summary["answered_by"].items():
        count = summary["answered_by_counts"][component]
        table.add_row(f"answered by {component}", f"{_pct(share)}  ({count})")
    errors = summary["errors"]
    table.add_row("failed requests", ", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "0")
    return table


def _error(console: Console, message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def _km(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} km"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
