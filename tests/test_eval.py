"""`navig eval`: metrics by hand, the three CSV layouts, resuming, and one run against the real service."""

from __future__ import annotations

import csv
import json
import math
import threading
from pathlib import Path

import grpc
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from navig.client.eval.cli import eval_command, summary_path
from navig.client.eval.dataset import DatasetError, EvalItem, load_dataset
from navig.client.eval.metrics import THRESHOLDS_KM, country_alpha2, geoscore, summarise
from navig.client.eval.runner import ServerUnavailable, evaluate, load_results
from navig.client.geolocator import LocateError
from navig.client.results import LocateResult, Location
from navig.export.samples import SAMPLES_DIR, Sample
from navig.orchestrator.geo import EARTH_RADIUS_KM, haversine_km
from navig.orchestrator.server import OrchestratorThread

HALF_CIRCUMFERENCE_KM = math.pi * EARTH_RADIUS_KM  # 20015.1 km
ONE_DEGREE_KM = EARTH_RADIUS_KM * math.pi / 180  # 111.2 km


# ---------------------------------------------------------------------------------------------- metrics


def test_identical_points_are_zero_km_and_a_full_geoscore():
    assert haversine_km(48.8566, 2.3522, 48.8566, 2.3522) == 0.0
    assert geoscore(0.0) == 5000.0
    assert geoscore(1492.7) == pytest.approx(5000 / math.e)


@pytest.mark.parametrize(
    ("a", "b", "expected_km"),
    [
        ((0, 0), (0, 180), HALF_CIRCUMFERENCE_KM),  # antipodes on the equator
        ((90, 0), (-90, 0), HALF_CIRCUMFERENCE_KM),  # pole to pole
        ((90, 10), (90, -170), 0.0),  # the north pole has every longitude
        ((0, 179.5), (0, -179.5), ONE_DEGREE_KM),  # across the date line, not around the world
    ],
)
def test_great_circle_distances(a: tuple[float, float], b: tuple[float, float], expected_km: float):
    assert haversine_km(*a, *b) == pytest.approx(expected_km, abs=1e-6)


def test_hand_values_of_the_sphere():
    assert round(HALF_CIRCUMFERENCE_KM, 1) == 20015.1
    assert round(ONE_DEGREE_KM, 1) == 111.2


def record(key: str, error_km: float | None, status: str = "OK", **fields: object) -> dict[str, object]:
    """A results-file record with just what `summarise` reads."""
    answered = status == "OK" and error_km is not None
    return {
        "key": key,
        "status": status,
        "error_km": error_km,
        "geoscore": geoscore(error_km) if answered else (0.0 if status == "OK" else None),
        "answered_by": fields.pop(
            "answered_by", "vlm_guesser" if answered else ("none" if status == "OK" else None)
        ),
        "truth_country": fields.pop("truth_country", ""),
        "answer_country_code": fields.pop("answer_country_code", None),
        **fields,
    }


def test_thresholds_include_their_bound():
    summary = summarise([record(f"r{d}", d) for d in (0.0, 1.0, 1.001, 25.0, 200.0, 750.0, 2500.0, 2500.1)])
    assert summary["within"] == {"1": 2, "25": 4, "200": 5, "750": 6, "2500": 7}
    assert summary["accuracy"]["25"] == 4 / 8
    assert [int(km) for km in summary["accuracy"]] == list(THRESHOLDS_KM)


def test_summary_with_unanswered_and_failed_records():
    records = [
        record("a", 0.0, answered_by="vlm_guesser"),
        record("b", 100.0, answered_by="evidence_guesser"),
        record("c", 1000.0, answered_by="vlm_guesser"),
        record("d", None),  # OK, but no component could place it
        record("e", None, status="UNAVAILABLE", error="connection refused"),
        record("f", None, status="DEADLINE_EXCEEDED"),
        record("g", None, status="UNAVAILABLE"),
        record("h", None, status="UNREADABLE"),
    ]
    summary = summarise(records)
    assert (summary["records"], summary["ok"], summary["answered"]) == (8, 4, 3)
    assert (summary["unanswered"], summary["failed"]) == (1, 4)
    assert summary["within"] == {"1": 1, "25": 1, "200": 2, "750": 2, "2500": 3}
    assert summary["accuracy"]["2500"] == 3 / 8  # misses: the unanswered and every failed image
    assert summary["mean_error_km"] == pytest.approx(1100 / 3)
    assert summary["median_error_km"] == 100.0
    assert summary["geoscore"] == pytest.approx((5000 + geoscore(100) + geoscore(1000)) / 8)
    assert summary["answered_by"] == {"evidence_guesser": 0.25, "none": 0.25, "vlm_guesser": 0.5}
    assert summary["errors"] == {"DEADLINE_EXCEEDED": 1, "UNAVAILABLE": 2, "UNREADABLE": 1}


