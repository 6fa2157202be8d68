"""The offline gazetteer, language prior and evidence guesser on real GeoNames and CLDR data."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from navig.client.cli import app
from navig.export.samples import Sample
from navig.orchestrator.geo import haversine_km
from navig.orchestrator.tools.base import Place
from navig.orchestrator.tools.gazetteer.index import GazetteerError, GazetteerIndex
from navig.orchestrator.tools.gazetteer.search import Gazetteer
from navig.orchestrator.tools.language import LanguagePriorModel, country_weights
from navig.orchestrator.tools.text import candidates, normalise


@pytest.fixture(scope="module")
def gazetteer(gazetteer_index: GazetteerIndex) -> Gazetteer:
    return Gazetteer(gazetteer_index, LanguagePriorModel())


def top(gazetteer: Gazetteer, *lines: str) -> Place:
    places = gazetteer.lookup(list(lines))
    assert places, f"nothing found for {lines}"
    return places[0]


def test_candidates_drop_distances_road_numbers_and_sign_words():
    assert candidates(["Düsseldorf 109 km", "Zentrum 5 km"]) == ["Düsseldorf"]
    assert candidates(["B 12", "Lübeck"]) == ["Lübeck"]
    assert candidates(["Ústí nad Labem"]) == ["Ústí nad Labem", "Ústí", "Labem"]
    assert "北京" in candidates(["北京市"])
    assert normalise("  ŁÓDŹ ") == "lodz" and normalise("Køge") == "koge" and normalise("İzmir") == "izmir"


@pytest.mark.parametrize(
    ("lines", "name", "country"),
    [
        (["北京"], "Beijing", "CN"),  # Chinese characters
        (["東京"], "Tokyo", "JP"),
        (["Москва"], "Moscow", "RU"),  # Cyrillic
        (["Zürich"], "Zürich", "CH"),  # with and without the diacritic
        (["ZURICH"], "Zürich", "CH"),
        (["Łódź 170 km"], "Łódź", "PL"),
        (["Lodz"], "Łódź", "PL"),
        (["Diisseldorf"], "Düsseldorf", "DE"),  # an OCR slip: fuzzy
    ],
)
def test_names_in_other_scripts_spellings_and_slips(gazetteer: Gazetteer, lines, name, country):
    place = top(gazetteer, *lines)
    assert (place.name, place.country_code) == (name, country)
    assert place.source.startswith("geonames:") and -90 <= place.latitude <= 90


def test_namesakes_stay_separate_candidates(gazetteer: Gazetteer):
    frankfurts = [p for p in gazetteer.lookup(["Frankfurt"], limit=10) if p.country_code == "DE"]
    assert {p.admin1 for p in frankfurts} >= {"Hesse", "Brandenburg"}  # am Main and (Oder)
    meridas = {(p.country_code, p.admin1) for p in gazetteer.lookup(["Mérida"], limit=10)}
    assert {"MX", "ES", "VE"} <= {country for country, _ in meridas}


def test_the_language_prior_breaks_namesake_ties(gazetteer: Gazetteer):
    """Polish words point to Poland; German to Germany first, with Austria and Switzerland in the running."""
    language, prior = LanguagePriorModel()(["Dworzec Centralny"])
    assert language == "pl" and max(prior, key=prior.get) == "PL"
    assert max(country_weights("de"), key=country_weights("de").get) == "DE"
    assert {"AT", "CH"} <= set(country_weights("de"))


def test_every_sample_sign_text_finds_its_place(gazetteer: Gazetteer, samples: list[Sample]):
    """The drawn lines (no OCR): the top candidate lies within 25 km of the truth; query latency printed."""
    misses, latencies = [], []
    for sample in samples:
        gazetteer.lookup(sample.lines)  # the language models load lazily
        started = time.perf_counter()
        places = gazetteer.lookup(sample.lines)
        latencies.append((time.perf_counter() - started) * 1e3)
        best = places[0] if places else None
        if (
            best is None
            or haversine_km(best.latitude, best.longitude, sample.latitude, sample.longitude) > 25
        ):
            misses.append((sample.lines, best))
    print(f"\ngazetteer: {len(samples) - len(misses)}/{len(samples)} sample texts placed within 25 km; "
          f"query p50 {statistics.median(latencies):.2f} ms, max {max(latencies):.2f} ms")  # fmt: skip
    assert len(misses) <= len(samples) // 20, misses


def test_index_loads_memory_mapped_and_refuses_a_stale_or_broken_one(
    gazetteer_index: GazetteerIndex, tmp_path
):
    started = time.perf_counter()
    again = GazetteerIndex(gazetteer_index.path)
    print(f"\ngazetteer index load: {(time.perf_counter() - started) * 1e3:.0f} ms, {len(again):,} places")
    assert len(again) == len(gazetteer_index) > 200_000
    assert again.key_hash.base is not None  # a view of the mapped file, not a copy in memory
    stale = tmp_path / "stale"
    stale.mkdir()
    meta = dict(gazetteer_index.meta, version="0")
    (stale / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(GazetteerError, match="navig gazetteer build"):
        GazetteerIndex(stale)
    with pytest.raises(GazetteerError, match="cannot read"):
        GazetteerIndex(tmp_path / "missing")
    with pytest.raises(GazetteerError, match="cannot read"):
        GazetteerIndex.open(tmp_path / "missing", build=False)


def test_cli_search_prints_json(gazetteer_index: GazetteerIndex):
    result = CliRunner().invoke(app, ["gazetteer", "search", "Kraków", "--dir", str(gazetteer_index.path),
                                      "--json", "--limit", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert found["places"][0]["country_code"] == "PL" and len(found["places"]) <= 2


def test_cli_build_reports_an_unwritable_directory(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["gazetteer", "build", "--dir", str(blocker / "index")])
    assert result.exit_code == 1 and "cannot build the gazetteer" in result.output
