"""The NAVIG-faithful benchmark baseline does the reference's work: every step timed, GroundingDINO once
per prompt, CLIP reloaded per guidebook look-up, one VLM generation per reference call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from benchmarks.navig_baseline import NavigBaseline, pipeline
from benchmarks.navig_baseline.pipeline import HOUSES_DESCRIBED, STEPS
from navig.export.samples import SAMPLES_DIR, Sample
from navig.orchestrator.tools.gazetteer.index import GazetteerIndex


def _counting(calls: dict[str, int], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return fn(*args, **kwargs)

    return wrapper


@pytest.mark.timeout(300)
def test_baseline_runs_the_reference_loop(
    demo_checkpoints: Path,
    samples: list[Sample],
    gazetteer_index: GazetteerIndex,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    baseline = NavigBaseline(demo_checkpoints, tmp_path, max_new_tokens=4, gazetteer=gazetteer_index)
    assert set(baseline.load_seconds) >= {"reasoner", "base", "detector", "guidebook_build"}
    assert type(baseline.reasoner).__name__ == "PeftModel"  # LoRA applied unmerged
    assert baseline.reasoner.get_base_model() is not baseline.base  # two copies of the base

    # Counted from outside, not from the baseline's own counters: model calls and loads from disk.
    seen = dict.fromkeys(("detector", "clip_from_disk", "index_from_disk", "generate"), 0)
    baseline.detector.register_forward_hook(lambda *_: seen.__setitem__("detector", seen["detector"] + 1))
    clip_load = pipeline.CLIPModel.from_pretrained
    monkeypatch.setattr(pipeline.CLIPModel, "from_pretrained", _counting(seen, "clip_from_disk", clip_load))
    index_load = pipeline.GuidebookIndex.load
    monkeypatch.setattr(pipeline.GuidebookIndex, "load", _counting(seen, "index_from_disk", index_load))
    for model in (baseline.base, baseline.reasoner):
        monkeypatch.setattr(model, "generate", _counting(seen, "generate", model.generate))

    lookups = 0
    for sample in samples[:2]:
        with Image.open(SAMPLES_DIR / sample.file) as image:
            pixels = np.asarray(image.convert("RGB"))
        seen.update(dict.fromkeys(seen, 0))
        result = baseline.locate(pixels)
        assert seen["detector"] == 3  # one full GroundingDINO forward per prompt
        assert seen["clip_from_disk"] == seen["index_from_disk"] == result.counts["crops"]
        assert seen["generate"] == result.counts["generations"]

        assert set(result.timings_ms) == {*STEPS, "total"}
        for step in ("reasoner", "detector", "guesser", "total"):
            assert result.timings_ms[step] > 0, step
        assert all(value >= 0 for value in result.timings_ms.values())
        assert result.timings_ms["total"] >= sum(result.timings_ms[s] for s in STEPS)

        counts = result.counts
        signs, houses = counts["sign_crops"], counts["house_crops"]
        assert counts["crops"] == signs + houses
        assert counts["detector_passes"] == 3
        assert counts["clip_loads"] == counts["index_loads"] == counts["crops"]
        assert counts["generations"] == 1 + signs + min(HOUSES_DESCRIBED, houses) + signs + 1
        if signs:
            assert result.timings_ms["vlm_ocr"] > 0 and result.timings_ms["describer"] > 0
        if counts["crops"]:
            assert result.timings_ms["guidebook"] > 0
        assert (result.answer is None) == (result.answer_error is not None)
        lookups += counts["crops"]

    assert lookups > 0, "no crop in either photo: the guidebook path was not exercised"
    assert baseline.counts_total["clip_loads"] == lookups
