"""The rendered sample signs and their GeoNames ground truth."""

from __future__ import annotations

import math

from navig.client.images import read_rgb
from navig.export.samples import PLACES, SAMPLES_DIR, load_samples, lookup_place, render_samples


def test_committed_samples_are_what_the_renderer_makes(tmp_path):
    rendered = render_samples(tmp_path, seed=0)
    committed = load_samples(SAMPLES_DIR)
    assert [(s.file, s.lines, s.geonameid) for s in rendered] == [
        (s.file, s.lines, s.geonameid) for s in committed
    ]


def test_ground_truth_is_geonames(samples):
    assert len(samples) == len(PLACES) >= 30
    assert len({s.language for s in samples}) >= 10
    for sample in samples:
        city = lookup_place(sample.place, sample.country_code)
        assert city["geonameid"] == sample.geonameid
        assert math.isclose(city["latitude"], sample.latitude) and math.isclose(
            city["longitude"], sample.longitude
        )
        assert sample.place in " ".join(sample.lines)


def test_images_decode_with_diacritics_and_distractors(samples):
    assert any(not s.place.isascii() for s in samples)
    assert any(len(s.lines) > 1 and "km" in " ".join(s.lines) for s in samples)
    for sample in samples:
        assert read_rgb(SAMPLES_DIR / sample.file).shape == (480, 640, 3)
