"""The real Triton Inference Server from the `nvidia-pytriton` wheel, run as a child process.

Used by `navig triton serve`, by `navig serve` and by the tests. It prepares what the wheel
leaves undone (python backend stub, library path, the venv first on PATH so python models
import this environment's packages), binds to loopback by default, waits for readiness and
turns Triton's own failure messages into errors that name the model and the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version \d+: (.+)")
STATUS_ROW_FAILURE = re.compile(r"^\|\s*(\S+)\s*\|\s*\d+\s*\|\s*UNAVAILABLE: (.+?)\s*\|$")


class TritonLaunchError(RuntimeError):
    """Triton could not be started, or stopped being ready; the message says why."""


@dataclass(frozen=True)
class TritonPorts:
    """Triton's usual ports by default."""

    grpc: int = 8001
    http: int = 8000
    metrics: int = 8002

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> TritonPorts:
        """Three ports the OS reports unused right now (tests run several servers side by side)."""
        sockets = [socket.socket() for _ in range(3)]
        try:
            for s in sockets:
                s.bind((host, 0))
            return cls(*(s.getsockname()[1] for s in sockets))
        finally:
            for s in sockets:
                s.close()


@dataclass
class TritonConfig:
    model_repository: Path
    host: str = "127.0.0.1"
    ports: TritonPorts = field(default_factory=TritonPorts)
    log_file: Path | None = None
    log_verbose: int = 0
    ready_timeout_s: float = 120.0
    binary: Path | None = None  # default: the one in the nvidia-pytriton wheel
    extra_args: tuple[str, ...] = ()
    # Triton's response cache (`local`, this many MiB) for models whose config enables it; 0: off
    response_cache_mb: int = 0


@dataclass(frozen=True)
class TritonDistribution:
    """Where the wheel keeps the server, its python backend and the bundled libraries."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path

    @classmethod
    def find(cls, binary: Path | None = None) -> TritonDistribution:
        spec = importlib.util.find_spec("pytriton")
        if spec is None or spec.origin is None:
            raise TritonLaunchError(
                "the nvidia-pytriton package is not installed; install `navig-serve[cpu]` "
                "or pass --triton-url to use an external Triton server"
            )
        root = Path(spec.origin).parent / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        dist = cls(
            binary=binary or root / "bin" / "tritonserver",
            python_backend=root / "backends" / "python",
            stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
            libs=Path(spec.origin).parent.parent / "nvidia_pytriton.libs",
        )
        if not dist.binary.is_file() or not os.access(dist.binary, os.X_OK):
            raise TritonLaunchError(f"tritonserver binary not found or not executable: {dist.binary}")
        if not dist.stub.is_file():
            raise TritonLaunchError(f"no python backend stub for Python {version} at {dist.stub}")
        return dist

    def backend_directory(self, cache: Path) -> Path:
        """A backends/ folder holding the python backend with the stub for this interpreter."""
        target = cache / "backends" / "python"
        stub = target / "triton_python_backend_stub"
        if not stub.is_file() or stub.stat().st_size != self.stub.stat().st_size:
            staging = cache / f"backends.tmp{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(
                self.python_backend, staging / "python", ignore=shutil.ignore_patterns("__pycache__")
            )
            shutil.copy2(self.stub, staging / "python" / "triton_python_backend_stub")
            shutil.rmtree(cache / "backends", ignore_errors=True)
            staging.rename(cache / "backends")
        return cache / "backends"


def response_cache_args(binary: Path, megabytes: int) -> list[str]:
    """Triton's `local` response cache; its library sits beside bin/ (`caches/local`) in the wheel as in
    NVIDIA's images, where the default `--cache-directory` (/opt/tritonserver/caches) is that place."""
    if megabytes <= 0:
        return []
    caches = binary.resolve().parent.parent / "caches"
    return [f"--cache-directory={caches}", f"--cache-config=local,size={megabytes * 2**20}"]


