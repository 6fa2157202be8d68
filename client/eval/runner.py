"""Runs a dataset through a Geolocator, one JSON line per image, resumable after any interruption.

The results file is the run's state: every finished image is appended (and flushed) as soon as it is
known, so a crash, Ctrl-C or a dead server loses at most the requests in flight. A later run skips the
images that already have an OK record and retries the rest (failed requests, unreadable files).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from navig.client.eval.dataset import EvalItem
from navig.client.eval.metrics import OK, geoscore
from navig.client.geolocator import LocateError
from navig.client.results import LocateResult
from navig.orchestrator.geo import haversine_km

UNREADABLE = "UNREADABLE"
UNAVAILABLE = "UNAVAILABLE"
STOP_AFTER_UNAVAILABLE = 5  # consecutive images; the client has already retried each one


class Locator(Protocol):
    def locate(self, image: bytes, options: Any = None, timeout_s: float | None = None) -> LocateResult: ...


class ResultsFileError(ValueError):
    """A results file that is damaged other than by a crash mid-line; resuming from it would be a guess."""


class ServerUnavailable(RuntimeError):
    """The server stayed UNAVAILABLE for several images in a row; the run stopped, its records are on disk."""

    def __init__(self, message: str, records: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.records = records


def new_progress(**kwargs: Any) -> Progress:
    """The bar `navig eval` shows; pass `disable=True` (tests, --json to a pipe) to hide it."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        **kwargs,
    )


