"""Bounded concurrency with a bounded queue: overload is refused at once, never buffered forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from navig.orchestrator.errors import Overloaded
from navig.orchestrator.metrics import Metrics


class Admission:
    def __init__(self, max_concurrency: int, max_queue: int, metrics: Metrics) -> None:
        self._slots = asyncio.Semaphore(max_concurrency)
        self._max_queue = max_queue
        self._waiting = 0
        self._metrics = metrics
        self.max_concurrency = max_concurrency

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Holds one of the running slots; raises Overloaded when the queue is already full."""
        if self._slots.locked():
            if self._waiting >= self._max_queue:
                raise Overloaded(
                    f"at capacity ({self.max_concurrency} running, {self._waiting} queued); retry later"
                )
            self._waiting += 1
            self._metrics.queued.inc()
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
                self._metrics.queued.dec()
        else:
            await self._slots.acquire()
        self._metrics.in_flight.inc()
        try:
            yield
        finally:
            self._metrics.in_flight.dec()
            self._slots.release()
