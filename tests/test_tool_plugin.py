"""A SEARCHER tool added from this file only, through `Locate` on the real stack, end to end.

What docs/adding-a-tool.md promises: a tool class and one `register` call; its settings, request
switch, CLI `--skip`, evidence, stage timing, metrics, degradation and health models follow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from typer.testing import CliRunner

from navig.client.cli import app
from navig.client.geolocator import GeolocatorClient
from navig.export.samples import SAMPLES_DIR, Sample
from navig.model_repository import contract
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher import registry
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.base import ToolUnavailable

FAST = {"max_new_tokens": 8, "use_reasoner": False, "use_describer": False, "use_vlm_guesser": False}


class BrightnessConfig(ToolConfig):
    broken: bool = False  # shows a degraded tool


class Brightness(SearchTool):
    """How bright the photo and its crops are (and a `clip_text` call, to show a tool calling Triton)."""

    name = "brightness"
    after = ("ocr",)  # reads the text the OCR found
    models = (contract.CLIP_TEXT,)  # no built-in calls it: health now waits for it
    Config = BrightnessConfig

    async def run(self, search: Search) -> None:
        if self.config.broken:  # type: ignore[attr-defined]
            raise ToolUnavailable("the light meter is broken")
        ids = np.zeros((1, 4), np.int64)
        inputs = {contract.CLIP_TEXT_INPUT_IDS: ids, contract.CLIP_TEXT_ATTENTION_MASK: np.ones_like(ids)}
        out = await search.models.infer(contract.CLIP_TEXT, inputs, search.deadline)
        assert out[contract.CLIP_EMBEDDINGS].shape[0] == 1
        for where, pixels in search.regions(contract.DETECTOR_PROMPTS):
            result = f"mean {pixels.mean():.0f}/255 beside {len(search.found.lines)} lines read"
            search.record(Evidence(self.name, where, result, "test", float(pixels.mean() / 255)))


@pytest.fixture(scope="module")
def brightness() -> Iterator[type[Brightness]]:
    registry.register(Brightness)
    yield Brightness
    registry.unregister(Brightness.name)


def serve(settings: Settings, broken: bool = False) -> OrchestratorThread:
    return OrchestratorThread(settings.model_copy(update={"tools": {"brightness": {"broken": broken}}}))


def locate(server: OrchestratorThread, sample: Sample, **options) -> pb.LocateResponse:
    with GeolocatorClient(server.address) as client:
        image = (SAMPLES_DIR / sample.file).read_bytes()
        return client.locate_proto(image, pb.LocateOptions(**FAST, **options))


def test_a_registered_tool_runs_end_to_end(brightness, geolocator_settings: Settings, samples: list[Sample]):
    with serve(geolocator_settings) as server:
        assert contract.CLIP_TEXT in server.orchestrator.health.models
        response = locate(server, samples[0])
        found = [e for e in response.evidence if e.tool == "brightness"]
        assert found and found[0].query == "photo" and "lines read" in found[0].result
        assert "brightness" in {t.stage for t in response.timings} and not response.degraded
        skipped = locate(server, samples[0], tools={"brightness": False})
        assert not any(e.tool == "brightness" for e in skipped.evidence)
        no_ocr = locate(server, samples[0], use_ocr=False)  # it runs after the OCR: skipped with it
        assert not any(e.tool in ("brightness", "ocr") for e in no_ocr.evidence)
        result = CliRunner().invoke(
            app, ["locate", str(SAMPLES_DIR / samples[0].file), "--address", server.address, "--json",
                  "--max-new-tokens", "8", "--no-reasoner", "--skip", "brightness", "--skip", "describer"],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert not any(e["tool"] == "brightness" for e in json.loads(result.stdout)["evidence"])
        metrics = server.orchestrator.metrics.tool_results.labels("brightness", "hit")._value.get()
        assert metrics == 1.0


def test_a_failing_tool_is_degraded_not_fatal(
    brightness, geolocator_settings: Settings, samples: list[Sample]
):
    with serve(geolocator_settings, broken=True) as server:
        response = locate(server, samples[0])
        assert [(d.component, d.reason) for d in response.degraded] == [
            ("brightness", "the light meter is broken")
        ]
        assert response.location.country_code and any(e.tool == "ocr" for e in response.evidence)
