"""`navig locate IMG...`: photos through a running Geolocator, as rich panels or JSON lines.

Exit codes (scripts rely on them; the worst one over all images wins, numerically):
  0  every image was located
  1  the server answered but could not place some image (answered_by "none")
  2  bad usage or an input that cannot be read (nothing was sent)
  3  the server was unavailable or the deadline passed (after the retries)
  4  the server rejected an image (INVALID_ARGUMENT) or another RPC error
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import sys
import time
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from PIL import Image
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from navig.client.geolocator import GeolocatorClient, LocateError
from navig.client.images import ImageReadError, expand_paths
from navig.client.results import LocateResult
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.searcher import registry
from navig.orchestrator.settings import Pipeline


class Exit(IntEnum):
    OK = 0
    NOT_LOCATED = 1
    USAGE = 2
    UNAVAILABLE = 3
    RPC_ERROR = 4


UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
GLOB_CHARS = set("*?[")


class InputError(ValueError):
    """An argument that names no readable image: exit 2 before anything is sent."""


def expand_inputs(arguments: list[str]) -> list[Path]:
    """Files as given, directories expanded to their images, glob patterns expanded (sorted)."""
    paths: list[Path] = []
    for argument in arguments:
        if GLOB_CHARS & set(argument) and not Path(argument).exists():
            matches = sorted(glob.glob(argument))
            if not matches:
                raise InputError(f"{argument}: the pattern matches nothing")
            paths.extend(Path(m) for m in matches)
        else:
            paths.append(Path(argument))
    try:
        found = expand_paths(paths)
    except ImageReadError as exc:
        raise InputError(str(exc)) from exc
    for path in paths:
        if path.is_dir() and not any(p.parent == path for p in found):
            raise InputError(f"{path}: no images ({', '.join(contract.IMAGE_SUFFIXES)}) in this directory")
    for path in found:
        if not os.access(path, os.R_OK):
            raise InputError(f"{path}: not readable")
        if (kind := image_format(path)) not in contract.IMAGE_FORMATS:
            raise InputError(
                f"{path}: {kind or 'not an image'}; the server reads {'/'.join(contract.IMAGE_FORMATS)}"
            )
    return found


def image_format(path: Path) -> str | None:
    """The file's format from its header (Pillow reads no pixels), None when it is not an image."""
    try:
        with Image.open(path) as image:
            return image.format
    except (
        Exception
    ):  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError... on bad files
        return None


# `--pipeline`, the same for `navig locate`, `navig eval` and `navig profile`
PipelineOption = Annotated[
    Pipeline | None,
    typer.Option(
        case_sensitive=False,
        help="fast (the product) or reference (NAVIG's calls); server setting when not given.",
    ),
]


def build_options(
    max_new_tokens: int | None,
    disabled: set[str],
    skip: list[str],
    no_reasoning: bool,
    no_evidence: bool,
    pipeline: str | None = None,
    no_cache: bool = False,
) -> pb.LocateOptions:
    """Only what the user switched: every unset field keeps the server's setting."""
    fields: dict[str, Any] = dict.fromkeys(disabled, False)
    if no_cache:
        fields["no_cache"] = True
    if pipeline is not None:
        fields["pipeline"] = pb.PipelineMode.Value(pipeline.upper())  # ValueError: no such mode
    if skip:
        fields["tools"] = dict.fromkeys(skip, False)
    if max_new_tokens is not None:
        fields["max_new_tokens"] = max_new_tokens
    if no_reasoning:
        fields["return_reasoning"] = False
    if no_evidence:
        fields["return_evidence"] = False
    return pb.LocateOptions(**fields)


def exit_code(error: LocateError) -> Exit:
    return Exit.UNAVAILABLE if error.code in UNREACHABLE else Exit.RPC_ERROR


