"""The benchmark baseline makes NAVIG's calls (docs/navig-reference.md): its crop rules, its guidebook,
comment and text-reading rules, each call counted from outside the baseline and compared with what the
reference code would make for the same detections; and its GUESSER prompt and answer parsing are the
served `reference` mode's own (byte-identical prompts for the same findings), so the two cannot drift."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.navig_baseline import NavigBaseline, pipeline
from benchmarks.navig_baseline.pipeline import STEPS, guesser_prompt, read_answer, select_crops
from navig.export.samples import SAMPLES_DIR, Sample
from navig.orchestrator import prompts
from navig.orchestrator.answer import lenient_json
from navig.orchestrator.guesser import reference_prompt
from navig.orchestrator.navig_reference import (
    BOX_THRESHOLD,
    COMMENT_HOUSES,
    CROP_MIN_SIDE,
    MAP_RESULTS_PER_TEXT,
    NO_TEXT,
    PROMPT_ORDER,
)
from navig.orchestrator.searcher.search import Findings
from navig.orchestrator.tools.base import GuideHit, Place
from navig.orchestrator.tools.gazetteer.index import GazetteerIndex

Detections = dict[str, list[tuple[float, tuple[float, float, float, float]]]]  # label -> (score, cxcywh)


# -- what the reference code would do, written from docs/navig-reference.md independently ---------------


def reference_crops(detections: Detections, width: int, height: int) -> dict[str, list[tuple[int, ...]]]:
    """N utils.py:198-205: score > threshold, box x [w, h, w, h], kept iff w >= 224 or h >= 224, cut with
    int() and Python slicing (an empty slice cannot be saved and is skipped), in query order."""
    out: dict[str, list[tuple[int, ...]]] = {}
    for label in PROMPT_ORDER:
        out[label] = []
        for score, (cx, cy, w, h) in detections.get(label, []):
            if not score > BOX_THRESHOLD:
                continue
            cx, cy, w, h = cx * width, cy * height, w * width, h * height  # scaled, then corners (GD)
            x1, y1, x2, y2 = cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h
            if abs(x2 - x1) < CROP_MIN_SIDE and abs(y2 - y1) < CROP_MIN_SIDE:
                continue
            box = (int(x1), int(y1), int(x2), int(y2))
            rows = len(range(height)[box[1] : box[3]])
            columns = len(range(width)[box[0] : box[2]])
            if rows and columns:
                out[label].append(box)
    return out


def reference_calls(crops: dict[str, list[tuple[int, ...]]], answers: list[str]) -> dict[str, Any]:
    """N inference.py: REASONER, guidebook on the first crop per category (CLIP + index loaded each time),
    comments on the first 3 houses and every sign, text reading on every crop, a map call per answer
    without NO_TEXT (and not empty: the served `reference` mode's rule), the GUESSER."""
    every = [crop for label in PROMPT_ORDER for crop in crops[label]]
    commented = {
        label: crops[label][:COMMENT_HOUSES] if label == "house" else crops[label] for label in crops
    }
    comments = sum(len(c) for c in commented.values())
    return {
        "crops": len(every),
        "generations": 1 + comments + len(every) + 1,
        "comments": comments,
        "text_reads": len(every),
        "guidebook_crops": [crops[label][0] for label in PROMPT_ORDER if crops[label]],
        "map_calls": sum(bool(a) and NO_TEXT not in a for a in answers[: len(every)]),  # a substring test
        "order": ["reasoner"]
        + [f"describe {label}" for label in PROMPT_ORDER for _ in commented[label]]
        + ["read"] * len(every)
        + ["guesser"],
    }


# -- crop rules and the GUESSER prompt, without models ----------------------------------------------------


def test_crop_rules_follow_the_reference() -> None:
    image = np.tile(np.arange(448, dtype=np.uint8)[None, :, None], (448, 1, 3))  # 448 x 448, a gradient
    queries = [
        (0.9, (0.5, 0.5, 0.5, 0.1)),  # 224 px wide exactly: kept
        (BOX_THRESHOLD, (0.5, 0.5, 0.6, 0.6)),  # at the threshold: not above it
        (0.66, (0.5, 0.5, 0.1, 0.5)),  # 224 px high exactly: kept
        (0.99, (0.5, 0.5, 0.49, 0.49)),  # best score, both sides under 224: dropped
        (0.7, (0.1, 0.5, 0.6, 0.6)),  # left edge at -89.6: int() -> -89, slices from the end, empty: skipped
        (0.8, (0.25, 0.5, 0.5, 0.5)),
        (0.95, (0.75, 0.5, 0.5, 0.5)),
    ]
    scores = torch.tensor([s for s, _ in queries], dtype=torch.float64)
    boxes = torch.tensor([b for _, b in queries], dtype=torch.float32)
    expected = reference_crops({"house": queries}, 448, 448)["house"]
    assert expected == [(112, 201, 336, 246), (201, 112, 246, 336), (0, 112, 224, 336), (224, 112, 448, 336)]

    kept, passed, above = select_crops(image, "house", scores, boxes, cap=16)
    assert [c.box for c in kept] == expected  # query order, not score order
    assert (passed, above) == (4, 6)
    assert [c.score for c in kept] == pytest.approx([0.9, 0.66, 0.8, 0.95])
    first = kept[0]
    assert first.pixels.shape == (45, 224, 3)
    assert (
        np.abs(first.pixels.astype(int) - image[201:246, 112:336].astype(int)).mean() < 3
    )  # JPEG round trip

    capped, passed, _ = select_crops(image, "house", scores, boxes, cap=3)
    assert [c.box for c in capped] == expected[:3] and passed == 4  # the cap keeps the first, counts all


def hit(text: str, n: int = 0) -> GuideHit:
    return GuideHit(f"e{n}", "FR", text, 0.5 - n / 100, "test")


def spot(name: str, n: int = 0) -> Place:
    return Place(name, "CH", 47.37 + n, 8.54 + n, 0.9, name, "Zürich", source=f"geonames:{n}")


# What the loop records, per label in crop order (labels deliberately not in PROMPT_ORDER), and the
# places of its map queries in query order.
FINDINGS = {
    "texts": {
        "house": [NO_TEXT, ""],  # both dropped: the label leaves the MAP section
        "building sign": ['Bäckerei "Zürich"', f"{NO_TEXT} visible"],  # a substring stays in the prompt
        "road sign": ["Rue de Rivoli", NO_TEXT, "Zürich 3 km"],
    },
    "comments": {"building sign": ["Swiss shop.", ""], "road sign": ["French design."], "house": []},
    "hits": {
        "house": [hit("tiles", 0), hit("tiles", 1)],
        "road sign": [hit("white on blue")],
        "building sign": [],
    },
    "places": [spot("Zürich"), spot("Zürich", 1), spot("Rivoli")],
}


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"places": []},  # no MAP section, though texts were read
        {"comments": {}, "hits": {}},  # neither DETAILS nor GUIDEBOOK
        {"texts": {}, "comments": {}, "hits": {}, "places": []},  # the REASONER's text alone
    ],
)
def test_the_guesser_prompt_is_the_served_reference_prompt(variant: dict[str, Any]) -> None:
    """For the same findings, the baseline's GUESSER prompt is byte for byte the one the served `reference`
    mode sends: its findings in the served SEARCHER's record, as the reference tools fill it."""
    given = {**FINDINGS, **variant}
    served = Findings(
        places=list(given["places"]),
        texts={label: list(answers) for label, answers in given["texts"].items()},
        comments={label: list(said) for label, said in given["comments"].items()},
        guide_by_label={label: list(hits) for label, hits in given["hits"].items()},
    )
    for reasoning in ("Looks Swiss.", ""):
        ours = guesser_prompt(reasoning, given["texts"], given["comments"], given["hits"], given["places"])
        assert ours == reference_prompt(reasoning, served)
        assert ours.startswith(prompts.REFERENCE_GUESSER["base"].format())
    full = guesser_prompt("r", FINDINGS["texts"], FINDINGS["comments"], FINDINGS["hits"], FINDINGS["places"])
    heads = [prompts.REFERENCE_GUESSER[n].split("{")[0] for n in ("map", "details", "guidebook")]
    assert all(head in full for head in heads) and full.count("tiles") == 1  # clues deduplicated
    assert '{"road sign": ["Rue de Rivoli", "Zürich 3 km"], "building sign"' in full  # PROMPT_ORDER
    assert not hasattr(pipeline, "READ_TEXT")  # the text-reading prompt is the product's, not a copy


