"""`navig triton ...`: run the embedded Triton server on its own."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from navig.orchestrator.embedded_triton import (
    EmbeddedTriton,
    TritonConfig,
    TritonLaunchError,
    TritonPorts,
)

triton_app = typer.Typer(help="The embedded Triton Inference Server.", no_args_is_help=True)
console = Console(stderr=True, soft_wrap=True)


@triton_app.command("serve")
def serve(
    model_repository: Annotated[Path, typer.Option(help="Model repository to serve.")] = Path(
        "build/model_repository"
    ),
    host: Annotated[str, typer.Option(help="Address to bind all endpoints to.")] = "127.0.0.1",
    grpc_port: int = TritonPorts.grpc,
    http_port: int = TritonPorts.http,
    metrics_port: int = TritonPorts.metrics,
    log_file: Annotated[Path | None, typer.Option(help="Write Triton's log here.")] = None,
    verbose: Annotated[bool, typer.Option(help="Stream Triton's log to stderr.")] = False,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 120.0,
) -> None:
    """Start Triton on MODEL_REPOSITORY and serve until SIGINT/SIGTERM."""
    config = TritonConfig(
        model_repository=model_repository,
        host=host,
        ports=TritonPorts(grpc=grpc_port, http=http_port, metrics=metrics_port),
        log_file=log_file,
        ready_timeout_s=ready_timeout,
    )
    server = EmbeddedTriton(
        config, on_log_line=(lambda line: print(line, file=sys.stderr)) if verbose else None
    )
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        with console.status("starting Triton..."):
            server.start()
        console.print(
            f"Triton ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}"
        )
        while server.is_running():
            time.sleep(0.5)
        console.print("[red]error:[/red] Triton exited unexpectedly; last log lines:\n" + server.log_tail(15))
        raise typer.Exit(1)
    except TritonLaunchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("stopping Triton...")
    finally:
        server.stop()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
