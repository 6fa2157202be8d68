"""Session fixtures: one exported model repository and one real Triton server for the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.progress import Progress

from navig.export.ocr import OcrSources
from navig.export.report import write_report
from navig.export.repository import REPORT_FILE, write_ocr_models
from navig.export.samples import SAMPLES_DIR, Sample, load_samples
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    return load_samples(SAMPLES_DIR)


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("model_repository")
    with Progress(disable=True) as progress:
        reports = write_ocr_models(repository, OcrSources.from_rapidocr_wheel(), progress)
    write_report(repository / REPORT_FILE, reports)
    return repository


@pytest.fixture(scope="session")
def triton(model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = EmbeddedTriton(TritonConfig(model_repository, ports=TritonPorts.free(), log_file=log))
    server.start()
    yield server
    server.stop()