@pytest.mark.parametrize(
    "text",
    [
        'x {"country": "France"} then {"country": "Spain"}',  # the first {...} only
        '{"latitude": 48.1", "longitude": 2.3}',  # a stray quote after a number
        '{"city": "Paris",}',  # a trailing comma
        '```json\n{"country": "France"}\n```',  # fenced
        '{"city": Paris} {"city": "Lyon"}',  # the first is not JSON: nothing read
        "no JSON here",
    ],
)
def test_the_guesser_answer_is_read_by_the_products_lenient_parser(text: str) -> None:
    answer, error = read_answer(text)
    assert answer == lenient_json(text)
    assert (error is None) == (answer is not None)


# -- the loop, on the tiny demo checkpoints ----------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(
    demo_checkpoints: Path, gazetteer_index: GazetteerIndex, tmp_path_factory: pytest.TempPathFactory
) -> NavigBaseline:
    return NavigBaseline(
        demo_checkpoints, tmp_path_factory.mktemp("baseline"), max_new_tokens=2, gazetteer=gazetteer_index
    )


def _photo(sample: Sample) -> np.ndarray:
    with Image.open(SAMPLES_DIR / sample.file) as image:
        return np.asarray(image.convert("RGB"))


def _counting(calls: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return fn(*args, **kwargs)

    return wrapper


@pytest.fixture
def watched(baseline: NavigBaseline, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Calls counted from outside the baseline: detector forwards, generations per model, CLIP and
    index loads from disk, map look-ups."""
    seen: Counter[str] = Counter()
    hook = baseline.detector.register_forward_hook(lambda *_: seen.update(["detector"]))
    monkeypatch.setattr(
        pipeline.CLIPModel,
        "from_pretrained",
        _counting(seen, "clip_from_disk", pipeline.CLIPModel.from_pretrained),
    )
    monkeypatch.setattr(
        pipeline.GuidebookIndex, "load", _counting(seen, "index_from_disk", pipeline.GuidebookIndex.load)
    )
    monkeypatch.setattr(baseline.base, "generate", _counting(seen, "base_generate", baseline.base.generate))
    monkeypatch.setattr(
        baseline.reasoner, "generate", _counting(seen, "reasoner_generate", baseline.reasoner.generate)
    )
    monkeypatch.setattr(baseline.gazetteer, "lookup", _counting(seen, "map", baseline.gazetteer.lookup))
    yield seen
    hook.remove()


# Dyadic fractions: the same pixels in float32 (the baseline, as GroundingDINO) and float64 (the oracle).
BIG, SMALL = (0.3125, 0.25, 0.5, 0.5), (0.5, 0.5, 0.25, 0.25)  # 320 x 240 and 160 x 120 px on 640 x 480
FIXED: Detections = {
    "road sign": [
        (0.9, BIG),
        (0.97, SMALL),  # the best score, too small
        (0.7, (0.625, 0.5, 0.375, 0.25)),  # 240 x 120 px: kept
        (BOX_THRESHOLD, BIG),  # not above the threshold
        (0.8, (0.5, 0.625, 0.375, 0.125)),  # 240 x 60 px: kept
    ],
    "house": [(0.66 + q / 100, (0.25 + q / 8, 0.5, 0.375, 0.5)) for q in range(5)]
    + [(0.9, (0.0625, 0.5, 0.375, 0.5))],  # left edge at -80: an empty slice, skipped
    "building sign": [(0.5, BIG), (0.75, (0.75, 0.75, 0.25, 0.5)), (0.8, SMALL)],  # 160 x 240 px: kept
}


MAP_SECTION = prompts.REFERENCE_GUESSER["map"].split("{")[0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("detections", "replies"),
    [
        # the first read finds Zürich, the last says NO_TEXT: unlike NAVIG (§7.3), and as the served
        # `reference` mode, the places found before it are kept
        (FIXED, {0: "Zürich", 1: f"{NO_TEXT} visible", 8: NO_TEXT}),
        # no building sign crop; NO_TEXT read as a substring for the map, exactly for the prompt's texts
        (
            {**FIXED, "building sign": FIXED["building sign"][:1]},
            {0: NO_TEXT, 3: f"{NO_TEXT} visible", 7: "Zürich"},
        ),
    ],
)
def test_calls_match_the_reference_for_fixed_detections(
    baseline: NavigBaseline,
    watched: Counter[str],
    samples: list[Sample],
    monkeypatch: pytest.MonkeyPatch,
    detections: Detections,
    replies: dict[int, str],
) -> None:
    """The detector boundary gives fixed boxes (the detector still runs once per prompt); the models,
    CLIP, the index and the gazetteer are real. The text-reading answers are replaced after each real
    generation (random weights write anything), to exercise the NO_TEXT rules. The GUESSER's prompt is
    then rebuilt from outside, by the served `reference` mode's function, from what was observed."""
    photo = _photo(samples[0])
    height, width = photo.shape[:2]
    expected_crops = reference_crops(detections, width, height)
    answers = [replies.get(n, f"Exit {n}") for n in range(20)]  # the text-reading answers, in order
    expected = reference_calls(expected_crops, answers)
    assert expected["crops"] >= 8 and len(expected["guidebook_crops"]) == 2 + bool(
        expected_crops["building sign"]
    )

    detector_pass = baseline._detector_pass

    def fixed_pass(image: np.ndarray, label: str) -> tuple[torch.Tensor, torch.Tensor]:
        detector_pass(image, label)  # the real pass, for its cost and the forward count
        rows = detections.get(label, [])
        scores = torch.tensor([s for s, _ in rows], dtype=torch.float64)
        return scores, torch.tensor([b for _, b in rows], dtype=torch.float32).reshape(-1, 4)

    calls: list[str] = []
    reads = iter(range(1000))
    generate = baseline._generate
    read_labels = [label for label in PROMPT_ORDER for _ in expected_crops[label]]  # the order of the reads
    seen = Findings()  # as the served reference tools would record what the calls returned
    guesser_prompts: list[str] = []

    def recorded(model: Any, prompt: str, image: np.ndarray, counts: dict[str, int]) -> str | None:
        answer = generate(model, prompt, image, counts)
        describe = {text: label for label, text in prompts.DESCRIBE.items()}
        if model is baseline.reasoner:
            calls.append("reasoner")
        elif prompt in describe:
            calls.append(f"describe {describe[prompt]}")
            seen.comments.setdefault(describe[prompt], []).append(answer)
        elif prompt == prompts.READ_TEXT:
            calls.append("read")
            n = next(reads)
            answer = answers[n]
            seen.texts.setdefault(read_labels[n], []).append(answer)
        else:
            calls.append("guesser")
            guesser_prompts.append(prompt)
        return answer

    looked_up: list[tuple[int, ...]] = []
    consult = baseline._consult_guidebook

    def consulted(crop: pipeline.Crop, *args: Any) -> list[GuideHit]:
        looked_up.append(crop.box)
        hits = consult(crop, *args)
        seen.guide_by_label.setdefault(crop.label, []).extend(hits)
        return hits

    lookup = baseline.gazetteer.lookup

    def looked_up_on_the_map(lines: list[str], limit: int) -> list[Place]:
        places = lookup(lines, limit)
        seen.places.extend(places[:MAP_RESULTS_PER_TEXT])
        return places

    monkeypatch.setattr(baseline, "_detector_pass", fixed_pass)
    monkeypatch.setattr(baseline, "_generate", recorded)
    monkeypatch.setattr(baseline, "_consult_guidebook", consulted)
    monkeypatch.setattr(baseline.gazetteer, "lookup", looked_up_on_the_map)

    result = baseline.locate(photo)
    counts = result.counts

    # counted from outside
    assert watched["detector"] == 3
    assert watched["reasoner_generate"] == 1
    assert watched["reasoner_generate"] + watched["base_generate"] == expected["generations"]
    assert watched["clip_from_disk"] == watched["index_from_disk"] == len(expected["guidebook_crops"])
    assert watched["map"] == expected["map_calls"]
    assert looked_up == expected["guidebook_crops"]  # the first crop of each non-empty category
    assert calls == expected["order"]
    # and by the baseline itself
    assert counts["crops"] == counts["crops_before_cap"] == expected["crops"]
    assert counts["crops_over_cap"] == 0
    assert {label: counts[f"crops_{label.replace(' ', '_')}"] for label in PROMPT_ORDER} == {
        label: len(boxes) for label, boxes in expected_crops.items()
    }
    assert counts["generations"] == expected["generations"]
    assert counts["text_reads"] == expected["text_reads"] and counts["comments"] == expected["comments"]
    assert counts["guidebook_lookups"] == counts["clip_loads"] == counts["index_loads"] == len(looked_up)
    assert counts["map_calls"] == expected["map_calls"]
    assert counts["detector_passes"] == 3

    # the GUESSER's prompt is the served reference mode's for what the calls returned, byte for byte
    assert guesser_prompts == [result.guesser_prompt]
    assert result.guesser_prompt == reference_prompt(result.reasoning, seen)
    assert result.answer == lenient_json(result.guesser_output)
    # the map rules: an answer holding NO_TEXT is not looked up and keeps the places found before it
    assert "Zürich" in [line.split(" -> ")[-1] for line in result.evidence if line.startswith("ocr: ")]
    assert any(line.startswith("map: Zürich -> ") for line in result.evidence)  # the gazetteer found it
    assert counts["map_results"] == len(seen.places) > 0 and MAP_SECTION in result.guesser_prompt
    assert "Zürich" in result.guesser_prompt and f'"{NO_TEXT} visible"' in result.guesser_prompt
    assert f'"{NO_TEXT}"' not in result.guesser_prompt


@pytest.mark.timeout(300)
def test_baseline_runs_the_reference_loop(
    baseline: NavigBaseline, watched: Counter[str], samples: list[Sample]
) -> None:
    """Real detections on sample photos: the same accounting, every step timed."""
    assert set(baseline.load_seconds) >= {"reasoner", "base", "detector", "guidebook_build"}
    assert type(baseline.reasoner).__name__ == "PeftModel"  # LoRA applied unmerged
    assert baseline.reasoner.get_base_model() is not baseline.base  # two copies of the base

    lookups_before = baseline.counts_total["clip_loads"]
    crops = lookups = 0
    for sample in samples[:3]:
        watched.clear()
        result = baseline.locate(_photo(sample))
        counts = result.counts
        assert watched["detector"] == counts["detector_passes"] == 3
        assert watched["reasoner_generate"] + watched["base_generate"] == counts["generations"]
        categories = sum(1 for label in PROMPT_ORDER if counts[f"crops_{label.replace(' ', '_')}"])
        assert (
            watched["clip_from_disk"]
            == watched["index_from_disk"]
            == counts["guidebook_lookups"]
            == categories
        )
        houses, signs = counts["crops_house"], counts["crops_road_sign"] + counts["crops_building_sign"]
        # every crop read, the first 3 houses and every sign commented (unless the VLM refuses the crop)
        assert counts["comments"] + counts["text_reads"] + counts["unreadable_crops"] == (
            min(houses, COMMENT_HOUSES) + signs + counts["crops"]
        )
        assert counts["generations"] == 1 + counts["comments"] + counts["text_reads"] + 1
        answers = [line.split(" -> ", 1)[1] for line in result.evidence if line.startswith("ocr: ")]
        assert watched["map"] == counts["map_calls"] == sum(bool(a) and NO_TEXT not in a for a in answers)

        assert set(result.timings_ms) == {*STEPS, "total"}
        for step in ("reasoner", "detector", "guesser", "total"):
            assert result.timings_ms[step] > 0, step
        assert result.timings_ms["total"] >= sum(result.timings_ms[s] for s in STEPS)
        if counts["crops"]:
            assert result.timings_ms["guidebook"] > 0 and result.timings_ms["vlm_ocr"] > 0
        assert (result.answer is None) == (result.answer_error is not None)
        crops += counts["crops"]
        lookups += counts["guidebook_lookups"]

    assert crops > 0, "no crop in these photos: the per-crop calls were not exercised"
    assert baseline.counts_total["clip_loads"] - lookups_before == lookups
