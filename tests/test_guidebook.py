"""The guidebook: open default clues, JSONL validation, the FAISS index and the build CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pycountry
import pytest
from PIL import Image
from typer.testing import CliRunner

from navig.orchestrator.tools.base import Guidebook, ToolUnavailable
from navig.orchestrator.tools.guidebook.build import (
    OnnxClipEmbedder,
    build_guidebook,
    ensure_default_guidebook,
)
from navig.orchestrator.tools.guidebook.cli import guidebook_app
from navig.orchestrator.tools.guidebook.default import default_entries
from navig.orchestrator.tools.guidebook.entries import GuidebookError, GuideEntry, parse_entries, read_entries
from navig.orchestrator.tools.guidebook.index import GuidebookIndex


@pytest.fixture(scope="module")
def entries() -> dict[str, dict]:
    return {row["id"]: row for row in default_entries()}


def test_default_covers_every_country_with_unique_ids(entries: dict[str, dict]) -> None:
    rows = default_entries()
    assert len(entries) == len(rows)  # ids unique
    assert [row["id"] for row in rows] == sorted(entries)  # deterministic order
    assert {c.alpha_2 for c in pycountry.countries} <= {row["country_code"] for row in rows}
    for row in rows:
        GuideEntry.model_validate(row)
        assert row["source"] and f"({row['country_code']}):" in row["text"]


def test_default_facts(entries: dict[str, dict]) -> None:
    poland = entries["PL-facts"]["text"]
    assert "+48" in poland and ".pl" in poland and "Polish" in poland and "Latin script" in poland
    assert "ł" in poland and "drives on the right" in poland and "PLN" in poland and "Polska" in poland
    britain = entries["GB-facts"]["text"]
    assert ".uk" in britain and "drives on the left" in britain and "+44" in britain
    assert ".gb" not in britain
    assert "Japanese" in entries["JP-facts"]["text"] and "drives on the left" in entries["JP-facts"]["text"]
    assert "Portuguese" in entries["BR-facts"]["text"] and "+55" in entries["BR-facts"]["text"]
    assert "Cyrillic" in entries["RS-facts"]["text"]
    assert "capital Warsaw" in entries["PL-geography"]["text"]
    assert "Germany" in entries["PL-geography"]["text"]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    good = {"id": "a", "text": "Yellow centre lines", "country_code": "us", "source": "me", "note": "kept"}
    (entry,) = parse_entries([json.dumps(good)])
    assert entry.country_code == "US" and entry.model_extra == {"note": "kept"}
    path = tmp_path / "book.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"id": "b", "country_code": "PL"}) + "\n")
    with pytest.raises(GuidebookError, match=r"book\.jsonl:3: text: Field required"):
        read_entries(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(GuidebookError, match=r":2: not JSON"):
        read_entries(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(GuidebookError, match=r":2: duplicate id 'a' \(first on line 1\)"):
        read_entries(path)
    path.write_text(json.dumps({**good, "country_code": "POL"}) + "\n")
    with pytest.raises(GuidebookError, match=r":1: country_code: .*alpha-2"):
        read_entries(path)
    with pytest.raises(GuidebookError, match="no such file"):
        read_entries(tmp_path / "missing.jsonl")


def test_index_k_threshold_and_load_errors(tmp_path: Path) -> None:
    """Plain vectors (no model): k, threshold, defensive normalisation, save/load, corrupt folders."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20, 8)).astype(np.float32)
    rows = [GuideEntry(id=f"e{i}", text=f"clue {i}", country_code="PL", source="test") for i in range(20)]
    book = GuidebookIndex(vectors, rows)
    protocol: Guidebook = book  # type-checked: GuidebookIndex satisfies the pipeline's protocol
    assert callable(protocol.search)
    (hits,) = book.search(vectors[3:4] * 5.0, k=4, threshold=-1.0)  # unnormalised query
    assert len(hits) == 4 and hits[0].entry_id == "e3" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    (strict,) = book.search(vectors[3:4], k=4, threshold=0.999)
    assert [h.entry_id for h in strict] == ["e3"]
    assert book.search(vectors[:2], k=50, threshold=-1.0)[1][0].entry_id == "e1"
    assert len(book.search(vectors[:2], k=50, threshold=-1.0)[0]) == 20
    with pytest.raises(ToolUnavailable, match="dimensions"):
        book.search(np.ones((1, 4), np.float32), k=1, threshold=0.0)

    book.save(tmp_path / "book")
    loaded = GuidebookIndex.load(tmp_path / "book")
    assert loaded.count == 20 and loaded.dim == 8
    assert loaded.search(vectors[7:8], 1, 0.0)[0][0].entry_id == "e7"

    with pytest.raises(GuidebookError, match="no guidebook folder"):
        GuidebookIndex.load(tmp_path / "nothing")
    (tmp_path / "book" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(GuidebookError, match="not a FAISS index"):
        GuidebookIndex.load(tmp_path / "book")
    (tmp_path / "book" / "meta.json").unlink()
    with pytest.raises(GuidebookError, match=r"missing meta\.json"):
        GuidebookIndex.load(tmp_path / "book")


def test_build_round_trip_with_exported_clip(model_repository: Path, tmp_path: Path) -> None:
    """A small JSONL through the exported CLIP: each entry's own text embedding retrieves it first."""
    Image.fromarray(np.full((60, 90, 3), (200, 180, 20), np.uint8)).save(tmp_path / "plate.png")
    rows = [
        {"id": "pl", "text": "Poland: white signs, letters ł ą ę", "country_code": "PL", "source": "t"},
        {"id": "gb", "text": "United Kingdom: drives on the left, yellow rear plates", "country_code": "GB"},
        {"id": "jp", "text": "Japan: kana and kanji signs", "country_code": "JP", "image": "plate.png"},
        {
            "id": "br",
            "text": "Brazil: Portuguese, red-and-white kerbs " * 20,
            "country_code": "BR",
        },  # > 77 tokens
    ]
    src = tmp_path / "book.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    embedder = OnnxClipEmbedder(model_repository)
    built = build_guidebook(src, tmp_path / "index", embedder)
    assert built.count == 4
    meta = json.loads((tmp_path / "index" / "meta.json").read_text())
    assert meta["count"] == 4 and meta["dim"] == built.dim and meta["model"]["embedder"] == "onnxruntime"

    book = GuidebookIndex.load(tmp_path / "index")
    queries = embedder.embed_texts([rows[0]["text"], rows[1]["text"], rows[3]["text"]])
    hits = book.search(queries, k=2, threshold=-1.0)
    for row, row_hits in zip([rows[0], rows[1], rows[3]], hits):
        assert len(row_hits) == 2
        assert row_hits[0].entry_id == row["id"] and row_hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert row_hits[0].country_code == row["country_code"]
    assert hits[0][0].source == "t"
    assert all(len(h) == 1 for h in book.search(queries, k=4, threshold=0.99999))
    # the image entry's vector blends text and image: close to, but not exactly, its text vector
    (jp,) = book.search(embedder.embed_texts([rows[2]["text"]]), k=1, threshold=-1.0)
    assert jp[0].entry_id == "jp" and jp[0].score < 0.9999


def test_default_guidebook_builds_through_the_cli(model_repository: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    src = tmp_path / "default.jsonl"
    result = runner.invoke(guidebook_app, ["default", "--out", str(src)])
    assert result.exit_code == 0, result.output
    count = sum(1 for _ in src.open())
    assert f"{count} entries" in result.output

    started = time.perf_counter()
    args = ["build", str(src), "--out", str(tmp_path / "index"), "--model-repository", str(model_repository)]
    result = runner.invoke(guidebook_app, args)
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    print(f"\ndefault guidebook: {count} entries embedded and indexed in {seconds:.2f} s")
    book = GuidebookIndex.load(tmp_path / "index")
    assert book.count == count

    result = runner.invoke(
        guidebook_app, ["build", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "no such file" in result.output and "Traceback" not in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "text": ""}\n')
    result = runner.invoke(guidebook_app, ["build", str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "bad.jsonl:2" in result.output
    result = runner.invoke(
        guidebook_app, ["build", str(src), "--out", str(tmp_path / "x"), "--model-repository", str(tmp_path)]
    )
    assert result.exit_code == 1 and "model.onnx: missing" in result.output
    assert not (tmp_path / "x").exists()


def test_ensure_default_guidebook_is_cached(model_repository: Path, tmp_path: Path) -> None:
    first = ensure_default_guidebook(model_repository, tmp_path / "cache")
    built_at = (first / "meta.json").stat().st_mtime_ns
    assert ensure_default_guidebook(model_repository, tmp_path / "cache") == first
    assert (first / "meta.json").stat().st_mtime_ns == built_at
    assert GuidebookIndex.load(first).count == len(default_entries())
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temp folders left
