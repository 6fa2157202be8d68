"""The SEARCHER against a fake `Models` and fake tool backends: fast, no Triton.

The accepted path (every tool, evidence, findings, stages, metrics) and every degradation branch:
a tool that fails degrades only itself and the tools that read it; Triton gone or the deadline
passed ends the search; switched-off tools and their dependants do not run.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import pytest

from navig.model_repository import contract
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded, PipelineError, Unavailable
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.options import RunOptions
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.describer import DescribeCrops
from navig.orchestrator.searcher.guidebook import ConsultGuidebook
from navig.orchestrator.searcher.language import LanguageOfText
from navig.orchestrator.searcher.map import SearchMap
from navig.orchestrator.searcher.ocr import ReadSigns
from navig.orchestrator.searcher.search import Findings, Searcher
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.settings import Settings, load_settings
from navig.orchestrator.timeline import Timeline
from navig.orchestrator.tools.base import GuideHit, Place, ToolUnavailable

PHOTO = np.full((400, 600, 3), 128, np.uint8)
SIGN = (0.1, 0.1, 0.5, 0.3)  # fractions: 240 x 80 px
HOUSE = (0.5, 0.5, 0.9, 0.9)
TINY = (0.0, 0.0, 0.01, 0.01)  # 6 x 4 px: below min_crop_side
KOELN = Place("Köln", "DE", 50.94, 6.96, 0.9, "Köln", source="geonames:2886242")
CLUE = GuideHit("de-plates", "DE", "white number plates with a blue EU band", 0.6, "test")
ALL_TOOLS = frozenset({"ocr", "language", "map", "guidebook", "describer"})


class FakeModels:
    """Triton's answers for one photo; `fail[model]` is raised instead. Records every call."""

    def __init__(
        self, fail: Mapping[str, Exception] | None = None, boxes=(SIGN, HOUSE, TINY), lines=("Köln  3 km",)
    ) -> None:
        self.fail = dict(fail or {})
        self.boxes = boxes
        self.lines = lines
        self.calls: list[str] = []

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline) -> dict:
        self.calls.append(model)
        if model in self.fail:
            raise self.fail[model]
        if model == contract.DETECTOR:
            labels = [0, 2, 1][: len(self.boxes)]
            return {
                contract.DETECTOR_BOXES: np.array([self.boxes], np.float32),
                contract.DETECTOR_SCORES: np.array([[0.9, 0.8, 0.7][: len(self.boxes)]], np.float32),
                contract.DETECTOR_LABELS: np.array([labels], np.int64),
            }
        if model == contract.OCR:  # the photo and the sign crop read the same line: one line kept
            texts = np.array([line.encode() for line in self.lines], object)
            return {contract.OCR_TEXTS: texts, contract.OCR_SCORES: np.full(len(texts), 0.95, np.float32)}
        if model == contract.CLIP_IMAGE:
            batch = inputs[contract.CLIP_IMAGE_IMAGES]
            assert batch.shape[1:] == (224, 224, 3)
            return {contract.CLIP_EMBEDDINGS: np.ones((len(batch), 4), np.float32) / 2}
        raise AssertionError(f"unexpected model {model}")

    async def generate(
        self, model: str, prompt: str, deadline: Deadline, image=None, max_tokens=None, json_schema=None
    ) -> AsyncIterator[str]:
        self.calls.append(model)
        assert model == contract.VLM and max_tokens == 16 and json_schema is None
        if model in self.fail:
            raise self.fail[model]
        yield " German "
        yield "style. "


class FakeMap:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.asked: list[list[str]] = []

    async def search(self, lines: Sequence[str], limit: int = 5) -> list[Place]:
        self.asked.append(list(lines))
        if self.fail:
            raise self.fail
        return [KOELN]

    async def aclose(self) -> None:
        pass


class FakeGuidebook:
    def search(self, embeddings: np.ndarray, k: int, threshold: float) -> list[list[GuideHit]]:
        return [[CLUE]] + [[] for _ in embeddings[1:]]


