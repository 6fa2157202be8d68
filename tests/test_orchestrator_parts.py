"""Orchestrator parts that need no server: the API stubs, settings, answer validation, geo maths."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from navig.orchestrator.answer import InvalidAnswer, parse_answer
from navig.orchestrator.api import geolocator_pb2
from navig.orchestrator.api.generate import PACKAGE, PROTO, compile_proto
from navig.orchestrator.geo import EARTH_RADIUS_KM, haversine_km
from navig.orchestrator.settings import SettingsError, load_settings


def test_committed_stubs_match_the_proto(tmp_path: Path):
    """Regenerate with `python -m navig.orchestrator.api.generate` when this fails."""
    from google.protobuf import descriptor_pb2

    descriptor_set = tmp_path / "set.pb"
    compile_proto(tmp_path, f"--descriptor_set_out={descriptor_set}")
    (compiled,) = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    messages = list(compiled.message_type)
    while messages:  # the generated module leaves out the derivable json names, nested types' too
        message = messages.pop()
        messages += message.nested_type
        for field in message.field:
            field.ClearField("json_name")
    assert compiled.name == str(PACKAGE / PROTO)
    assert compiled == descriptor_pb2.FileDescriptorProto.FromString(geolocator_pb2.DESCRIPTOR.serialized_pb)


def test_settings_precedence_file_then_environment_then_overrides(tmp_path: Path, monkeypatch):
    config = tmp_path / "navig.yaml"
    config.write_text("max_queue: 3\nmax_concurrency: 2\nport: 6000\n")
    monkeypatch.setenv("NAVIG_MAX_CONCURRENCY", "5")
    settings = load_settings(config, port=7000, host=None)
    assert (settings.max_queue, settings.max_concurrency, settings.port, settings.host) == (
        3,
        5,
        7000,
        "127.0.0.1",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_concurency: 2\n", "max_concurency: Extra inputs are not permitted"),
        ("max_queue: -1\n", "max_queue"),
    ],
)
def test_settings_errors_name_the_key(tmp_path: Path, text: str, message: str):
    config = tmp_path / "navig.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(config)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_valid_answers_are_normalised():
    answer = parse_answer('{"country":"Germany","city":"Köln","latitude":50.93,"longitude":6.95}')
    assert (answer.country_code, answer.city, answer.latitude) == ("DE", "Köln", 50.93)
    assert parse_answer('{"country":"PRT","city":"","latitude":38.5,"longitude":-8.9}').country == "Portugal"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"country":"Atlantis","city":"x","latitude":1,"longitude":2}', "unknown country"),
        ('{"country":"DE","city":"x","latitude":91,"longitude":2}', "latitude 91 is outside"),
        (
            '{"country":"DE","city":"x","latitude":1,"longitude":14E23669315}',
            "longitude is not a finite number",
        ),
        ('{"country":"DE","city":"x","latitude":true,"longitude":2}', "latitude is not a finite number"),
        ('{"country": "Germ', "truncated: the JSON stopped after 17 characters"),
        ('{"country": "Germany", "city": "K\tln"}', "not JSON .Invalid control character"),
        ('{"country": "Germany", "city": "Köln", "lat', "truncated"),
        ('{"country": "Germany", "city": "Köln", "latitude": 50.9', "truncated"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_invalid_answers_say_why(text: str, reason: str):
    with pytest.raises(InvalidAnswer, match=reason):
        parse_answer(text)


def test_haversine_known_distances():
    assert haversine_km(0, 0, 0, 0) == 0
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_KM)  # antipodes
    assert haversine_km(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_KM)  # pole to pole
    assert haversine_km(0, 179.5, 0, -179.5) == pytest.approx(
        haversine_km(0, 0, 0, 1)
    )  # across the date line
    assert haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.9, abs=0.5)  # Paris-London