def test_empty_summary_has_no_numbers_to_make_up():
    summary = summarise([])
    assert summary["records"] == 0 and summary["mean_error_km"] is None and summary["geoscore"] is None


def test_country_accuracy_by_name_or_code():
    records = [
        record("a", 10.0, truth_country="France", answer_country_code="FR"),
        record("b", 10.0, truth_country="fr", answer_country_code="fr"),
        record("c", 10.0, truth_country="DEU", answer_country_code="DE"),
        record("d", 10.0, truth_country="Czech Republic", answer_country_code="SK"),  # wrong
        record("e", None, truth_country="CH"),  # unanswered: a miss
        record("f", None, status="INTERNAL", truth_country="Switzerland", answer_country_code="CH"),
        record("g", 10.0, answer_country_code="IT"),  # no truth country: not counted
        record("h", 10.0, truth_country="Atlantis", answer_country_code="AT"),  # unknown: a miss
    ]
    country = summarise(records)["country"]
    assert (country["evaluated"], country["correct"]) == (7, 3)
    assert country["accuracy"] == pytest.approx(3 / 7)
    assert country["unresolved_truth"] == ["Atlantis"]


@pytest.mark.parametrize(
    ("text", "code"), [("France", "FR"), ("fr", "FR"), ("FRA", "FR"), ("Russia", "RU"), ("Turkey", "TR")]
)
def test_country_names_resolve_to_alpha2(text: str, code: str):
    assert country_alpha2(text) == code


def test_ambiguous_or_unknown_country_is_not_guessed():
    assert (
        country_alpha2("Korea") is None and country_alpha2("Atlantis") is None and country_alpha2("") is None
    )


# ---------------------------------------------------------------------------------------------- dataset


def tiny_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path)
    return path


