"""`navig gpu-check record` (where the cpu profile runs) and `navig gpu-check run` (on the GPU host).

`run` needs only this package and the two Triton servers (`pip install navig-serve`): the cpu
profile's answers come from the reference file `record` wrote.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tritonclient.utils import InferenceServerException

from navig.client.gpu_check.calls import Server
from navig.client.gpu_check.checks import Row, record, run_checks
from navig.client.gpu_check.probes import Reference
from navig.model_repository import contract

gpu_check_app = typer.Typer(
    help="Check a served repository against the cpu profile: every model, one probe each."
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)
ReferenceFile = Annotated[Path, typer.Option("--reference", help="What `navig gpu-check record` wrote.")]


@gpu_check_app.command("record")
def record_command(
    out: ReferenceFile = Path("build/gpu-check-reference.npz"),
    model_repository: Annotated[
        Path | None, typer.Option(help="A cpu-profile repository, served here by the embedded Triton.")
    ] = Path("build/model_repository"),
    triton_url: Annotated[str | None, typer.Option(help="A running cpu-profile Triton instead.")] = None,
) -> None:
    """Record the cpu profile's answers to the probes (needs the cpu extra unless --triton-url)."""
    with ExitStack() as stack:
        if triton_url is None:
            from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts

            assert model_repository is not None
            with console.status(f"starting the embedded Triton on {model_repository}..."):
                triton = stack.enter_context(
                    EmbeddedTriton(TritonConfig(model_repository, ports=TritonPorts.free()))
                )
            triton_url = triton.grpc_url
        server = Server(triton_url)
        stack.callback(server.close)
        try:
            with console.status("sending the probes..."):
                reference = record(server)
        except InferenceServerException as exc:
            errors.print(f"[red]error:[/red] {escape(str(exc.message()))} (Triton at {triton_url})")
            raise typer.Exit(1) from None
    reference.save(out)
    console.print(f"recorded the cpu profile's answers into {out}")


@gpu_check_app.command("run")
def run_command(
    encoders_url: Annotated[str, typer.Option(help="gRPC URL of the encoders' Triton (`-py3` image).")],
    vlms_url: Annotated[str, typer.Option(help="gRPC URL of the VLMs' Triton (`-trtllm-python-py3` image).")],
    reference: ReferenceFile = Path("build/gpu-check-reference.npz"),
    expect_streaming: Annotated[
        bool, typer.Option(help="The VLMs must be decoupled and stream (the gpu profile's configs).")
    ] = True,
    cancel_after: Annotated[
        float, typer.Option(help="Deadline of the generation that must be cut short, seconds.", min=0.01)
    ] = 1.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows as JSON here.")] = None,
) -> None:
    """One request to every model (an image, a JSON schema, a streamed and a cancelled generation),
    compared with the cpu profile; exits 1 when any check fails."""
    try:
        expected = Reference.load(reference)
    except ValueError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    servers = {url: Server(url) for url in dict.fromkeys([encoders_url, vlms_url])}
    by_model = {m: servers[vlms_url if m in contract.VLM_MODELS else encoders_url] for m in contract.MODELS}
    try:
        rows = []
        with console.status("checking...") as status:
            for row in run_checks(by_model, expected, expect_streaming, cancel_after):
                status.update(f"checked {row.model}: {row.check}")
                rows.append(row)
    finally:
        for server in servers.values():
            server.close()
    console.print(_table(rows, expected))
    if json_out is not None:
        json_out.write_text(json.dumps([dataclasses.asdict(row) for row in rows], indent=1) + "\n")
    failed = [row for row in rows if not row.ok]
    if failed:
        errors.print(f"[red]{len(failed)} of {len(rows)} checks failed[/red]")
        raise typer.Exit(1)
    console.print(f"[green]all {len(rows)} checks passed[/green]")


def _table(rows: list[Row], reference: Reference) -> Table:
    table = Table("model", "check", "measured", "expected", "", title=f"gpu-check against {reference.source}")
    for row in rows:
        mark = "[green]ok[/green]" if row.ok else "[red]FAIL[/red]"
        table.add_row(row.model, row.check, escape(row.measured), escape(row.expected), mark)
    return table
