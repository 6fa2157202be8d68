"""`navig serve` (Triton + the Geolocator service) and `navig triton serve` (Triton on its own)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from navig.orchestrator import logs
from navig.orchestrator.embedded_triton import (
    EmbeddedTriton,
    TritonConfig,
    TritonLaunchError,
    TritonPorts,
)
from navig.orchestrator.security import check_exposure, metrics_bind_host
from navig.orchestrator.settings import Pipeline, Settings, SettingsError, load_settings
from navig.orchestrator.tools.gazetteer.index import GazetteerError
from navig.orchestrator.tools.guidebook.entries import GuidebookError
from navig.orchestrator.triton_supervisor import RestartPolicy, TritonGaveUp, TritonSupervisor

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
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    except KeyboardInterrupt:
        console.print("stopping Triton...")
    finally:
        server.stop()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_geolocator(
    config: Annotated[
        Path | None, typer.Option(help="Settings file (YAML); NAVIG_* variables override it.")
    ] = None,
    triton_url: Annotated[
        str | None, typer.Option(help="Use this running Triton (gRPC) instead of starting the embedded one.")
    ] = None,
    model_repository: Annotated[Path, typer.Option(help="Served by the embedded Triton.")] = Path(
        "build/model_repository"
    ),
    host: Annotated[str | None, typer.Option(help="Address of the gRPC and metrics endpoints.")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port of the Geolocator service.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus /metrics port.")] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate chain: serve TLS (with --tls-key).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[
        Path | None, typer.Option(help="PEM CA: require client certificates it signed (mTLS).")
    ] = None,
    auth_tokens_file: Annotated[
        Path | None, typer.Option(help="Bearer tokens, one a line; every call but health needs one.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a non-loopback --host without TLS or tokens.")
    ] = False,
    pipeline: Annotated[
        Pipeline | None, typer.Option(help="Requests' default pipeline (settings `pipeline`; fast).")
    ] = None,
) -> None:
    """Serve the Geolocator gRPC service (and the embedded Triton unless a Triton URL is given: --triton-url,
    triton_url in --config, or NAVIG_TRITON_URL) until Ctrl-C."""
    try:
        settings = load_settings(
            config,
            host=host,
            port=port,
            metrics_port=metrics_port,
            triton_url=triton_url,
            tls_cert_file=tls_cert,
            tls_key_file=tls_key,
            tls_client_ca_file=tls_client_ca,
            auth_tokens_file=auth_tokens_file,
            insecure=insecure or None,  # absent: the file's or NAVIG_INSECURE's value stands
            pipeline=pipeline.value if pipeline is not None else None,
        )
        check_exposure(settings)
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    triton = None
    external = "triton_url" in settings.model_fields_set  # from the flag, the file or NAVIG_TRITON_URL
    try:
        if not external:
            ports = TritonPorts.free()
            triton = EmbeddedTriton(
                TritonConfig(
                    model_repository,
                    host=settings.host,
                    ports=ports,
                    response_cache_mb=settings.triton_response_cache_mb,
                )
            )
            with console.status(f"starting the embedded Triton on {model_repository}..."):
                triton.start()
            settings = settings.model_copy(update={"triton_url": triton.grpc_url})
            console.print(f"Triton ready: gRPC {triton.grpc_url}  metrics {triton.metrics_url}")
        settings = prepare_tools(settings, None if external else model_repository, console)
        asyncio.run(_serve(settings, triton))
    except TritonGaveUp as exc:
        console.print(f"[red]error:[/red] {exc}\nexiting with code 1: a supervisor restarts navig serve")
        raise typer.Exit(1) from exc
    except SettingsError as exc:  # a tool's own settings (`tools:`) are read when the tools load
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    except (TritonLaunchError, OSError, GazetteerError, GuidebookError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    finally:
        if triton is not None:
            triton.stop()


def prepare_tools(settings: Settings, model_repository: Path | None, console: Console) -> Settings:
    """What the tools build once before serving, with progress shown (the gazetteer index, the default
    guidebook embedded with this repository's CLIP, a plugin's own)."""
    from navig.orchestrator.searcher.registry import registered

    for tool in registered():
        settings = tool.prepare(settings, model_repository, console)
    return settings


async def _serve(settings: Settings, triton: EmbeddedTriton | None) -> None:
    """Serves until SIGINT/SIGTERM; raises TritonGaveUp when the embedded Triton cannot be kept up."""
    from navig.orchestrator.server import Orchestrator  # the CLI's other verbs need none of it

    logs.configure(settings.log_level, settings.log_json)
    orchestrator = Orchestrator(settings)
    with console.status("loading tools..."):
        port = await orchestrator.start()
    metrics = (
        f"  metrics http://{metrics_bind_host(settings)}:{orchestrator.metrics_port}/metrics"
        if orchestrator.metrics_port
        else ""
    )
    console.print(f"Geolocator serving on {settings.host}:{port}{metrics}  (Ctrl-C stops)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    watchers = {asyncio.create_task(stop.wait())}
    if triton is not None:
        policy = RestartPolicy(
            settings.triton_max_restarts, settings.triton_restart_window_s, settings.triton_restart_backoff_s
        )
        watchers.add(asyncio.create_task(TritonSupervisor(triton, policy, orchestrator.metrics).run()))
    try:
        await asyncio.wait(watchers, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher in watchers:
            watcher.cancel()
        results = await asyncio.gather(*watchers, return_exceptions=True)
        console.print(f"draining in-flight requests (up to {settings.shutdown_grace_s:.0f} s)...")
        await orchestrator.stop()
    for result in results:  # the supervisor's failure, if it failed: never swallowed into exit 0
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result