def write_csv(path: Path, rows: list[list[object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_generic_layout(tmp_path: Path):
    tiny_png(tmp_path / "photos" / "a.png")
    absolute = tiny_png(tmp_path / "elsewhere" / "b.png")
    dataset = write_csv(
        tmp_path / "set.csv",
        [
            [" Image ", "LAT", "Lng", "Country", "city"],
            ["photos/a.png", "47.3769", "8.5417", "CH", "Zürich"],
            [],  # blank lines are skipped
            [str(absolute), "-33.9", "151.2", "", ""],
        ],
    )
    a, b = load_dataset(dataset)
    assert a == EvalItem(tmp_path / "photos" / "a.png", 47.3769, 8.5417, "CH", "Zürich", "photos/a.png")
    assert b.image == absolute and b.country == "" and b.key == "elsewhere/b.png"


def test_generic_layout_resolves_against_images_folder(tmp_path: Path):
    tiny_png(tmp_path / "imgs" / "x.png")
    dataset = write_csv(tmp_path / "set.csv", [["filename", "latitude", "longitude"], ["x.png", "1", "2"]])
    (item,) = load_dataset(dataset, images=tmp_path / "imgs")
    assert item.image == (tmp_path / "imgs" / "x.png").resolve() and item.key == "x.png"


def test_im2gps3k_layout(tmp_path: Path):
    for name in ("1000_4960478404_3a1bbc0a1e_o.jpg", "1001_21337883_4df3e0b3e5_o.jpg"):
        tiny_png(tmp_path / "im2gps3ktest" / name)
    header = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor"]
    dataset = write_csv(
        tmp_path / "im2gps3k_places365.csv",
        [
            header,
            ["1000_4960478404_3a1bbc0a1e_o.jpg", "someone", "37.7749", "-122.4194", "2", "10", "200", "0.1"],
            ["1001_21337883_4df3e0b3e5_o.jpg", "other", "-22.9", "-43.2", "1", "3", "17", "0.9"],
        ],
    )
    items = load_dataset(dataset, images=tmp_path / "im2gps3ktest")
    assert [i.key for i in items] == ["1000_4960478404_3a1bbc0a1e_o.jpg", "1001_21337883_4df3e0b3e5_o.jpg"]
    assert (items[0].latitude, items[0].longitude, items[0].country) == (37.7749, -122.4194, "")
    assert all(i.image.is_file() for i in items)
    with pytest.raises(DatasetError, match=r"none of its images.*--images"):
        load_dataset(dataset)  # forgot --images: every image is missing


def test_gws_layout_tries_jpg_jpeg_png(tmp_path: Path):
    tiny_png(tmp_path / "img" / "11.jpg")
    tiny_png(tmp_path / "img" / "12.jpeg")
    tiny_png(tmp_path / "img" / "13.png")
    dataset = write_csv(
        tmp_path / "gws15k.csv",
        [
            ["id", "latitude", "longitude", "country", "city", "region"],
            ["11", "48.8566", "2.3522", "FR", "Paris", "IDF"],
            ["12", "52.52", "13.405", "Germany", "Berlin", "BE"],
            ["13", "35.68", "139.69", "JP", "Tokyo", "13"],
            ["14", "0", "0", "", "", ""],  # no file: kept, the run records it as UNREADABLE
        ],
    )
    items = load_dataset(dataset, images=tmp_path / "img")
    assert [i.key for i in items] == ["11.jpg", "12.jpeg", "13.png", "14.jpg"]
    assert (items[1].country, items[1].city) == ("Germany", "Berlin")


def test_osv5m_style_header_with_lat_lon(tmp_path: Path):
    tiny_png(tmp_path / "images" / "700.jpg")
    dataset = write_csv(
        tmp_path / "test.csv",
        [["id", "lat", "lon", "country", "captured_at"], ["700", "10", "20", "KE", "x"]],
    )
    (item,) = load_dataset(dataset, images=tmp_path / "images")
    assert (item.key, item.latitude, item.longitude, item.country) == ("700.jpg", 10.0, 20.0, "KE")


def test_limit_takes_the_first_rows(tmp_path: Path):
    for n in range(5):
        tiny_png(tmp_path / f"{n}.png")
    dataset = write_csv(
        tmp_path / "s.csv", [["image", "lat", "lon"], *[[f"{n}.png", n, n] for n in range(5)]]
    )
    assert [i.key for i in load_dataset(dataset, limit=2)] == ["0.png", "1.png"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["image", "lon"], ["a.png", "1"]], r"set\.csv: line 1: missing column latitude"),
        ([["name", "lat", "lon"], ["a.png", "1", "2"]], r"line 1: missing column an image column"),
        (
            [["image", "lat", "lon"], ["a.png", "1", "2"], ["a.png", "north", "2"]],
            r"line 3: lat 'north' is not",
        ),
        (
            [["image", "lat", "lon"], ["a.png", "1", "2"], ["b.png", "91", "2"]],
            r"line 3: lat 91 is out of range",
        ),
        ([["image", "lat", "lon"], ["a.png", "1", "-180.5"]], r"line 2: lon -180.5 is out of range"),
        ([["image", "lat", "lon"], ["a.png", "nan", "0"]], r"line 2: lat nan is out of range"),
        ([["image", "lat", "lon"], ["", "1", "2"]], r"line 2: empty 'image'"),
        ([["image", "lat", "lon"], ["a.png", "1", "2"], ["a.png", "1", "2"]], r"line 3: image a.png already"),
        ([], r"set\.csv: empty file"),
    ],
)
def test_dataset_errors_name_the_file_and_line(tmp_path: Path, rows: list[list[str]], message: str):
    tiny_png(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=message):
        load_dataset(write_csv(tmp_path / "set.csv", rows))


