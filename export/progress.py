"""Byte-level progress for the long parts of an export (copying, loading, saving multi-GB weights).

`navig export build` attaches its rich Progress here; the steps open byte tasks on it (nothing shows
when none is attached, as in library use). A step either advances its task as it moves bytes
(copying) or has it watch a measure while a library call runs (loading: the process's resident
memory grown since the start; saving: the bytes on disk in the target folder).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.progress import Progress, ProgressColumn, Task
from rich.text import Text

_attached: list[Progress] = []


@contextmanager
def attached(progress: Progress) -> Iterator[None]:
    _attached.append(progress)
    try:
        yield
    finally:
        _attached.remove(progress)


class BytesColumn(ProgressColumn):
    """'3.2/16.6 GB, shard 2/5' on byte tasks, nothing on step tasks."""

    def render(self, task: Task) -> Text:
        if not task.fields.get("bytes"):
            return Text("")
        done, total = (task.completed or 0) / 1e9, (task.total or 0) / 1e9
        shards = task.fields.get("shards")
        text = f"{done:.2f}/{total:.2f} GB" + (f", {shards}" if shards else "")
        return Text(text, style="progress.download")


@contextmanager
def byte_task(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A task counting `total` bytes; yields update(advance=bytes, shards='file 2/5')."""
    progress = _attached[-1] if _attached else None
    if progress is None:
        yield lambda advance=0, shards=None: None
        return
    task = progress.add_task(description, total=total, bytes=True, shards="")

    def update(advance: int = 0, shards: str | None = None) -> None:
        progress.update(task, advance=advance, **({"shards": shards} if shards is not None else {}))

    try:
        yield update
    finally:
        progress.remove_task(task)


@contextmanager
def watched(description: str, total: int, measure: Callable[[], int], every: float = 0.5) -> Iterator[None]:
    """A byte task whose completed count is `measure()`, sampled while the body runs."""
    stop = threading.Event()
    with byte_task(description, total) as update:
        progress = _attached[-1] if _attached else None

        def poll() -> None:
            while not stop.wait(every):
                if progress is not None:
                    for task in progress.tasks:
                        if task.description == description and task.fields.get("bytes"):
                            progress.update(task.id, completed=min(measure(), total))

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            update()


def resident_growth() -> Callable[[], int]:
    """Bytes of resident memory this process gained since the call: what a load has filled."""
    import psutil

    process = psutil.Process()
    start = process.memory_info().rss
    return lambda: max(0, process.memory_info().rss - start)


def bytes_on_disk(folder: Path) -> Callable[[], int]:
    def measure() -> int:
        try:
            return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        except OSError:
            return 0

    return measure