def tools(settings: Settings, map_backend: FakeMap) -> list[SearchTool]:
    """The built-in tools in registry order, with fake backends instead of the gazetteer, lingua and FAISS."""
    config = ToolConfig()
    language = LanguageOfText.__new__(LanguageOfText)
    SearchTool.__init__(language, settings, config)
    language.prior = lambda lines: ("German", {"DE": 0.7, "AT": 0.2})
    search_map = SearchMap.__new__(SearchMap)
    SearchTool.__init__(search_map, settings, config)
    search_map.backend = map_backend
    guidebook = ConsultGuidebook.__new__(ConsultGuidebook)
    SearchTool.__init__(guidebook, settings, config)
    guidebook.index = FakeGuidebook()
    return [ReadSigns(settings, config), language, search_map, guidebook, DescribeCrops(settings, config)]


def search(
    models: FakeModels, on: frozenset[str] = ALL_TOOLS, map_backend: FakeMap | None = None
) -> tuple[Findings, list[Evidence], list[str], Metrics]:
    settings = load_settings(describe_houses=1, describe_signs=1)
    metrics = Metrics()
    searcher = Searcher(settings, models, metrics, tools(settings, map_backend or FakeMap()))
    options = RunOptions(use_reasoner=False, use_vlm_guesser=False, tools=on, max_new_tokens=16)
    emitted: list = []
    timeline = Timeline(emitted.append, metrics)
    found = asyncio.run(searcher.run(PHOTO, options, Deadline.after(10), timeline, emitted.append))
    evidence = [e for e in emitted if isinstance(e, Evidence)]
    return found, evidence, [t.stage for t in timeline.stages], metrics


def outcomes(metrics: Metrics) -> dict[tuple[str, str], float]:
    samples = metrics.tool_results.collect()[0].samples
    return {(s.labels["tool"], s.labels["outcome"]): s.value for s in samples if s.name.endswith("_total")}


def test_every_tool_adds_its_evidence_and_findings():
    models = FakeModels()
    found, evidence, stages, metrics = search(models)
    assert found.lines == ["Köln 3 km"] and found.places == [KOELN] and found.guide_hits == [CLUE]
    assert (found.language, found.country_prior) == ("German", {"DE": 0.7, "AT": 0.2})
    # streamed as each tool finds it; answered in a fixed order: the detector's, then by evidence rank
    ranked = ["detector", "map", "ocr", "language", "guidebook", "describer"]
    assert found.evidence == sorted(evidence, key=lambda e: ranked.index(e.tool)) and not found.degraded
    by_tool: dict[str, list[Evidence]] = {}
    for e in evidence:
        by_tool.setdefault(e.tool, []).append(e)
    assert [e.query for e in by_tool["detector"]] == ["road sign", "house"]  # the 6 x 4 px box is no crop
    assert by_tool["detector"][0].result == "road sign at [60, 40, 300, 120]"
    assert [e.result for e in by_tool["ocr"]] == ["Köln 3 km"]
    assert [e.country_code for e in by_tool["language"]] == ["DE", "AT"]
    assert by_tool["map"][0].latitude == KOELN.latitude and by_tool["map"][0].source == KOELN.source
    assert [e.query for e in by_tool["guidebook"]] == ["photo"]
    assert [e.result for e in by_tool["describer"]] == ["German style.", "German style."]
    assert models.calls.count(contract.OCR) == 2  # the photo and the one sign crop, at once
    assert models.calls.count(contract.CLIP_IMAGE) == 1  # the photo and both crops in one batch
    assert set(stages) == {"detector", *ALL_TOOLS}
    assert outcomes(metrics) == {(tool, "hit"): 1.0 for tool in ALL_TOOLS}


@pytest.mark.parametrize(
    ("fail", "degraded", "skipped"),
    [
        ({contract.OCR: PipelineError("ocr exploded")}, "ocr", {"ocr", "language", "map"}),
        ({contract.CLIP_IMAGE: PipelineError("clip exploded")}, "guidebook", {"guidebook"}),
        ({contract.VLM: PipelineError("vlm exploded")}, "describer", {"describer"}),
    ],
)
def test_a_failing_model_degrades_its_tool_and_the_tools_that_read_it(fail, degraded, skipped):
    found, evidence, _, metrics = search(FakeModels(fail))
    assert [(d.component, d.reason) for d in found.degraded] == [(degraded, str(next(iter(fail.values()))))]
    assert {e.tool for e in evidence} == {"detector", *ALL_TOOLS} - skipped
    assert outcomes(metrics)[(degraded, "error")] == 1.0