def test_missing_dataset_file(tmp_path: Path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------- runner


class Crash(BaseException):
    """Stands for the process dying (Ctrl-C, OOM kill) in the middle of a run."""


class FakeClient:
    """Answers every image 10 km north of its truth; can crash after a number of calls or fail some."""

    def __init__(
        self, crash_after: int | None = None, fail: dict[str, grpc.StatusCode] | None = None
    ) -> None:
        self.crash_after = crash_after
        self.fail = fail or {}
        self.requested: list[bytes] = []
        self.lock = threading.Lock()

    def locate(self, image: bytes, options: object = None, timeout_s: float | None = None) -> LocateResult:
        with self.lock:
            if self.crash_after is not None and len(self.requested) >= self.crash_after:
                raise Crash
            self.requested.append(image)
        latitude, longitude, name = TRUTH[image]
        if name in self.fail:
            raise LocateError(self.fail[name], "no luck", attempts=4)
        location = Location("Nowhere", "XX", "", latitude + 10 / ONE_DEGREE_KM, longitude, 0.5)
        return LocateResult(location, "vlm_guesser", "", [], [], {}, [], [], f"req-{name}", "", 12.5)


TRUTH: dict[bytes, tuple[float, float, str]] = {}  # image bytes -> where FakeClient "sees" it


def make_items(tmp_path: Path, count: int) -> list[EvalItem]:
    items = []
    for n in range(count):
        path = tmp_path / "img" / f"{n}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (4, 4), (n, 0, 0)).save(path)
        TRUTH[path.read_bytes()] = (float(n), float(n), f"{n}.png")
        items.append(EvalItem(path, float(n), float(n), key=f"{n}.png"))
    return items


def requested_names(client: FakeClient) -> list[str]:
    return [TRUTH[image][2] for image in client.requested]


def test_resume_after_a_crash_requests_only_what_is_left(tmp_path: Path):
    items = make_items(tmp_path, 8)
    out = tmp_path / "out" / "results.jsonl"
    first = FakeClient(crash_after=3)
    with pytest.raises(Crash):
        evaluate(items, lambda: first, out, concurrency=1)
    assert requested_names(first) == ["0.png", "1.png", "2.png"]
    assert [r["key"] for r in load_results(out)] == ["0.png", "1.png", "2.png"]
    with out.open("a") as handle:
        handle.write('{"key": "3.png", "status": "O')  # the crash tore the last line

    second = FakeClient()
    records = evaluate(items, lambda: second, out, concurrency=3)
    assert sorted(requested_names(second)) == [f"{n}.png" for n in range(3, 8)]
    assert [r["key"] for r in records] == [f"{n}.png" for n in range(8)]  # old and new, in dataset order
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line)["status"] == "OK" for line in lines)
    assert all(r["error_km"] == pytest.approx(10.0) for r in records)
    assert records[5]["request_id"] == "req-5.png" and records[5]["answer_country_code"] == "XX"

    third = FakeClient()
    assert evaluate(items, lambda: third, out, concurrency=2) == records
    assert third.requested == []


def test_failed_and_unreadable_images_are_recorded_then_retried(tmp_path: Path):
    items = make_items(tmp_path, 4)
    (tmp_path / "img" / "2.png").write_bytes(b"not an image")
    items[3] = EvalItem(tmp_path / "img" / "missing.png", 0, 0, key="missing.png")
    out = tmp_path / "results.jsonl"
    first = FakeClient(fail={"1.png": grpc.StatusCode.DEADLINE_EXCEEDED})
    records = evaluate(items, lambda: first, out, concurrency=2)
    assert [r["status"] for r in records] == ["OK", "DEADLINE_EXCEEDED", "UNREADABLE", "UNREADABLE"]
    assert sorted(requested_names(first)) == ["0.png", "1.png"]  # unreadable files are never sent
    assert records[1]["error"] == "no luck" and "missing.png" in records[3]["error"]
    assert summarise(records)["errors"] == {"DEADLINE_EXCEEDED": 1, "UNREADABLE": 2}

    second = FakeClient()
    records = evaluate(items, lambda: second, out, concurrency=2)
    assert requested_names(second) == ["1.png"]
    assert [r["status"] for r in records] == ["OK", "OK", "UNREADABLE", "UNREADABLE"]
    assert len(out.read_text().splitlines()) == 7  # append-only; the latest record of a key wins


def test_unanswered_image_is_ok_with_geoscore_zero(tmp_path: Path):
    (item,) = make_items(tmp_path, 1)

    class Unsure(FakeClient):
        def locate(
            self, image: bytes, options: object = None, timeout_s: float | None = None
        ) -> LocateResult:
            return LocateResult(None, "none", "", [], [], {}, [], [], "req", "", 3.0)

    (rec,) = evaluate([item], Unsure, tmp_path / "r.jsonl", concurrency=1)
    assert (rec["status"], rec["answered_by"], rec["error_km"], rec["geoscore"]) == ("OK", "none", None, 0.0)


