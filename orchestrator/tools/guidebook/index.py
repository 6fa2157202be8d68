"""A built guidebook: FAISS inner-product index over L2-normalised CLIP vectors + the entries it points to.

On disk (what `navig guidebook build` writes and `guidebook_dir` points at):
  index.faiss    faiss.write_index of an IndexFlatIP, row i = entries.jsonl line i
  entries.jsonl  the entries, in the guidebook JSONL format (see entries.py)
  meta.json      {"format", "dim", "count", "model", "built_at"}
The index is loaded once at server start; crop searches are in-memory and exact (flat index), so
there is no reload per look-up as in the reference code.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from navig.orchestrator.tools.base import GuideHit, ToolUnavailable
from navig.orchestrator.tools.guidebook.entries import (
    GuidebookError,
    GuideEntry,
    parse_entries,
    write_entries,
)

INDEX_FILE = "index.faiss"
ENTRIES_FILE = "entries.jsonl"
META_FILE = "meta.json"
FORMAT = 1


def normalise(vectors: np.ndarray) -> np.ndarray:
    """float32, C-contiguous, unit rows (zero rows stay zero): inner product is then cosine similarity."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise GuidebookError(f"expected a 2-D array of vectors, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class GuidebookIndex:
    """Implements `Guidebook`: exact cosine search; on a faiss build with GPUs the index lives there."""

    def __init__(self, vectors: np.ndarray, entries: list[GuideEntry], model: dict[str, Any] | None = None):
        vectors = normalise(vectors)
        if len(vectors) != len(entries):
            raise GuidebookError(f"{len(vectors)} vectors for {len(entries)} entries")
        if not entries:
            raise GuidebookError("a guidebook needs at least one entry")
        self.entries = entries
        self.dim = int(vectors.shape[1])
        self.model = dict(model or {})
        self.built_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._cpu_index = faiss.IndexFlatIP(self.dim)
        self._cpu_index.add(vectors)
        self._index = _to_gpu(self._cpu_index)

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def on_gpu(self) -> bool:
        return self._index is not self._cpu_index

    def search(self, embeddings: np.ndarray, k: int, threshold: float) -> list[list[GuideHit]]:
        """Per query row: up to k hits with cosine similarity >= threshold, best first."""
        queries = normalise(embeddings)  # defensive: callers promise unit rows, a stray norm must not skew
        if queries.shape[1] != self.dim:  # built with another CLIP than the served one: degrade, not fail
            raise ToolUnavailable(
                f"crop embeddings have {queries.shape[1]} dimensions, the guidebook {self.dim}: "
                "rebuild it with the served CLIP (`navig guidebook build`)"
            )
        if len(queries) == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        scores, rows = self._index.search(queries, min(k, self.count))
        results = []
        for row_scores, row_ids in zip(scores, rows):
            hits = []
            for score, i in zip(row_scores, row_ids):
                if i < 0 or score < threshold:
                    continue
                entry = self.entries[i]
                hits.append(GuideHit(entry.id, entry.country_code, entry.text, float(score), entry.source))
            results.append(hits)
        return results

    def save(self, directory: Path) -> None:
        """Writes the three files; the caller picks the folder (build writes a temp one, then renames)."""
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._cpu_index, str(directory / INDEX_FILE))
        write_entries(directory / ENTRIES_FILE, self.entries)
        meta = {
            "format": FORMAT,
            "dim": self.dim,
            "count": self.count,
            "model": self.model,
            "built_at": self.built_at,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, directory: Path) -> GuidebookIndex:
        """A folder written by `save`; anything missing or inconsistent -> GuidebookError."""
        directory = Path(directory)
        if not directory.is_dir():
            raise GuidebookError(f"{directory}: no guidebook folder (build one with `navig guidebook build`)")
        missing = [n for n in (INDEX_FILE, ENTRIES_FILE, META_FILE) if not (directory / n).is_file()]
        if missing:
            raise GuidebookError(f"{directory}: not a guidebook, missing {', '.join(missing)}")
        try:
            meta = json.loads((directory / META_FILE).read_text())
            dim, count = int(meta["dim"]), int(meta["count"])
        except (ValueError, KeyError, TypeError) as exc:
            raise GuidebookError(f"{directory / META_FILE}: unreadable: {exc}") from exc
        with (directory / ENTRIES_FILE).open(encoding="utf-8") as lines:
            entries = parse_entries(lines, str(directory / ENTRIES_FILE))
        try:
            index = faiss.read_index(str(directory / INDEX_FILE))
        except RuntimeError as exc:  # faiss raises RuntimeError on a truncated or foreign file
            raise GuidebookError(f"{directory / INDEX_FILE}: not a FAISS index: {exc}") from exc
        if index.d != dim or index.ntotal != count or len(entries) != count:
            raise GuidebookError(
                f"{directory}: inconsistent guidebook (meta: {count} x {dim}; index: {index.ntotal} x "
                f"{index.d}; entries: {len(entries)}); rebuild it"
            )
        vectors = index.reconstruct_n(0, index.ntotal) if count else np.zeros((0, dim), np.float32)
        book = cls(vectors, entries, meta.get("model"))
        book.built_at = str(meta.get("built_at", ""))
        return book


def _to_gpu(index: faiss.Index) -> faiss.Index:
    """The same index on all GPUs when this faiss build has them (faiss-gpu); the CPU one otherwise."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    if get_num_gpus is None or get_num_gpus() <= 0 or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return index
    return faiss.index_cpu_to_all_gpus(index)