def test_a_failing_map_backend_degrades_only_the_map():
    found, evidence, _, metrics = search(FakeModels(), map_backend=FakeMap(ToolUnavailable("rate limited")))
    assert [(d.component, d.reason) for d in found.degraded] == [("map", "rate limited")]
    assert {e.tool for e in evidence} == {"detector", *ALL_TOOLS} - {"map"}
    assert outcomes(metrics)[("map", "error")] == 1.0


@pytest.mark.parametrize("error", [Unavailable("Triton gone"), DeadlineExceeded("deadline exceeded")])
@pytest.mark.parametrize("model", [contract.DETECTOR, contract.OCR, contract.CLIP_IMAGE, contract.VLM])
def test_triton_gone_or_the_deadline_ends_the_search(model: str, error: PipelineError):
    with pytest.raises(type(error), match=str(error)):
        search(FakeModels({model: error}))


def test_switched_off_tools_and_their_dependants_do_not_run():
    models, backend = FakeModels(), FakeMap()
    found, evidence, stages, metrics = search(models, frozenset({"map", "language", "describer"}), backend)
    assert {e.tool for e in evidence} == {"detector", "describer"}  # map and language read the OCR's lines
    assert not backend.asked and contract.OCR not in models.calls and contract.CLIP_IMAGE not in models.calls
    assert set(stages) == {"detector", "describer"} and not found.degraded
    assert set(outcomes(metrics)) == {("describer", "hit")}


def test_nothing_read_is_a_miss_and_nothing_is_looked_up():
    models, backend = FakeModels(boxes=(), lines=()), FakeMap()
    found, evidence, _, metrics = search(models, frozenset({"ocr", "language", "map"}), backend)
    assert not found.lines and not evidence and not backend.asked
    assert models.calls == [contract.DETECTOR, contract.OCR]  # no crops: the photo is read, nothing else
    assert outcomes(metrics) == {("ocr", "miss"): 1.0, ("language", "miss"): 1.0, ("map", "miss"): 1.0}


def test_evidence_order_follows_the_tools_ranks():
    settings = load_settings()
    searcher = Searcher(settings, FakeModels(), Metrics(), tools(settings, FakeMap()))
    assert searcher.evidence_order() == ["map", "ocr", "language", "guidebook", "describer"]


def test_models_see_the_photo_downscaled_and_crops_come_from_the_full_photo():
    """A 12 MP photo: the detector, OCR and CLIP get it at DETECTOR_MAX_SIDE (gRPC's message limit, the
    detector's TensorRT profile), the describer's VLM gets crops at vlm_image_max_side (image tokens)."""
    seen: dict[str, list[tuple[int, ...]]] = {}
    models = FakeModels()
    infer, generate = models.infer, models.generate

    async def spy_infer(model: str, inputs, deadline):
        seen.setdefault(model, []).append(next(iter(inputs.values())).shape)
        return await infer(model, inputs, deadline)

    def spy_generate(model: str, prompt: str, deadline, image=None, max_tokens=None, json_schema=None):
        seen.setdefault(model, []).append(image.shape)
        return generate(model, prompt, deadline, image, max_tokens, json_schema)

    models.infer, models.generate = spy_infer, spy_generate  # type: ignore[method-assign]
    settings = load_settings(describe_houses=1, describe_signs=1)
    searcher = Searcher(settings, models, Metrics(), tools(settings, FakeMap()))
    big = np.zeros((3000, 4000, 3), np.uint8)
    options = RunOptions(use_reasoner=False, use_vlm_guesser=False, tools=ALL_TOOLS, max_new_tokens=16)
    timeline = Timeline(lambda _: None, Metrics())
    found = asyncio.run(searcher.run(big, options, Deadline.after(10), timeline, lambda _: None))
    view = (960, contract.DETECTOR_MAX_SIDE, 3)
    assert seen[contract.DETECTOR] == [(1, *view)] and seen[contract.OCR][0] == view
    assert seen[contract.OCR][1] == (600, 1600, 3)  # the sign crop, cut from the full photo
    assert seen[contract.CLIP_IMAGE] == [(3, 224, 224, 3)]
    assert sorted(seen[contract.VLM]) == [(240, 640, 3), (480, 640, 3)]  # sign 1600 x 600, house 1600 x 1200
    assert found.evidence[0].result == "road sign at [400, 300, 2000, 900]"
