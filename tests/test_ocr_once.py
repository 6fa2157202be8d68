"""OCR once per photo: which crop a line read on the whole photo belongs to (`text_boxes.assign`, a pure
function), the ocr tool's settings, and the `photo_first` strategy through a real Triton (PP-OCR exported
alone, ONNX Runtime, gRPC) against `every_crop` on a composed street scene with three signs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from rich.progress import Progress

from benchmarks.ocr_once import CountingModels, Street, executions, read, settled, street_scene
from navig.export.build import build
from navig.export.samples import normalise_text
from navig.export.spec import ExportSpec
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.ocr import ReadSigns, ReadSignsConfig
from navig.orchestrator.searcher.text_boxes import assign, inside_fractions
from navig.orchestrator.settings import SettingsError, load_settings
from navig.orchestrator.triton_client import TritonModels


def quad(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


SIGN = (100, 100, 300, 200)
SHOP = (250, 150, 500, 400)  # overlaps SIGN in x 250..300, y 150..200


def test_a_line_inside_a_crop_is_that_crops():
    assert assign(np.array([quad(120, 120, 280, 140)]), [SIGN, SHOP]) == [0]


def test_a_straddling_line_belongs_to_the_crop_holding_at_least_half_of_it():
    half_in = quad(200, 110, 400, 130)  # x 200..300 of 200..400 inside SIGN: 0.5
    mostly_out = quad(250, 110, 450, 130)  # 50 of 200 px inside SIGN: 0.25, and above SHOP
    assert inside_fractions(np.array([half_in, mostly_out]), np.array([SIGN])).ravel().tolist() == [0.5, 0.25]
    assert assign(np.array([half_in, mostly_out]), [SIGN, SHOP]) == [0, None]
    assert assign(np.array([half_in]), [SIGN], min_inside=0.6) == [None]


def test_a_line_outside_every_crop_stays_the_photos():
    assert assign(np.array([quad(600, 600, 700, 620), quad(0, 0, 50, 10)]), [SIGN, SHOP]) == [None, None]
    assert assign(np.array([quad(120, 120, 280, 140)]), []) == [None]
    assert assign(np.zeros((0, 4, 2)), [SIGN]) == []


def test_overlapping_crops_the_one_holding_most_then_the_smaller():
    both = quad(260, 160, 290, 190)  # wholly inside SIGN (200x100) and SHOP (250x250)
    more_in_shop = quad(260, 160, 340, 190)  # SIGN holds 40 of 80 px (0.5), SHOP all of it
    assert assign(np.array([both, more_in_shop]), [SIGN, SHOP]) == [0, 1]
    assert assign(np.array([both]), [SHOP, SIGN]) == [1]  # the smaller wins whatever the order
    assert assign(np.array([both]), [SIGN, SIGN]) == [0]  # the same box twice: the detector's first


def test_a_tilted_line_is_measured_by_its_bounds():
    tilted = [[120, 130], [280, 110], [282, 125], [122, 145]]  # a few degrees off the horizontal
    assert assign(np.array([tilted]), [SIGN]) == [0]
    assert inside_fractions(np.array([tilted]), np.array([(100, 100, 201, 200)]))[0, 0] == pytest.approx(0.5)


def test_the_ocr_tools_settings_are_checked():
    tool = ReadSigns.create(load_settings(tools={"ocr": {"strategy": "every_crop", "photo_side": 2000}}))
    assert isinstance(tool, ReadSigns) and tool.config == ReadSignsConfig(
        strategy="every_crop", photo_side=2000
    )
    assert ReadSigns.create(load_settings()).config.strategy == "photo_first"  # type: ignore[union-attr]
    for bad in ({"strategy": "some_crops"}, {"min_inside": 0}, {"photo_side": 4000}, {"enabled": False}):
        with pytest.raises(SettingsError, match=r"tools\.ocr\."):
            ReadSigns.create(load_settings(tools={"ocr": bad}))


# --- through a real Triton ------------------------------------------------------------------------------

LINES = [["Düsseldorf 109 km", "Zentrum 5 km"], ["Köln 82 km", "Ausfahrt 4 km"], ["B 12", "Lübeck"]]


@pytest.fixture(scope="module")
def ocr_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedTriton]:
    """PP-OCR exported alone (`navig export build`, the spec's default) and served by its own Triton."""
    folder = tmp_path_factory.mktemp("ocr_repository")
    with Progress(disable=True) as quiet:
        build(ExportSpec(output=folder), quiet)
    with EmbeddedTriton(TritonConfig(folder, ports=TritonPorts.free())) as server:
        yield server


@pytest.fixture(scope="module")
def street() -> Street:
    """1280x960, three signs in three cells and a textless "building sign" crop in the fourth."""
    return street_scene(LINES, 1280, 960, 2, 2, 0.9, seed=0)


def run_ocr(
    server: EmbeddedTriton, street: Street, **config: object
) -> tuple[list[Evidence], dict[str, int]]:
    """The ocr tool on the street through Triton: its evidence, and the `ocr` calls it made with the
    `ocr_det` runs they caused, from a counting wrapper and from Triton's statistics."""
    import tritonclient.grpc as grpcclient

    tool = ReadSigns.create(load_settings(tools={"ocr": config}))
    assert isinstance(tool, ReadSigns)
    stats = grpcclient.InferenceServerClient(server.grpc_url)

    async def go() -> tuple[list[Evidence], dict[str, int]]:
        models = CountingModels(TritonModels(server.grpc_url, Metrics(), 32 * 2**20))
        try:
            before = executions(stats)
            _, evidence = await read(tool, models, street)
            after = await settled(stats, before, models.calls[contract.OCR])
        finally:
            await models.models.close()
        assert after[contract.OCR] - before[contract.OCR] == models.calls[contract.OCR]
        return evidence, {"ocr": models.calls[contract.OCR], "ocr_det": after["ocr_det"] - before["ocr_det"]}

    try:
        return asyncio.run(go())
    finally:
        stats.close()


def by_line(evidence: list[Evidence]) -> dict[str, str]:
    return {normalise_text(e.result): e.query for e in evidence}


def test_photo_first_names_each_sign_for_its_text_with_fewer_ocr_calls(
    ocr_triton: EmbeddedTriton, street: Street
):
    first, first_calls = run_ocr(ocr_triton, street, strategy="photo_first")
    every, every_calls = run_ocr(ocr_triton, street, strategy="every_crop")
    read_first, read_every = by_line(first), by_line(every)
    for crop, lines in zip(street.crops, street.lines):
        for line in lines:  # every drawn line, read and given to the crop of its sign
            assert read_first.get(normalise_text(line)) == crop.where, (line, read_first)
    assert set(read_first) == set(read_every)  # the same text as reading every crop
    # every_crop: the photo and the four sign crops; photo_first: the photo and the textless crop only
    assert every_calls == {"ocr": 5, "ocr_det": 5}
    assert first_calls == {"ocr": 2, "ocr_det": 2}
    assert {e.query for e in every} == {"photo"}  # every_crop: a line the photo pass read too is the photo's
    assert all(e.tool == "ocr" and e.source == contract.OCR for e in first)


def test_a_line_outside_every_crop_stays_the_photos_and_a_crop_without_text_is_read_alone(
    ocr_triton: EmbeddedTriton, street: Street
):
    missed = Street(street.name, street.image, street.crops[1:], street.lines[1:])  # no crop on Düsseldorf
    evidence, calls = run_ocr(ocr_triton, missed, strategy="photo_first")
    found = by_line(evidence)
    assert found[normalise_text("Düsseldorf 109 km")] == "photo"
    assert found[normalise_text("Köln 82 km")] == street.crops[1].where
    assert calls["ocr"] == 2  # the textless crop is read on its own, and finds nothing
    assert not any(e.query == street.crops[-1].where for e in evidence)


def test_photo_first_maps_the_photos_boxes_back_to_full_resolution(ocr_triton: EmbeddedTriton):
    """A 2560x1920 photo is read at 1280 (the detector's view): its boxes are scaled back before they
    meet the crops, which are in the full photo's pixels."""
    big = street_scene(LINES, 2560, 1920, 2, 2, 0.9, seed=0)
    evidence, calls = run_ocr(ocr_triton, big, strategy="photo_first")
    found = by_line(evidence)
    assert found[normalise_text("Lübeck")] == big.crops[2].where
    assert calls["ocr"] < 1 + len(big.crops)
