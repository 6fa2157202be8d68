"""Keeps the embedded Triton alive under `navig serve`: restart with backoff, give up loudly.

When Triton exits on its own (a crash, the OOM killer, a SIGKILL), the supervisor logs the exit
code and Triton's last log lines, reaps its python stubs, and starts it again on the same ports
after an exponential backoff. Health follows by itself (`health.TritonHealth` polls readiness):
NOT_SERVING while Triton is down, SERVING once it is back; the orchestrator keeps running.

Restarts are limited the way systemd limits them (StartLimitBurst in StartLimitIntervalSec):
more than `max_restarts` within `window_s` and `run` raises `TritonGaveUp`, so that `navig serve`
exits non-zero and whatever supervises it (Kubernetes, systemd) restarts the whole process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonLaunchError
from navig.orchestrator.metrics import Metrics

log = logging.getLogger("navig.triton")


class TritonGaveUp(RuntimeError):
    """Triton kept failing: more restarts than the policy allows; the message says how many and why."""


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 600.0
    backoff_s: float = 1.0  # before the first restart; doubles for each restart in the window
    max_backoff_s: float = 30.0

    def delay_s(self, recent_restarts: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(recent_restarts - 1, 0))


class TritonSupervisor:
    def __init__(
        self,
        triton: EmbeddedTriton,
        policy: RestartPolicy,
        metrics: Metrics | None = None,
        poll_s: float = 0.5,
    ) -> None:
        self.triton = triton
        self.policy = policy
        self.metrics = metrics
        self.poll_s = poll_s
        self.restarts = 0  # since start, for metrics and logs
        self._recent: deque[float] = deque()

    async def run(self) -> None:
        """Watches until cancelled (normal shutdown) or until it gives up (raises TritonGaveUp)."""
        while True:
            while self.triton.is_running():
                await asyncio.sleep(self.poll_s)
            code = self.triton.returncode
            await asyncio.to_thread(self.triton.stop)  # reaps the stubs, joins the log pump: not on the loop
            delay = self._record_exit(code)
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self.triton.start)
            except TritonLaunchError as exc:  # counted at the next pass: it is not running
                log.error("triton restart failed: %s", exc)
                continue
            log.info("triton restarted", extra={"fields": {"restarts": self.restarts}})

    def _record_exit(self, code: int | None) -> float:
        """Logs and counts an unexpected exit; returns the backoff before restarting."""
        tail = self.triton.log_tail(10)
        now = time.monotonic()
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.policy.window_s:
            self._recent.popleft()
        if len(self._recent) > self.policy.max_restarts:
            raise TritonGaveUp(
                f"Triton exited {len(self._recent)} times within {self.policy.window_s:.0f} s "
                f"(limit {self.policy.max_restarts} restarts); last exit code {code}; last log lines:\n{tail}"
            )
        self.restarts += 1
        if self.metrics is not None:
            self.metrics.triton_restarts.inc()
        delay = self.policy.delay_s(len(self._recent))
        log.error(
            "triton exited unexpectedly (code %s); restarting in %.1f s",
            code,
            delay,
            extra={"fields": {"restart": self.restarts, "log_tail": tail[-2000:]}},
        )
        return delay
