"""The benchmark baseline makes NAVIG's calls (docs/navig-reference.md): its crop rules, its guidebook,
comment and text-reading rules, its GUESSER assembly, each call counted from outside the baseline and
compared with what the reference code would make for the same detections."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.navig_baseline import NavigBaseline, guesser, pipeline
from benchmarks.navig_baseline.pipeline import READ_TEXT, STEPS, select_crops
from navig.export.samples import SAMPLES_DIR, Sample
from navig.orchestrator import prompts
from navig.orchestrator.navig_reference import (
    BOX_THRESHOLD,
    COMMENT_HOUSES,
    CROP_MIN_SIDE,
    NO_TEXT,
    PROMPT_ORDER,
)
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
    without NO_TEXT, the GUESSER."""
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
        "map_calls": sum(NO_TEXT not in answer for answer in answers[: len(every)]),  # a substring test
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


def test_guesser_prompt_sections_follow_the_reference() -> None:
    heads = {
        name: getattr(guesser, name).split("{")[0][:20] for name in ("INTRO", "MAP", "DETAILS", "GUIDEBOOK")
    }
    heads["REASON"] = guesser.REASON.split("{")[0]
    heads["OUTRO"] = guesser.OUTRO[:30]
    texts = {"road sign": ["Rue de Rivoli", NO_TEXT], "house": [NO_TEXT], "building sign": []}
    places = [{"place_name": "Paris", "location": "Paris, FR", "lat": "48.85", "lon": "2.35"}]
    comments = {"road sign": "French design\t", "house": "", "building sign": "Parisian shop\t"}
    clues = {"road sign": ["white on blue", "km markers"], "house": []}

    full = guesser.guesser_prompt("Looks French.", texts, places, comments, clues)
    assert full.startswith(guesser.BASE)
    order = [full.index(heads[n]) for n in ("INTRO", "REASON", "MAP", "DETAILS", "GUIDEBOOK", "OUTRO")]
    assert order == sorted(order)
    assert "Looks French." in full
    assert "{'road sign': ['Rue de Rivoli']}" in full  # NO_TEXT answers and emptied categories dropped
    assert str(places) in full
    assert "road sign: French design" in full and "building sign: Parisian shop" in full
    assert "- house:" not in full
    assert "white on blue km markers" in full

    bare = guesser.guesser_prompt("", texts, [], dict.fromkeys(PROMPT_ORDER, ""), {})
    assert bare == guesser.BASE + guesser.INTRO + guesser.REASON.format(reasoning="") + guesser.OUTRO
    assert guesser.guesser_prompt("", {}, None, {}, {}) == bare  # no map results: no MAP section


def test_guesser_answer_parsing_follows_the_reference() -> None:
    assert guesser.parse_answer('x {"country": "France"} then {"country": "Spain"}') == (
        {"country": "France"},
        None,
    )
    assert guesser.parse_answer('{"latitude": 48.1", "longitude": 2.3}')[0] == {
        "latitude": 48.1,
        "longitude": 2.3,
    }
    assert guesser.parse_answer('{"city": "Paris",}')[0] == {"city": "Paris"}
    answer, error = guesser.parse_answer('{"city": Paris} {"city": "Lyon"}')  # only the first is tried
    assert answer is None and error is not None
    assert guesser.parse_answer("no JSON here")[0] is None


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


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("detections", "replies", "map_section"),
    [
        # the first read finds Zürich, the last says NO_TEXT: NAVIG drops the results gathered so far
        (FIXED, {0: "Zürich", 1: f"{NO_TEXT} visible", 8: NO_TEXT}, False),
        # no building sign crop; NO_TEXT read as a substring for the map, exactly for the prompt's texts
        (
            {**FIXED, "building sign": FIXED["building sign"][:1]},
            {0: NO_TEXT, 3: f"{NO_TEXT} visible", 7: "Zürich"},
            True,
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
    map_section: bool,
) -> None:
    """The detector boundary gives fixed boxes (the detector still runs once per prompt); the models,
    CLIP, the index and the gazetteer are real. The text-reading answers are replaced after each real
    generation (random weights write anything), to exercise NAVIG's NO_TEXT rule and its map reset."""
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

    def recorded(model: Any, prompt: str, image: np.ndarray, counts: dict[str, int]) -> str | None:
        answer = generate(model, prompt, image, counts)
        describe = {text: label for label, text in prompts.DESCRIBE.items()}
        if model is baseline.reasoner:
            calls.append("reasoner")
        elif prompt in describe:
            calls.append(f"describe {describe[prompt]}")
        elif prompt == READ_TEXT:
            calls.append("read")
            n = next(reads)
            answer = answers[n]
        else:
            calls.append("guesser")
        return answer

    looked_up: list[tuple[int, ...]] = []
    consult = baseline._consult_guidebook
    monkeypatch.setattr(baseline, "_detector_pass", fixed_pass)
    monkeypatch.setattr(baseline, "_generate", recorded)
    monkeypatch.setattr(
        baseline, "_consult_guidebook", lambda crop, *a: looked_up.append(crop.box) or consult(crop, *a)
    )

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

    # NAVIG's map rules: an answer holding NO_TEXT resets the results; the MAP section needs results
    assert "Zürich" in [line.split(" -> ")[-1] for line in result.evidence if line.startswith("ocr: ")]
    assert any(line.startswith("map: Zürich -> ") for line in result.evidence)  # the gazetteer found it
    if not map_section:
        assert counts["map_results"] == 0 and "## Map search" not in result.guesser_prompt
    else:
        assert counts["map_results"] > 0 and "## Map search" in result.guesser_prompt
        assert "Zürich" in result.guesser_prompt and f"'{NO_TEXT} visible'" in result.guesser_prompt
        assert f"'{NO_TEXT}'" not in result.guesser_prompt


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
        answers = [line for line in result.evidence if line.startswith("ocr: ")]
        assert watched["map"] == counts["map_calls"] == sum(NO_TEXT not in a for a in answers)

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
