"""A content-addressed cache of Locate answers: the same photo, options and models get the stored answer.

The key is a sha256 over the image bytes, the run options that shape the answer, the Triton model
versions the health check read and the prompts' version and sources. A stored answer is what a new
run would produce: the VLMs decode greedily and the encoders are deterministic. Server settings are
not in the key because they are fixed for the life of the process, and so is the cache (memory only,
so a restart with other code, prompts or settings starts empty). The return flags are not in it
either: the outcome is stored whole and filtered when answered.

Only clean outcomes are stored. A failed run stores nothing, and neither does a degraded one (an
answer with `degraded` entries): a Triton fault, a map backend timeout or a tight deadline is
transient, and caching its answer would make the fault stick for every later ask of that photo.

A model reload is the danger: a stored answer outlives the weights that made it. Versions are in
the key, so a new version misses. A reload under the same version number is caught when Triton
went down and came back, because health reads the versions again then and a fresh read empties the
cache. A reload the health check never saw as downtime (an external Triton's model control API) is
bounded by the TTL only. That, and benchmarks or `navig profile` that repeat photos to measure the
pipeline, is why the cache is off unless `result_cache_entries` is set.

Identical requests that arrive while one is running share its run (single flight): they wait, without
an admission slot, and answer from the cache once it is stored; if it is not (the run failed or was
degraded), each runs on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from cachetools import TTLCache

from navig.orchestrator import navig_reference, prompts
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.options import RunOptions
from navig.orchestrator.results import Outcome

# RunOptions fields that only filter the response: the stored outcome serves every value of them.
RESPONSE_ONLY = frozenset({"return_reasoning", "return_evidence"})


@cache
def prompts_digest() -> str:
    """PROMPTS_VERSION and a sha256 of the prompt sources, so an edit that forgot the bump still misses
    (matters once a store outlives a process; in memory a restart already empties it)."""
    digest = hashlib.sha256(prompts.PROMPTS_VERSION.encode())
    for module in (prompts, navig_reference):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()


def cache_key(image: bytes, options: RunOptions, versions: Mapping[str, str]) -> str:
    """sha256 of the image, the answer-shaping options, the model versions and the prompts."""
    shaping = {k: v for k, v in dataclasses.asdict(options).items() if k not in RESPONSE_ONLY}
    context = {"options": shaping, "models": dict(sorted(versions.items())), "prompts": prompts_digest()}
    digest = hashlib.sha256(image)
    digest.update(json.dumps(context, sort_keys=True, default=sorted).encode())
    return digest.hexdigest()


def cacheable(outcome: Outcome) -> bool:
    return not outcome.degraded


@dataclass
class Lookup:
    """A hit (`outcome` set) or a miss whose run this request makes; `store` keeps a clean outcome."""

    outcome: Outcome | None
    produced: Outcome | None = None

    def store(self, outcome: Outcome) -> None:
        self.produced = outcome


class ResultCache:
    """LRU with a TTL (cachetools' TTLCache) plus the runs in flight; used on the event loop only."""

    def __init__(
        self, entries: int, ttl_s: float, metrics: Metrics, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = entries > 0
        self._store: TTLCache[str, Outcome] = TTLCache(max(entries, 1), ttl_s, timer=timer)
        self._running: dict[str, asyncio.Future[None]] = {}
        self._versions: Mapping[str, str] | None = None
        self._metrics = metrics

    def key(self, image: bytes, options: RunOptions, versions: Mapping[str, str]) -> str:
        """The request's key; a versions read other than the last one empties the cache first."""
        if versions is not self._versions:
            self._store.clear()
            self._versions = versions
            self._metrics.result_cache_entries.set(0)
        return cache_key(image, options, versions)

    @asynccontextmanager
    async def lookup(self, key: str, deadline: Deadline) -> AsyncIterator[Lookup]:
        """Yields a hit, or a miss whose caller runs the pipeline and `store`s its outcome."""
        shared = False
        running = self._running.get(key)
        if running is not None and key not in self._store:
            try:
                async with asyncio.timeout(deadline.remaining()):
                    await asyncio.shield(running)  # its caller going away must not cancel this one
            except TimeoutError:
                raise DeadlineExceeded("deadline exceeded") from None
            shared = True
        hit = self._store.get(key)
        if hit is not None:
            self._count("shared" if shared else "hit")
            yield Lookup(hit)
            return
        self._count("miss")
        lead = not shared  # after a run that stored nothing, the requests that waited for it run alone
        if lead:
            self._running[key] = asyncio.get_running_loop().create_future()
        lookup = Lookup(None)
        try:
            yield lookup
        finally:
            if lookup.produced is not None and cacheable(lookup.produced):
                self._store[key] = lookup.produced
            self._store.expire()
            self._metrics.result_cache_entries.set(len(self._store))
            if lead:
                self._running.pop(key).set_result(None)

    def _count(self, outcome: str) -> None:
        self._metrics.result_cache.labels(outcome).inc()
