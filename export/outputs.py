"""Reuse an output folder whose inputs are unchanged, else rebuild it, safely beside other processes.

One rule for `navig export demo-checkpoints`, `navig export build` (hence `make repository`) and the
test session (tests/conftest.py), which share build/checkpoints and build/model_repository:

- the output is reused when its recorded content fingerprint matches (`fingerprint.py`: spec,
  checkpoint bytes, navig version and sources, library versions) and the files it records are all
  there, unchanged (`build.reuse` checks each artifact's size, `reused_demo_checkpoints` every file's
  sha256); otherwise it is rebuilt in place, the record removed first so a half-written folder is
  never reused;
- a lock file beside the output (`.<name>.lock`) serialises the processes: readers hold it shared
  while they use the folder (a test session for its whole run), a rebuild holds it exclusive, so
  two processes never export into one folder at once and a folder is never rewritten under a
  session that serves it. A second process that finds a fresh export waits for it and reuses it.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def lock_file(output: Path) -> Path:
    """`.<name>.lock` beside `output`: outside it, so it is neither content nor removed with it."""
    return output.parent / f".{output.name}.lock"


@contextmanager
def reused_or_built(
    output: Path,
    reuse: Callable[[], T | None],
    build: Callable[[], T],
    *,
    force: bool = False,
    wait: bool = True,
    waiting: Callable[[], object] = lambda: None,
) -> Iterator[tuple[T, bool] | None]:
    """Yields (what `reuse` or `build` returned, whether it was reused) while holding `output`
    shared: no other process rewrites it until the block ends.

    `reuse()` gives the recorded result when the output matches its inputs, else None; `build()`
    (re)writes the output. `force` builds without asking `reuse`. A rebuild waits for the readers
    of `output` to finish (`waiting` is called first, to say so) or, with `wait=False`, yields None
    at once so the caller can build a private copy elsewhere."""
    path = lock_file(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # waits only while another process rebuilds it
        result = None if force else reuse()
        if result is None:
            # SH -> EX is not atomic (flock(2)): the lock is dropped first, so another process may
            # rebuild meanwhile; asking `reuse` again under EX catches that.
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield None
                    return
                waiting()
                fcntl.flock(handle, fcntl.LOCK_EX)
            result = None if force else reuse()
            reused = result is not None
            if result is None:
                result = build()
            fcntl.flock(handle, fcntl.LOCK_SH)
        else:
            reused = True
        yield result, reused
