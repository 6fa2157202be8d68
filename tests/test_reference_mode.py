"""The `reference` pipeline (NAVIG's calls): fast unit tests against a fake `Models`, then one request
through `Locate` on the real stack.

The fake photo paints every detection in its own colour, so the fake VLM, CLIP and guidebook know
which crop they were given. The same detections run through the fast pipeline too, where the rules
differ: each rule below is one the fast pipeline breaks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from navig.client.cli import app
from navig.client.geolocator import GeolocatorClient, LocateError
from navig.client.locate import build_options
from navig.export.samples import SAMPLES_DIR, Sample
from navig.model_repository import contract
from navig.orchestrator import navig_reference, prompts
from navig.orchestrator.answer import InvalidAnswer, lenient_json, parse_lenient
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import InvalidInput
from navig.orchestrator.guesser import decide, reference_prompt
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.options import RunOptions, run_options, server_defaults
from navig.orchestrator.pipeline import Pipeline
from navig.orchestrator.results import Component, Evidence
from navig.orchestrator.searcher import registry
from navig.orchestrator.searcher.describer import DescribeCrops
from navig.orchestrator.searcher.guidebook import ConsultGuidebook
from navig.orchestrator.searcher.language import LanguageOfText
from navig.orchestrator.searcher.map import SearchMap
from navig.orchestrator.searcher.ocr import ReadSigns
from navig.orchestrator.searcher.search import Findings, Searcher, fit_for_vlm
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.server import OrchestratorThread
from navig.orchestrator.settings import Settings, load_settings
from navig.orchestrator.timeline import Timeline
from navig.orchestrator.tools.base import GuideHit, Place

WIDTH, HEIGHT = 1200, 900
ROAD, BUILDING, HOUSE = (contract.DETECTOR_PROMPTS.index(n) for n in ("road sign", "building sign", "house"))
# name: (label, score, box in pixels), in the detector's query order (not score order: NAVIG keeps
# crops in query order); scores are float64 here so that "exactly 0.65" is exact
DETECTIONS = {
    "grass": (ROAD, 0.95, (300, 450, 523, 673)),  # 223 x 223: below 224 both ways -> no crop (fast: a crop)
    "road": (ROAD, 0.90, (0, 0, 300, 60)),  # 300 wide -> a crop
    "house4": (HOUSE, 0.76, (900, 100, 1150, 350)),  # the first house query, though the lowest score
    "house1": (HOUSE, 0.85, (0, 100, 300, 400)),
    "house2": (HOUSE, 0.80, (300, 100, 550, 350)),
    "house3": (HOUSE, 0.78, (600, 100, 850, 350)),  # read, but not commented (3 houses)
    "shop": (BUILDING, 0.70, (0, 450, 230, 470)),  # 230 x 20: thinner than the VLM's 28 px -> stretched
    "strip": (BUILDING, 0.67, (600, 450, 824, 460)),  # 224 x 10: exactly 224 -> a crop (fast: too thin)
    "at_threshold": (ROAD, 0.65, (800, 480, 1200, 880)),  # score == 0.65: not > 0.65 -> no crop
    "faint": (ROAD, 0.40, (850, 500, 1150, 880)),  # fast: a crop (0.35)
}
COLOUR = {name: 10 * (i + 1) for i, name in enumerate(DETECTIONS)}  # red channel of each region
NAME = {colour: name for name, colour in COLOUR.items()}
BOX_NAME = {box: name for name, (_, _, box) in DETECTIONS.items()}
LABEL = {name: contract.DETECTOR_PROMPTS[label] for name, (label, _, _) in DETECTIONS.items()}
REFERENCE_CROPS = [
    "road",
    "house4",
    "house1",
    "house2",
    "house3",
    "shop",
    "strip",
]  # PROMPT_ORDER, query order
READ = {  # what the fake VLM reads on each crop
    "road": "Köln 3 km",
    "house4": "None",
    "house1": "Bäckerei Müller (None)",  # contains NO_TEXT: not looked up, but kept for the prompt
    "house2": "Hauptstraße 5",
    "house3": "None",
    "shop": "Apotheke Bonn",
    "strip": "",
}
LOOKED_UP = ["Köln 3 km", "Hauptstraße 5", "Apotheke Bonn"]


def photo() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for name, (_, _, (x0, y0, x1, y1)) in reversed(DETECTIONS.items()):  # the first named wins overlaps
        image[y0:y1, x0:x1, 0] = COLOUR[name]
    return image


def crop_name(image: np.ndarray) -> str:
    """The region at the crop's centre; its colour within 3 (reference crops are JPEG round-tripped)."""
    return colour_name(int(image[image.shape[0] // 2, image.shape[1] // 2, 0]))


def colour_name(red: int) -> str:
    return next((name for colour, name in NAME.items() if abs(red - colour) <= 3), "elsewhere")


class FakeModels:
    """The detector answers `detections` (`detector`: best first; `detector_reference`: every one, in
    (prompt, query) order); the VLM reads READ, comments, and answers the GUESSER with `answer`; CLIP
    embeds a crop as its colour; PP-OCR (fast only) reads one line. Records calls."""

    def __init__(self, answer: str = "", detections: dict = DETECTIONS) -> None:
        self.answer = answer
        self.detections = detections
        self.generated: list[dict] = []
        self.clip_batches: list[list[str]] = []

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline) -> dict:
        if model in contract.DETECTORS:
            rows = list(self.detections.values())
            rows.sort(key=(lambda d: d[0]) if model == contract.DETECTOR_REFERENCE else (lambda d: -d[1]))
            scale = np.array([WIDTH, HEIGHT, WIDTH, HEIGHT], np.float64)
            return {  # a quarter pixel in: int() truncation and round() both give the box back
                contract.DETECTOR_BOXES: np.array([[(np.array(box) + 0.25) / scale for _, _, box in rows]]),
                contract.DETECTOR_SCORES: np.array([[score for _, score, _ in rows]], np.float64),
                contract.DETECTOR_LABELS: np.array([[label for label, _, _ in rows]], np.int64),
            }
        if model == contract.CLIP_IMAGE:
            batch = inputs[contract.CLIP_IMAGE_IMAGES]
            self.clip_batches.append([crop_name(square) for square in batch])
            return {contract.CLIP_EMBEDDINGS: batch[:, 0, 0, :1].astype(np.float32)}  # the colour
        if model == contract.OCR:
            return {contract.OCR_TEXTS: np.array([b"K\xc3\xb6ln"], object), contract.OCR_SCORES: np.ones(1)}
        raise AssertionError(f"unexpected model {model}")

    async def generate(
        self, model: str, prompt: str, deadline: Deadline, image=None, max_tokens=None, json_schema=None
    ) -> AsyncIterator[str]:
        assert model == contract.VLM
        name = crop_name(image)
        call = {"prompt": prompt, "crop": name, "shape": image.shape}
        self.generated.append({**call, "max_tokens": max_tokens, "json_schema": json_schema})
        if prompt == prompts.READ_TEXT:
            yield f" {READ[name]} "
        elif prompt in prompts.DESCRIBE.values():
            yield f"{name} looks German."
        else:
            yield self.answer

    def calls(self, prompt: str) -> list[str]:
        return [c["crop"] for c in self.generated if c["prompt"] == prompt]


def place(text: str, i: int) -> Place:
    return Place(f"{text} {i}", "DE", 50.0 + i, 7.0 + i, 0.9 - i / 10, text, "NRW", source=f"geonames:{i}")


class FakeMap:
    """Five places per query; records (query, limit, whether a language prior was on)."""

    def __init__(self) -> None:
        self.language_prior = lambda lines: ("German", {"DE": 1.0})
        self.asked: list[tuple[list[str], int, bool]] = []

    async def search(self, lines: Sequence[str], limit: int = 5) -> list[Place]:
        self.asked.append((list(lines), limit, self.language_prior is not None))
        return [place(" ".join(lines), i) for i in range(5)]

    async def aclose(self) -> None:
        pass


class FakeGuidebook:
    """Two hits per crop, the same clue twice (the prompt lists it once)."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, float]] = []

    def search(self, embeddings: np.ndarray, k: int, threshold: float) -> list[list[GuideHit]]:
        self.asked.append((k, threshold))
        hits = []
        for row in embeddings:
            name = colour_name(int(row[0]))
            clue = GuideHit(f"{name}-1", "DE", f"clue of {name}", 0.5, "test")
            hits.append([clue, GuideHit(f"{name}-2", "DE", f"clue of {name}", 0.4, "test")])
        return hits


class Plugin(SearchTool):
    """A plugin that says nothing about pipelines: fast only."""

    name = "plugin_probe"

    async def run(self, search) -> None:
        pass


def built_in_tools(settings: Settings, backend: FakeMap, guidebook: FakeGuidebook) -> list[SearchTool]:
    config = ToolConfig()
    language = LanguageOfText.__new__(LanguageOfText)
    SearchTool.__init__(language, settings, config)
    language.prior = lambda lines: ("German", {"DE": 1.0})
    search_map = SearchMap.__new__(SearchMap)
    SearchTool.__init__(search_map, settings, config)
    search_map.backend = backend
    consult = ConsultGuidebook.__new__(ConsultGuidebook)
    SearchTool.__init__(consult, settings, config)
    consult.index = guidebook
    return [ReadSigns(settings, config), language, search_map, consult, DescribeCrops(settings, config)]


ALL = frozenset({"ocr", "language", "map", "guidebook", "describer"})


class Run:
    """One photo through the searcher, with fakes."""

    def __init__(
        self,
        pipeline: str = "reference",
        tools: frozenset[str] = ALL,
        tokens: int = 256,
        detections: dict = DETECTIONS,
        **settings,
    ) -> None:
        self.settings = load_settings(**settings)
        self.models, self.map, self.guidebook = FakeModels(detections=detections), FakeMap(), FakeGuidebook()
        self.metrics = Metrics()
        searcher_tools = built_in_tools(self.settings, self.map, self.guidebook)
        searcher_tools.append(Plugin(self.settings, ToolConfig()))
        searcher = Searcher(self.settings, self.models, self.metrics, searcher_tools)
        options = RunOptions(False, False, tools | {"plugin_probe"}, tokens, pipeline=pipeline)
        emitted: list = []
        timeline = Timeline(emitted.append, self.metrics)
        self.found: Findings = asyncio.run(
            searcher.run(photo(), options, Deadline.after(10), timeline, emitted.append)
        )
        self.stages = {t.stage for t in timeline.stages}
        self.evidence = [e for e in emitted if isinstance(e, Evidence)]

    def by_tool(self, tool: str) -> list[Evidence]:
        return [e for e in self.evidence if e.tool == tool]

    def crops(self) -> list[str]:
        return [BOX_NAME[tuple(json.loads(e.result.split(" at ")[1]))] for e in self.by_tool("detector")]


# --- SEARCHER ------------------------------------------------------------------------------------


def test_reference_crops_follow_navigs_threshold_224_rule_and_query_order():
    reference, fast = Run(tools=frozenset()), Run("fast", tools=frozenset())
    assert reference.crops() == REFERENCE_CROPS  # labels in PROMPT_ORDER, each in query order
    assert all(e.score > navig_reference.BOX_THRESHOLD for e in reference.by_tool("detector"))
    assert set(fast.crops()) == set(DETECTIONS) - {"shop", "strip"}  # >= 0.35, both sides >= 32
    assert fast.crops()[:3] == ["grass", "road", "house1"]  # best score first
    capped = Run(tools=frozenset(), reference_crops_per_label=2, max_crops=1)  # max_crops: fast only
    assert capped.crops() == ["road", "house4", "house1", "shop", "strip"]
    assert Run("fast", tools=frozenset(), max_crops=1).crops() == ["grass"]


def test_reference_crops_are_navigs_unclipped_slices_of_the_photo_as_jpeg():
    """A box past the left edge passes the 224 rule on its unclipped width, then slices from the end of
    the row (x0 < 0) and comes out empty: NAVIG cannot save it and skips it. The fast pipeline clips it."""
    edge = {"edge": (ROAD, 0.9, (-10, 600, 290, 890)), "road": DETECTIONS["road"]}
    reference = Run(tools=frozenset(), detections=edge)
    assert [e.query for e in reference.by_tool("detector")] == ["road sign"]
    assert reference.by_tool("detector")[0].result.endswith("[0, 0, 300, 60]")
    fast = Run("fast", tools=frozenset(), detections=edge)
    assert [e.result.split(" at ")[1] for e in fast.by_tool("detector")] == [
        "[0, 600, 290, 890]",
        "[0, 0, 300, 60]",
    ]


def test_the_vlm_reads_every_crop_houses_included_and_none_is_not_looked_up():
    run = Run(tokens=77)
    models = run.models
    assert sorted(models.calls(prompts.READ_TEXT)) == sorted(REFERENCE_CROPS)  # one generation per crop
    reads = [c for c in models.generated if c["prompt"] == prompts.READ_TEXT]
    assert {(c["max_tokens"], c["json_schema"]) for c in reads} == {(77, None)}
    shop = next(c for c in reads if c["crop"] == "shop")
    assert min(shop["shape"][:2]) == run.settings.min_image_side  # 20 px high: stretched to 28
    ocr = run.by_tool("ocr")
    assert {e.source for e in ocr} == {"vlm"}
    assert sorted(e.result for e in ocr) == sorted(["Köln 3 km", "Bäckerei Müller (None)", "Hauptstraße 5",
                                                    "Apotheke Bonn"])  # fmt: skip
    assert run.found.texts == {
        "road sign": ["Köln 3 km"],
        "house": ["None", "Bäckerei Müller (None)", "Hauptstraße 5", "None"],
        "building sign": ["Apotheke Bonn", ""],
    }
    assert sorted(run.found.lines) == sorted(LOOKED_UP)
    assert "language" not in run.stages and not run.by_tool("language")  # NAVIG has no language prior
    assert "plugin_probe" not in run.stages  # nor our plugins
    fast = Run("fast")
    assert {"language", "plugin_probe"} <= fast.stages and not fast.models.calls(prompts.READ_TEXT)
    assert {e.source for e in fast.by_tool("ocr")} == {contract.OCR}


def test_the_map_looks_up_each_text_for_its_top_3_places_without_a_prior():
    run = Run()
    assert sorted(q[0][0] for q in run.map.asked) == sorted(LOOKED_UP)
    assert {(q[1], q[2]) for q in run.map.asked} == {(navig_reference.MAP_RESULTS_PER_TEXT, False)}
    assert len(run.found.places) == 3 * len(LOOKED_UP)
    assert [p.name for p in run.found.places[:3]] == [f"{run.found.lines[0]} {i}" for i in range(3)]
    assert len(run.by_tool("map")) == 9
    fast = Run("fast")  # one search over every line, with the prior, map_limit places
    assert len(fast.map.asked) == 1 and fast.map.asked[0][1:] == (fast.settings.map_limit, True)


def test_the_guidebook_looks_up_the_first_crop_of_each_label_only():
    run = Run()
    assert run.models.clip_batches == [["road", "house4", "shop"]]  # PROMPT_ORDER, query order, no photo
    assert run.guidebook.asked == [(navig_reference.GUIDEBOOK_K, run.settings.guidebook_threshold)]
    assert {label: [h.text for h in hits] for label, hits in run.found.guide_by_label.items()} == {
        "road sign": ["clue of road", "clue of road"],
        "house": ["clue of house4", "clue of house4"],
        "building sign": ["clue of shop", "clue of shop"],
    }
    assert len(run.by_tool("guidebook")) == 6
    fast = Run("fast")
    assert len(fast.models.clip_batches[0]) == 1 + len(fast.crops())  # the photo and every crop


def test_the_describer_comments_on_3_houses_and_every_sign():
    run = Run()
    described = [c for c in run.models.generated if c["prompt"] in prompts.DESCRIBE.values()]
    assert sorted(c["crop"] for c in described) == sorted(
        ["house4", "house1", "house2", "road", "shop", "strip"]
    )
    assert all(c["prompt"] == prompts.DESCRIBE[LABEL[c["crop"]]] for c in described)
    assert run.found.comments == {
        "road sign": ["road looks German."],
        "house": ["house4 looks German.", "house1 looks German.", "house2 looks German."],
        "building sign": ["shop looks German.", "strip looks German."],
    }
    assert {e.source for e in run.by_tool("describer")} == {"vlm"}


def test_fit_for_vlm_stretches_thin_crops_and_keeps_others():
    assert fit_for_vlm(np.zeros((10, 224, 3), np.uint8), 640, 28).shape == (28, 627, 3)
    assert fit_for_vlm(np.zeros((5, 3000, 3), np.uint8), 640, 28).shape == (28, 640, 3)
    assert fit_for_vlm(np.zeros((300, 400, 3), np.uint8), 640, 28).shape == (300, 400, 3)
    assert fit_for_vlm(np.zeros((1280, 960, 3), np.uint8), 640, 28).shape == (640, 480, 3)


# --- options, proto, CLI ---------------------------------------------------------------------------


def server_tools(settings: Settings) -> list[SearchTool]:
    return [*built_in_tools(settings, FakeMap(), FakeGuidebook()), Plugin(settings, ToolConfig())]


def test_builtin_tools_declare_their_pipelines():
    modes = {tool.name: set(tool.modes) for tool in registry.BUILTIN}
    assert modes == {
        "ocr": {"fast", "reference"},
        "language": {"fast"},
        "map": {"fast", "reference"},
        "guidebook": {"fast", "reference"},
        "describer": {"fast", "reference"},
    }
    assert Plugin.modes == {"fast"}  # the default: a plugin does not know NAVIG's rules
    for bad in (frozenset(), frozenset({"turbo"}), {"fast"}):
        with pytest.raises(ValueError, match="modes"):
            registry.register(type("Bad", (Plugin,), {"name": "bad_modes", "modes": bad}))


def test_options_pick_the_pipeline_its_token_budget_and_its_tools():
    settings = load_settings(max_new_tokens=64)
    tools = server_tools(settings)
    with_plugin = pb.LocateOptions(tools={"plugin_probe": True, "language": True})
    registry.register(Plugin)
    try:
        fast = run_options(with_plugin, settings, tools)
        reference = run_options(
            pb.LocateOptions(pipeline=pb.REFERENCE, tools=with_plugin.tools), settings, tools
        )
    finally:
        registry.unregister(Plugin.name)
    assert (fast.pipeline, fast.max_new_tokens) == ("fast", 64)
    assert fast.tools == ALL | {"plugin_probe"}
    assert (reference.pipeline, reference.max_new_tokens) == ("reference", navig_reference.MAX_NEW_TOKENS)
    assert reference.tools == ALL - {"language"}  # asked for, but off in reference
    own_budget = run_options(pb.LocateOptions(pipeline=pb.REFERENCE, max_new_tokens=8), settings, tools)
    assert own_budget.max_new_tokens == 8
    server = load_settings(pipeline="reference")
    assert server_defaults(server, server_tools(server)).pipeline == "reference"  # unspecified: the setting
    assert run_options(pb.LocateOptions(pipeline=pb.FAST), server, server_tools(server)).pipeline == "fast"
    with pytest.raises(InvalidInput, match="pipeline must be FAST, REFERENCE or unset, got 7"):
        run_options(pb.LocateOptions(pipeline=7), settings, tools)  # proto3 enums are open


def test_a_reference_server_needs_the_vlm_not_pp_ocr():
    for pipeline, ocr_model in (("fast", contract.OCR), ("reference", contract.VLM)):
        settings = load_settings(pipeline=pipeline, use_describer=False, use_vlm_guesser=False)
        searcher = Searcher(settings, FakeModels(), Metrics(), server_tools(settings))
        required = Pipeline(settings, FakeModels(), searcher, Metrics()).required_models()
        assert ocr_model in required and (contract.OCR in required) == (pipeline == "fast")


def test_the_cli_sends_the_pipeline_and_refuses_others(tmp_path: Path):
    assert build_options(None, set(), [], False, False, "reference").pipeline == pb.REFERENCE
    assert build_options(None, set(), [], False, False, "fast").pipeline == pb.FAST
    assert not build_options(None, set(), [], False, False).pipeline  # unset: the server's setting
    image = tmp_path / "a.jpg"
    image.write_bytes((SAMPLES_DIR / "sign_000_de.jpg").read_bytes())
    dataset = tmp_path / "d.csv"
    dataset.write_text("image,latitude,longitude\na.jpg,50.9,6.9\n")
    for command in (["locate", str(image)], ["eval", str(dataset)], ["profile", "--images", str(image)]):
        result = CliRunner().invoke(app, [*command, "--pipeline", "turbo", "--address", "127.0.0.1:9"])
        assert result.exit_code == 2 and "turbo" in result.output, command


# --- GUESSER ---------------------------------------------------------------------------------------

BASE = prompts.REFERENCE_GUESSER["base"].format()
OUTRO = prompts.REFERENCE_GUESSER["outro"].format()
SECTIONS = {name: prompts.REFERENCE_GUESSER[name].split("{")[0] for name in ("map", "details", "guidebook")}


def test_the_reference_prompt_has_navigs_sections_in_order_under_navigs_conditions():
    full = reference_prompt("It rains.", Run().found)
    parts = (BASE, prompts.REFERENCE_GUESSER["intro"], "It rains.", *SECTIONS.values(), OUTRO)
    starts = [full.index(part) for part in parts]
    assert starts == sorted(starts) and full.startswith(BASE) and full.endswith(OUTRO)
    texts = json.loads(full.split("photo: ")[1].split(". A map search")[0])
    assert list(texts) == ["road sign", "house", "building sign"]  # PROMPT_ORDER; "None" and "" dropped
    assert texts["house"] == ["Bäckerei Müller (None)", "Hauptstraße 5"]
    places = json.loads(full.split("these places: ")[1].split(". The text")[0])
    assert len(places) == 9 and places[0]["address"] == "Köln 3 km 0, NRW, Germany"
    assert full.count("clue of road") == 1  # deduplicated
    details = full.split(SECTIONS["details"])[1]
    assert details.index("\nroad sign:") < details.index("\nhouse:") < details.index("\nbuilding sign:")

    bare = reference_prompt("", Findings(texts={"road sign": ["Köln"]}))  # texts but no place: no map
    assert (
        bare
        == BASE
        + prompts.REFERENCE_GUESSER["intro"]
        + prompts.REFERENCE_GUESSER["reason"].format(reasoning="")
        + OUTRO
    )  # the REASONER's part even when empty
    only_guidebook = reference_prompt(
        "r", Findings(guide_by_label={"house": [GuideHit("a", "DE", "tiles", 0.5)]})
    )
    assert SECTIONS["guidebook"] in only_guidebook and "\nhouse: tiles" in only_guidebook
    assert SECTIONS["map"] not in only_guidebook and SECTIONS["details"] not in only_guidebook
    only_comments = reference_prompt("r", Findings(comments={"house": ["Alpine."]}))
    assert SECTIONS["details"] in only_comments and SECTIONS["guidebook"] not in only_comments
    only_places = reference_prompt("r", Findings(places=[place("Köln", 0)]))
    assert SECTIONS["map"] in only_places and "photo: {}." in only_places  # NAVIG tests the places


def decide_reference(answer: str, found: Findings) -> tuple:
    models = FakeModels(answer)
    verdict = asyncio.run(
        decide(
            models, np.zeros((32, 32, 3), np.uint8), "r", found, True, Deadline.after(10), (), "reference", 99
        )
    )
    return verdict, models.generated


def test_the_reference_guesser_writes_freely_and_is_read_leniently():
    answer = (
        'I think: ```json\n{"country": "Germany", "city": "Köln", "latitude": 50.9", "longitude": 6.9}\n```'
    )
    verdict, calls = decide_reference(answer, Findings(places=[place("Köln", 0)]))
    assert [(c["max_tokens"], c["json_schema"]) for c in calls] == [(99, None)]  # no grammar
    assert calls[0]["prompt"].startswith(BASE)
    assert verdict.answered_by == Component.VLM_GUESSER and verdict.location.city == "Köln"
    assert verdict.reasons[0].startswith("VLM GUESSER (reference prompt") and verdict.guesser_output == answer
    rejected, _ = decide_reference("Somewhere in Europe.", Findings(places=[place("Köln", 0)]))
    assert rejected.answered_by == Component.EVIDENCE_GUESSER  # the product's safety net
    assert [(d.component, d.reason) for d in rejected.degraded] == [
        ("vlm_guesser", "InvalidAnswer: no JSON object in the answer")
    ]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ('{"country": "France", "latitude": 48.8, "longitude": 2.3}', {"country": "France"}),
        ('Answer: {"country": "France"} and {"country": "Spain"}', {"country": "France"}),  # the first only
        ('```json\n{"country": "France"}\n```', {"country": "France"}),  # fenced
        ('{"country": "France", "latitude": 48.8", "longitude": 2.3}', {"latitude": 48.8}),  # stray quote
        ('{"country": "France", "longitude": 2.3,\n}', {"longitude": 2.3}),  # trailing comma
        ('{"country": "France", "latitude": 48.8",}', None),  # each repair alone: both needed, none made
        ('{"country": "France", "city": {"name": "Paris"}}', None),  # first {...} is cut inside
        ("no JSON at all", None),
    ],
)
def test_lenient_json_reads_as_navigs_parser(text: str, parsed: dict | None):
    result = lenient_json(text)
    if parsed is None:
        assert result is None
    else:
        assert result.items() >= parsed.items()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"country": "Atlantis", "latitude": 1, "longitude": 2}', "unknown country"),
        ('{"country": "France", "latitude": 95, "longitude": 2}', "latitude 95"),
        ('{"country": "France", "latitude": "48.8", "longitude": 2}', "latitude is not a finite number"),
        ("[1, 2]", "no JSON object"),
    ],
)
def test_a_lenient_answer_is_still_checked(text: str, reason: str):
    with pytest.raises(InvalidAnswer, match=reason):
        parse_lenient(text)


# --- end to end: Locate on the real stack ---------------------------------------------------------

REFERENCE = pb.LocateOptions(pipeline=pb.REFERENCE, max_new_tokens=8)


def test_locate_in_reference_mode_reads_crops_with_the_vlm(
    geolocator: OrchestratorThread, samples: list[Sample]
):
    """sign_049: the tiny detector's random weights give crops of every label above 0.65 and 224 px on it."""
    (sample,) = [s for s in samples if s.file == "sign_049_mx.jpg"]
    image = (SAMPLES_DIR / sample.file).read_bytes()
    with GeolocatorClient(geolocator.address) as client:
        reference = client.locate_proto(image, REFERENCE)
        fast = client.locate_proto(image, pb.LocateOptions(max_new_tokens=8))
        with pytest.raises(LocateError) as info:
            client.locate_proto(image, pb.LocateOptions(pipeline=7))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and "pipeline" in info.value.details
    assert (reference.pipeline, fast.pipeline) == (pb.REFERENCE, pb.FAST)  # the response says which ran

    crops = [e for e in reference.evidence if e.tool == "detector"]
    assert crops, "no reference crops on this sample: pick another"
    order = [navig_reference.PROMPT_ORDER.index(c.query) for c in crops]
    assert order == sorted(order)  # labels in NAVIG's prompt order, each in the detector's query order
    for crop in crops:
        x0, y0, x1, y1 = json.loads(crop.result.split(" at ")[1])
        assert crop.score > navig_reference.BOX_THRESHOLD and (x1 - x0 >= 224 or y1 - y0 >= 224)
    read = [e for e in reference.evidence if e.tool == "ocr"]
    assert read and {e.source for e in read} == {contract.VLM}  # text read by the VLM, crop by crop
    assert {e.query for e in read} <= {c.result for c in crops} and len(read) <= len(crops)
    stages = {t.stage for t in reference.timings}
    assert {"detector", "reasoner", "ocr", "map", "guidebook", "describer", "guesser"} <= stages
    assert "language" not in stages and not any(e.tool == "language" for e in reference.evidence)
    first_per_label = {c.query: c.result for c in reversed(crops)}
    assert {e.query for e in reference.evidence if e.tool == "guidebook"} <= set(first_per_label.values())
    assert reference.guesser_output  # free text under the reference prompt
    if reference.answered_by != pb.VLM_GUESSER:  # random weights: usually no JSON in 8 tokens
        assert [d.component for d in reference.degraded] == ["vlm_guesser"]
    assert {e.source for e in fast.evidence if e.tool == "ocr"} == {contract.OCR}  # fast: PP-OCR


def test_a_model_triton_does_not_serve_is_a_failed_precondition(triton):
    """A repository exported without `detector_reference` (detector.reference_image_size: null) answers
    `reference` requests with FAILED_PRECONDITION naming the model, not INTERNAL or UNAVAILABLE (which
    clients would retry)."""
    from navig.orchestrator.errors import ModelMissing
    from navig.orchestrator.triton_client import TritonModels

    async def ask() -> None:
        models = TritonModels(triton.grpc_url, Metrics(), 2**25)
        try:
            images = np.zeros((1, 32, 32, 3), np.uint8)
            await models.infer("detector_absent", {contract.DETECTOR_IMAGES: images}, Deadline.after(10))
        finally:
            await models.close()

    with pytest.raises(ModelMissing, match="has no model 'detector_absent'") as caught:
        asyncio.run(ask())
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
