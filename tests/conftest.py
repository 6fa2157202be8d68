"""Session fixtures: tiny demo checkpoints, one full export of them, one real Triton server."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from rich.progress import Progress

from navig.export.build import BuildResult, build, reuse
from navig.export.demo_checkpoints import SPEC_FILE, build_demo_checkpoints, reused_demo_checkpoints
from navig.export.outputs import reused_or_built
from navig.export.report import ArtifactReport
from navig.export.samples import SAMPLES_DIR, Sample, load_samples
from navig.export.spec import load_spec
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings, load_settings
from navig.orchestrator.tools.gazetteer.index import GazetteerIndex
from navig.orchestrator.tools.guidebook.build import ensure_default_guidebook


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    return load_samples(SAMPLES_DIR)


# The folders `make repository` builds (`navig export demo-checkpoints --preset tiny`, `navig export
# build`), relative to the checkout, not the cwd: `make demo` after `make test` reuses the session's.
ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = ROOT / "build" / "checkpoints"
REPOSITORY = ROOT / "build" / "model_repository"


@pytest.fixture(scope="session")
def demo_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny demo checkpoints in build/checkpoints, reused under the rule of `make repository`
    (`navig.export.outputs.reused_or_built`); built there when absent or stale, as on a fresh clone."""
    with reused_or_built(
        CHECKPOINTS,
        partial(reused_demo_checkpoints, CHECKPOINTS, "tiny"),
        partial(build_demo_checkpoints, CHECKPOINTS, "tiny"),
        wait=False,
    ) as shared:
        if shared is not None:
            yield CHECKPOINTS
            return
    folder = tmp_path_factory.mktemp("checkpoints")
    build_demo_checkpoints(folder, "tiny")
    yield folder


@pytest.fixture(scope="session")
def _export(
    demo_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, list[ArtifactReport]]]:
    """`navig export build` of the tiny checkpoints + PP-OCR for the cpu profile, in build/model_repository,
    where `make demo` finds it.

    Sharing it with `make repository` is safe because an export is reused only when the fingerprint
    recorded in its report matches: the spec, the checkpoints' bytes, the navig version with the sha256
    of the export and model_repository sources, the library versions (`navig.export.fingerprint`), and
    every artifact the report lists is there with its recorded size (`navig.export.build.reuse`); the
    checkpoints likewise (preset, sources, libraries, sha256 of every file). So a reused export and its
    recorded reports are what this code would write now, and any edit to the exporter exports again. On a
    fresh clone (CI) there is no build/: the session runs the real export, and the export tests check its
    live figures. The session holds both folders with a shared lock: no other process (another session,
    `make repository`) rewrites them meanwhile; if one holds them while they are stale, this session
    exports its own copy into a tmp folder rather than wait. Tests only read them (a test that alters a
    checkpoint or an artifact works on a copy), so they stay as `make demo` expects."""
    spec = load_spec(demo_checkpoints / SPEC_FILE)

    def export(output: Path) -> BuildResult:
        with Progress(disable=True) as progress:
            return build(spec.model_copy(update={"output": output}), progress)

    reused = partial(reuse, spec.model_copy(update={"output": REPOSITORY}))
    with reused_or_built(REPOSITORY, reused, partial(export, REPOSITORY), wait=False) as shared:
        if shared is not None:
            yield REPOSITORY, shared[0].reports
            return
    result = export(tmp_path_factory.mktemp("model_repository"))
    yield result.repository, result.reports


@pytest.fixture(scope="session")
def model_repository(_export: tuple[Path, list[ArtifactReport]]) -> Path:
    return _export[0]


@pytest.fixture(scope="session")
def export_reports(_export: tuple[Path, list[ArtifactReport]]) -> list[ArtifactReport]:
    return _export[1]


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = EmbeddedTriton(TritonConfig(model_repository, ports=TritonPorts.free(), log_file=log))
    server.start()
    yield server
    server.stop()


CANCELLED = re.compile(r"(\w+): request cancelled, generation stopped after (\d+) tokens")


@pytest.fixture(scope="session")
def cancelled_generations() -> Callable[[EmbeddedTriton], list[tuple[str, int]]]:
    """(model, tokens) of every generation a model stopped for a cancelled request, read from the server's
    whole log file (the models log each one), oldest first."""

    def read(server: EmbeddedTriton) -> list[tuple[str, int]]:
        log = server.config.log_file
        assert log is not None, "give the server a log_file"
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        return [(model, int(tokens)) for model, tokens in CANCELLED.findall(text)]

    return read


@pytest.fixture(scope="session")
def gazetteer_index(tmp_path_factory: pytest.TempPathFactory) -> GazetteerIndex:
    """The real offline gazetteer, built once from the GeoNames data in the installed wheels."""
    return GazetteerIndex.open(tmp_path_factory.mktemp("gazetteer") / "index")


@pytest.fixture(scope="session")
def default_guidebook(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The open default guidebook embedded with the session's (tiny, random) CLIP."""
    return ensure_default_guidebook(model_repository, tmp_path_factory.mktemp("guidebook"))


@pytest.fixture(scope="session")
def geolocator_settings(
    triton: EmbeddedTriton, gazetteer_index: GazetteerIndex, default_guidebook: Path
) -> Settings:
    """The service's defaults, on free ports, against the session's Triton, with every tool."""
    return load_settings(
        triton_url=triton.grpc_url,
        port=0,
        metrics_port=0,
        log_json=False,
        gazetteer_dir=gazetteer_index.path,
        guidebook_dir=default_guidebook,
    )


@pytest.fixture(scope="session")
def geolocator(geolocator_settings: Settings) -> Iterator[OrchestratorThread]:
    with OrchestratorThread(geolocator_settings) as server:
        yield server