def load_results(out_jsonl: Path) -> list[dict[str, Any]]:
    """Records of an earlier run; a truncated last line (a crash mid-write) is dropped from the file too."""
    if not out_jsonl.exists():
        return []
    lines = out_jsonl.read_bytes().split(b"\n")  # bytes: a torn line may end inside a UTF-8 character
    last = max((n for n, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    kept: list[bytes] = []
    torn = False
    for number, line in enumerate(lines[: last + 1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict) or "key" not in record:
                raise ValueError("not a result record")
        except ValueError as exc:
            if number == last + 1:
                torn = True  # the tail of an interrupted run
                break
            message = f"{out_jsonl}: line {number}: {exc}; move the file away to start over"
            raise ResultsFileError(message) from None
        records.append(record)
        kept.append(line)
    if torn or lines[-1] != b"":  # an unterminated last line: the next append must not join it
        _rewrite(out_jsonl, kept)
    return records


def evaluate(
    items: Iterable[EvalItem],
    client_factory: Callable[[], Locator],
    out_jsonl: Path,
    concurrency: int = 4,
    options: Any = None,
    progress: Progress | None = None,
    stop_after_unavailable: int = STOP_AFTER_UNAVAILABLE,
    on_resume: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Geolocate every item not already done; the latest record of each item, in item order.

    `concurrency` threads share one client (gRPC channels are thread-safe). A failed request is
    recorded with its status and the run goes on; only a server that stays UNAVAILABLE stops it
    (ServerUnavailable). Exceptions other than LocateError are bugs or interruptions: they propagate,
    and what was finished is already on disk. `on_resume(done, todo)` is told what resuming skipped.
    """
    items = list(items)
    latest = {record["key"]: record for record in load_results(out_jsonl)}
    todo = [item for item in items if latest.get(item.key, {}).get("status") != OK]
    if on_resume is not None:
        on_resume(len(items) - len(todo), len(todo))
    if todo:
        out_jsonl.parent.mkdir(parents=True, exist_ok=True)
        run = _run(todo, client_factory, concurrency, options, progress, stop_after_unavailable)
        with out_jsonl.open("a", encoding="utf-8") as sink:
            try:
                for record in run:
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                    sink.flush()
                    latest[record["key"]] = record
            except ServerUnavailable as exc:
                exc.records = [latest[item.key] for item in items if item.key in latest]
                raise
    return [latest[item.key] for item in items if item.key in latest]


def _run(
    todo: list[EvalItem],
    client_factory: Callable[[], Locator],
    concurrency: int,
    options: Any,
    progress: Progress | None,
    stop_after_unavailable: int,
) -> Iterator[dict[str, Any]]:
    """Yields each finished record; keeps at most `concurrency` requests in flight."""
    progress = progress or new_progress(disable=True)
    client = client_factory()
    pending: dict[Future[dict[str, Any]], EvalItem] = {}
    queue = iter(todo)
    unavailable_streak = failed = 0
    stopping: str | None = None
    executor = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="navig-eval")
    try:
        with progress:
            task = progress.add_task("eval", total=len(todo), status="")
            while True:
                while stopping is None and len(pending) < max(1, concurrency):
                    item = next(queue, None)
                    if item is None:
                        break
                    pending[executor.submit(locate_one, client, item, options)] = item
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    del pending[future]
                    record = future.result()  # only bugs and interruptions raise here
                    failed += record["status"] != OK
                    if record["status"] == UNAVAILABLE:
                        unavailable_streak += 1
                    elif record["status"] != UNREADABLE:
                        unavailable_streak = 0  # an unreadable file says nothing about the server
                    if unavailable_streak >= stop_after_unavailable and stopping is None:
                        stopping = f"{record['error']} ({unavailable_streak} images in a row)"
                    progress.update(task, advance=1, status=f"{failed} failed" if failed else "")
                    yield record
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=stopping is not None, cancel_futures=True)
        close = getattr(client, "close", None)
        if callable(close):
            close()
    if stopping is not None:
        raise ServerUnavailable(f"server unavailable: {stopping}", [])


def locate_one(client: Locator, item: EvalItem, options: Any = None) -> dict[str, Any]:
    """One image's record; RPC failures and unreadable files become statuses, never exceptions."""
    record = base_record(item)
    try:
        data = read_image(item.image)
    except OSError as exc:
        return record | {"status": UNREADABLE, "error": f"{item.image}: {exc}"}
    started = time.perf_counter()
    try:
        result = client.locate(data, options=options)
    except LocateError as exc:
        latency_ms = (time.perf_counter() - started) * 1e3
        return record | {"status": exc.code.name, "error": exc.details, "latency_ms": latency_ms}
    latency_ms = float(result.extra.get("latency_ms", (time.perf_counter() - started) * 1e3))
    return record | answer_fields(item, result) | {"latency_ms": latency_ms}


def read_image(path: Path) -> bytes:
    """The file's bytes, after checking (from its header only) that it is an image the server can decode."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (the header parsed)
    except UnidentifiedImageError as exc:
        raise OSError(f"not an image ({exc})") from None
    data = path.read_bytes()
    if not data:
        raise OSError("empty file")
    return data


def base_record(item: EvalItem) -> dict[str, Any]:
    return {
        "key": item.key,
        "image": str(item.image),
        "truth_latitude": item.latitude,
        "truth_longitude": item.longitude,
        "truth_country": item.country,
        "truth_city": item.city,
        "answer_latitude": None,
        "answer_longitude": None,
        "answer_country_code": None,
        "answer_city": None,
        "answer_confidence": None,
        "answered_by": None,
        "error_km": None,
        "geoscore": None,
        "status": OK,
        "error": "",
        "latency_ms": None,
        "server_ms": None,
        "request_id": "",
    }


def answer_fields(item: EvalItem, result: LocateResult) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "answered_by": result.answered_by,
        "server_ms": result.total_ms,
        "request_id": result.request_id,
    }
    location = result.location
    if location is None:
        return fields | {"geoscore": 0.0}
    error_km = haversine_km(item.latitude, item.longitude, location.latitude, location.longitude)
    return fields | {
        "answer_latitude": location.latitude,
        "answer_longitude": location.longitude,
        "answer_country_code": location.country_code,
        "answer_city": location.city,
        "answer_confidence": location.confidence,
        "error_km": error_km,
        "geoscore": geoscore(error_km),
    }


def _rewrite(path: Path, lines: list[bytes]) -> None:
    """Atomically replace `path` with `lines` (a crash during the rewrite leaves the old file)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(b"".join(line + b"\n" for line in lines))
    os.replace(temporary, path)