def locate(
    images: Annotated[
        list[str],
        typer.Argument(help="Image files, directories (their images) or glob patterns.", show_default=False),
    ],
    address: Annotated[str, typer.Option(help="Geolocator gRPC address.")] = "127.0.0.1:50051",
    timeout: Annotated[
        float, typer.Option(help="Deadline per image in seconds, retries included.", min=0.001)
    ] = 300.0,
    retries: Annotated[int, typer.Option(help="Retries on UNAVAILABLE (with backoff).", min=0)] = 3,
    tls: Annotated[bool, typer.Option("--tls", help="Use TLS (system roots unless --ca-file).")] = False,
    ca_file: Annotated[Path | None, typer.Option(help="PEM root certificates; implies --tls.")] = None,
    cert_file: Annotated[
        Path | None, typer.Option(help="PEM client certificate chain (mTLS, with --key-file); implies --tls.")
    ] = None,
    key_file: Annotated[Path | None, typer.Option(help="PEM private key of --cert-file.")] = None,
    token: Annotated[
        str | None, typer.Option(envvar="NAVIG_TOKEN", help="Bearer token sent as `authorization` metadata.")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per image on stdout (JSON lines), nothing else.")
    ] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="Show reasoning, evidence and stages as they arrive.")
    ] = False,
    no_reasoning: Annotated[
        bool, typer.Option("--no-reasoning", help="Do not ask for the reasoning.")
    ] = False,
    no_evidence: Annotated[bool, typer.Option("--no-evidence", help="Do not ask for the evidence.")] = False,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Per VLM generation (server default).", min=1)
    ] = None,
    pipeline: PipelineOption = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Run the pipeline even if the server has the answer cached.")
    ] = False,
    no_reasoner: Annotated[bool, typer.Option("--no-reasoner", help="Skip the REASONER.")] = False,
    no_vlm_guesser: Annotated[bool, typer.Option("--no-vlm-guesser", help="Evidence guesser only.")] = False,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TOOL",
            help=f"Skip a SEARCHER tool ({', '.join(registry.builtin_names())}, a plugin); repeatable.",
        ),
    ] = None,
) -> None:
    """Locate IMAGES with a running Geolocator (`navig serve`).

    Exit codes, the worst over all images wins:

    0: every image located.

    1: the server could not place some image (answered_by "none").

    2: bad usage or an unreadable input; nothing was sent.

    3: server unavailable or deadline exceeded, after the retries.

    4: an image rejected (INVALID_ARGUMENT) or another RPC error.
    """
    out = Console()
    err = Console(stderr=True, soft_wrap=True)
    try:
        paths = expand_inputs(images)
        root_certificates = ca_file.read_bytes() if ca_file is not None else None
        if (cert_file is None) != (key_file is None):
            raise InputError("--cert-file and --key-file go together (mTLS)")
        for pem in (cert_file, key_file):
            if pem is not None and not pem.is_file():
                raise InputError(f"{pem}: no such file")
    except (InputError, OSError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(Exit.USAGE) from None
    switches = {"use_reasoner": no_reasoner, "use_vlm_guesser": no_vlm_guesser}
    disabled = {k for k, off in switches.items() if off}
    chosen = pipeline.value if pipeline is not None else None
    options = build_options(max_new_tokens, disabled, skip or [], no_reasoning, no_evidence, chosen, no_cache)
    view = {"reasoning": not no_reasoning, "evidence": not no_evidence}
    worst = Exit.OK
    try:
        client = GeolocatorClient(
            address,
            timeout,
            retries=retries,
            tls=tls,
            root_certificates=root_certificates,
            token=token,
            cert_file=cert_file,
            key_file=key_file,
        )
    except OSError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(Exit.USAGE) from None
    try:
        with client:
            for path in paths:
                code = _locate_one(client, path, options, stream, json_lines, view, out, err)
                worst = max(worst, code)
    except BrokenPipeError:  # `navig locate ... --json | head -1`: the reader is gone, so stop quietly
        with contextlib.suppress(OSError, ValueError):  # no flush error at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(int(worst))


def _locate_one(
    client: GeolocatorClient,
    path: Path,
    options: pb.LocateOptions,
    stream: bool,
    json_lines: bool,
    view: dict[str, bool],
    out: Console,
    err: Console,
) -> Exit:
    """One image: send, show, and the exit code it deserves; errors go to stderr, never a traceback."""
    try:
        image = path.read_bytes()
    except OSError as exc:
        err.print(f"[red]error:[/red] {escape(f'{path}: {exc.strerror or exc}')}", highlight=False)
        return Exit.USAGE
    try:
        if stream:
            result = _stream(client, path, image, options, json_lines, view, out)
        else:
            result = client.locate(image, options)
    except LocateError as exc:
        err.print(f"[red]error:[/red] {escape(f'{path}: {exc.code.name}: {exc.details}')}", highlight=False)
        return exit_code(exc)
    except Exception as exc:  # a bug must still not print a traceback
        err.print(
            f"[red]error:[/red] {escape(f'{path}: unexpected {type(exc).__name__}: {exc}')}", highlight=False
        )
        return Exit.RPC_ERROR
    if json_lines:
        sys.stdout.write(json.dumps({"image": str(path), **result.to_dict()}, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        shown = {k: v and not stream for k, v in view.items()}  # a stream has shown them already
        out.print(result_panel(path, result, **shown))
    return Exit.OK if result.location is not None else Exit.NOT_LOCATED


def _stream(
    client: GeolocatorClient,
    path: Path,
    image: bytes,
    options: pb.LocateOptions,
    json_lines: bool,
    view: dict[str, bool],
    out: Console,
) -> LocateResult:
    """Consume the event stream, printing as it goes unless JSON; the typed result at the end."""
    started = time.perf_counter()
    first_event_ms: float | None = None
    printer = None if json_lines else StreamPrinter(out, **view)
    if printer is not None:
        out.rule(f"[bold]{escape(str(path))}[/bold]")
    for event in client.locate_stream(image, options):
        if first_event_ms is None:
            first_event_ms = (time.perf_counter() - started) * 1e3
        if event.WhichOneof("event") == "result":
            result = LocateResult.from_proto(event.result)
            result.extra["latency_ms"] = (time.perf_counter() - started) * 1e3
            result.extra["first_event_ms"] = first_event_ms
            if printer is not None:
                printer.end_line()
            return result
        if printer is not None:
            printer.event(event)
    raise LocateError(grpc.StatusCode.INTERNAL, "the stream ended without a result")


REASONING_CHARS = 600
BAR_WIDTH = 32


def result_panel(path: Path, result: LocateResult, reasoning: bool = True, evidence: bool = True) -> Panel:
    """The answer first, then why: reasons, degradations, reasoning, evidence, stage timings, latency."""
    parts: list[Any] = []
    loc = result.location
    if loc is not None:
        parts.append(
            f"[bold green]{escape(loc.city or '?')}, {escape(loc.country)}[/bold green] "
            f"({loc.country_code})  "
            f"{loc.latitude:.4f}, {loc.longitude:.4f}  confidence {loc.confidence:.2f}"
        )
    else:
        parts.append("[bold red]no location[/bold red]: no component could place this photo")
    reasons = "; ".join(result.reasons)
    parts.append(
        f"answered by [bold]{result.answered_by}[/bold]"
        + (f" ({result.pipeline} pipeline)" if result.pipeline else "")
        + (" [cyan]from the result cache[/cyan]" if result.cached else "")
        + (f": {escape(reasons)}" if reasons else "")
    )
    parts.extend(
        f"[yellow]degraded: {escape(d.component)}: {escape(d.reason)}[/yellow]" for d in result.degraded
    )
    if reasoning and result.reasoning:
        parts.append(Text("reasoning: " + truncate(result.reasoning, REASONING_CHARS), style="italic"))
    if evidence and result.evidence:
        parts.append(evidence_table(result))
    if result.timings:
        parts.append(timings_table(result))
    latency = result.extra.get("latency_ms")
    first = result.extra.get("first_event_ms")
    parts.append(
        "[dim]"
        + (f"latency {latency:.0f} ms, " if latency is not None else "")
        + (f"first event {first:.0f} ms, " if first is not None else "")
        + f"server {result.total_ms:.0f} ms, request {escape(result.request_id)}[/dim]"
    )
    border = "green" if loc is not None else "red"
    return Panel(
        Group(*parts), title=f"[bold]{escape(str(path))}[/bold]", title_align="left", border_style=border
    )


def truncate(text: str, limit: int) -> str:
    """Whitespace collapsed; long text cut at a word with a note saying how much is hidden."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit].rsplit(" ", 1)[0]
    return f"{cut} ... (+{len(flat) - len(cut)} chars; --json has all of it)"


def evidence_table(result: LocateResult) -> Table:
    table = Table("tool", "query", "result", "source", "score", title="evidence", title_justify="left")
    for e in result.evidence:
        table.add_row(e.tool, truncate(e.query, 40), truncate(e.result, 60), e.source, f"{e.score:.2f}")
    return table


def timings_table(result: LocateResult) -> Table:
    """One row per stage with a bar placed on the request's timeline, so overlaps are visible."""
    total = max((t.start_ms + t.duration_ms for t in result.timings), default=0.0) or 1.0
    table = Table("stage", "start ms", "ms", "timeline", title="stage timings", title_justify="left")
    for t in sorted(result.timings, key=lambda t: t.start_ms):
        offset = min(BAR_WIDTH - 1, int(t.start_ms / total * BAR_WIDTH))
        width = max(1, min(BAR_WIDTH - offset, round(t.duration_ms / total * BAR_WIDTH)))
        bar = Text(" " * offset) + Text("\u2588" * width, style="cyan")
        table.add_row(t.stage, f"{t.start_ms:.0f}", f"{t.duration_ms:.0f}", bar)
    return table


class StreamPrinter:
    """Prints events as they arrive; reasoning text flows inline, other events break the line."""

    def __init__(self, out: Console, reasoning: bool = True, evidence: bool = True) -> None:
        self.out = out
        self.reasoning = reasoning
        self.evidence = evidence
        self.mid_line = False

    def event(self, event: pb.LocateEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "reasoning" and self.reasoning:
            self.out.print(Text(event.reasoning.text, style="italic"), end="", soft_wrap=True)
            self.mid_line = True
        elif kind == "evidence" and self.evidence:
            e = event.evidence
            self.end_line()
            self.out.print(
                f"  [bold]{escape(e.tool)}[/bold] {escape(truncate(e.query, 40))}"
                f" -> {escape(truncate(e.result, 60))}"
                f"  [dim]{escape(e.source)} {e.score:.2f}[/dim]",
                highlight=False,
            )
        elif kind == "stage":
            self.end_line()
            s = event.stage
            self.out.print(
                f"  [dim]stage {escape(s.stage)}: {s.duration_ms:.0f} ms (from {s.start_ms:.0f} ms)[/dim]"
            )

    def end_line(self) -> None:
        if self.mid_line:
            self.out.print()
            self.mid_line = False