def test_a_server_that_stays_unavailable_stops_the_run(tmp_path: Path):
    items = make_items(tmp_path, 20)
    down = FakeClient(fail={f"{n}.png": grpc.StatusCode.UNAVAILABLE for n in range(20)})
    out = tmp_path / "results.jsonl"
    with pytest.raises(ServerUnavailable, match="5 images in a row") as caught:
        evaluate(items, lambda: down, out, concurrency=2, stop_after_unavailable=5)
    assert 5 <= len(down.requested) <= 6  # what was in flight finishes, nothing new starts
    assert len(caught.value.records) == len(down.requested) == len(out.read_text().splitlines())


def test_an_unterminated_last_line_is_kept_and_closed(tmp_path: Path):
    out = tmp_path / "results.jsonl"
    out.write_bytes(b'{"key": "a", "status": "OK"}\n{"key": "b", "status": "OK"}')  # died before the newline
    assert [r["key"] for r in load_results(out)] == ["a", "b"]
    assert out.read_bytes().endswith(b'"OK"}\n')  # so the next append starts a line of its own


def test_a_line_torn_inside_a_utf8_character_is_dropped(tmp_path: Path):
    out = tmp_path / "results.jsonl"
    out.write_bytes(b'{"key": "a", "status": "OK"}\n' + '{"key": "Zü'.encode()[:-1])
    assert [r["key"] for r in load_results(out)] == ["a"]
    assert out.read_bytes() == b'{"key": "a", "status": "OK"}\n'


def test_a_damaged_middle_line_is_not_guessed_around(tmp_path: Path):
    from navig.client.eval.runner import ResultsFileError

    out = tmp_path / "results.jsonl"
    out.write_text('{"key": "a", "status": "OK"}\nnot json\n{"key": "b", "status": "OK"}\n')
    with pytest.raises(ResultsFileError, match="line 2"):
        load_results(out)


# ---------------------------------------------------------------------------------------------- CLI


def eval_app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)
    return app


def test_summary_sits_next_to_the_results():
    assert summary_path(Path("build/eval/gws15k.jsonl")) == Path("build/eval/gws15k.summary.json")


def test_cli_bad_dataset_exits_2_without_a_traceback(tmp_path: Path):
    dataset = write_csv(tmp_path / "bad.csv", [["image", "lat"], ["a.png", "1"]])
    result = CliRunner().invoke(eval_app(), [str(dataset), "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 2, result.output
    assert "bad.csv: line 1: missing column longitude" in result.output and "Traceback" not in result.output


def test_cli_without_a_server_exits_3(tmp_path: Path):
    for n in range(6):
        tiny_png(tmp_path / f"{n}.png")
    dataset = write_csv(
        tmp_path / "s.csv", [["image", "lat", "lon"], *[[f"{n}.png", 0, 0] for n in range(6)]]
    )
    port = _free_port()
    args = [
        str(dataset),
        "--address",
        f"127.0.0.1:{port}",
        "--out",
        str(tmp_path / "r.jsonl"),
        "--timeout",
        "5",
    ]
    result = CliRunner().invoke(eval_app(), args)
    assert result.exit_code == 3, result.output
    assert "unavailable" in result.output and "run the same command again" in result.output


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_eval_end_to_end_against_the_real_service(
    geolocator: OrchestratorThread, samples: list[Sample], tmp_path: Path
):
    chosen = samples[:6]
    rows = [["image", "latitude", "longitude", "country", "city"]]
    rows += [[s.file, s.latitude, s.longitude, s.country_code, s.place] for s in chosen]
    dataset = write_csv(tmp_path / "signs.csv", rows)
    out = tmp_path / "eval" / "signs.jsonl"
    args = [str(dataset), "--images", str(SAMPLES_DIR), "--address", geolocator.address, "--out", str(out)]
    args += ["--max-new-tokens", "8", "--concurrency", "2", "--json"]

    result = CliRunner().invoke(eval_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads(summary_path(out).read_text())
    assert summary["records"] == 6 and summary["errors"] == {}, summary
    assert summary["country"]["evaluated"] == 6 and summary["country"]["accuracy"] is not None
    assert sum(summary["answered_by_counts"].values()) == 6
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["key"] for r in records) == sorted(s.file for s in chosen)
    assert all(r["request_id"] and r["latency_ms"] > 0 for r in records)

    again = CliRunner().invoke(eval_app(), args[:-1])  # the table this time
    assert again.exit_code == 0, again.output
    assert "all 6 images already evaluated" in again.output and "within 25 km" in again.output
    assert len(out.read_text().splitlines()) == 6