class EmbeddedTriton:
    """Start with `start()` (or a `with` block); always `stop()`: it also reaps python stubs."""

    def __init__(self, config: TritonConfig, on_log_line: Callable[[str], None] | None = None):
        self.config = config
        self._on_log_line = on_log_line
        self._process: subprocess.Popen[bytes] | None = None
        self._log_tail: deque[str] = deque(maxlen=400)
        self._log_thread: threading.Thread | None = None
        self._log_handle: IO[str] | None = None
        self._starts = 0
        self._returncode: int | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.config.host}:{self.config.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ports.http}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ports.metrics}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        """Exit code of the current process once it has exited, else of the last one stopped."""
        return self._process.poll() if self._process else self._returncode

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def command(self, backend_directory: Path, binary: Path) -> list[str]:
        c, p = self.config, self.config.ports
        return [
            str(binary),
            f"--model-repository={c.model_repository.resolve()}",
            f"--backend-directory={backend_directory}",
            f"--grpc-address={c.host}",
            f"--grpc-port={p.grpc}",
            f"--http-address={c.host}",
            f"--http-port={p.http}",
            f"--metrics-address={c.host}",
            f"--metrics-port={p.metrics}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=true",
            "--strict-readiness=true",
            f"--log-verbose={c.log_verbose}",
            *response_cache_args(binary, c.response_cache_mb),
            *c.extra_args,
        ]

    def start(self) -> None:
        config = self.config
        if not (config.model_repository / "").is_dir():
            raise TritonLaunchError(f"model repository not found: {config.model_repository}")
        dist = TritonDistribution.find(config.binary)
        check_numpy()
        for name, port in (
            ("gRPC", config.ports.grpc),
            ("HTTP", config.ports.http),
            ("metrics", config.ports.metrics),
        ):
            if port_in_use(config.host, port):
                raise TritonLaunchError(f"{name} port {port} on {config.host} is already in use")
        backends = dist.backend_directory(cache_dir() / f"triton-{dist.binary.stat().st_size}")
        env = triton_environment(dist)
        self._process = subprocess.Popen(
            self.command(backends, dist.binary),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # own process group: stop() reaches the python stubs too
            preexec_fn=_die_with_parent,
        )
        self._starts += 1
        if config.log_file:  # a restart appends: the log of the crash is what someone will want to read
            config.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = config.log_file.open("w" if self._starts == 1 else "a", encoding="utf-8")
        self._log_thread = threading.Thread(target=self._pump_log, name="triton-log", daemon=True)
        self._log_thread.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "".join(list(self._log_tail)[-lines:])

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (Triton unloads models and ends its stubs), then SIGKILL the whole group."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        self._returncode = process.wait()
        if self._log_thread:
            self._log_thread.join(timeout=5)
        if self._log_handle:
            self._log_handle.close()
            self._log_handle = None
        self._process = None

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.config.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                if self._log_thread:
                    self._log_thread.join(timeout=5)
                raise TritonLaunchError(self._failure_message(self._process.returncode))
            if self.is_ready():
                return
            time.sleep(0.1)
        raise TritonLaunchError(
            f"Triton was not ready after {self.config.ready_timeout_s:.0f} s; last log lines:\n"
            + self.log_tail(15)
        )

    def _failure_message(self, returncode: int) -> str:
        log = "".join(self._log_tail)
        failures = dict(LOAD_FAILURE.findall(log))
        for line in log.splitlines():
            if row := STATUS_ROW_FAILURE.match(line.strip()):
                failures.setdefault(row.group(1), row.group(2))
        if failures:
            detail = "\n".join(f"  model '{name}': {reason}" for name, reason in failures.items())
            return f"Triton failed to load {len(failures)} model(s):\n{detail}"
        return f"Triton exited with code {returncode} before it was ready; last log lines:\n" + self.log_tail(
            15
        )

    def _pump_log(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", errors="replace")
            self._log_tail.append(line)
            if self._log_handle:
                self._log_handle.write(line)
                self._log_handle.flush()
            if self._on_log_line:
                self._on_log_line(line.rstrip("\n"))


def triton_environment(dist: TritonDistribution) -> dict[str, str]:
    env = dict(os.environ)
    # The stub runs the first `python` on PATH's environment: make it this one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # The stub links libpython3.x dynamically: it must load this interpreter's, or compiled stdlib
    # modules (e.g. _ssl from pyenv) fail against a distribution's older libpython.
    libs = [interpreter_libdir(), str(dist.libs), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    return env


def interpreter_libdir() -> str:
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        return str(libdir)
    return ""


def check_numpy() -> None:
    """With numpy 2 the python backend sends outputs with 0 bytes, silently (DESIGN.md)."""
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise TritonLaunchError(
            f"numpy {numpy.__version__} is installed; Triton 2.51's python backend needs numpy<2"
        )


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "navig"


def _die_with_parent() -> None:
    """Linux: Triton gets SIGTERM if the Python process that started it dies (no orphans)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
