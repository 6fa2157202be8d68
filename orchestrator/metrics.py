"""Prometheus metrics, one registry per server so several can live in one process (tests, demo)."""

from __future__ import annotations

from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Seconds: from a tiny model's millisecond hops to a 7B generation's minutes.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter = partial(Counter, registry=self.registry)
        histogram = partial(Histogram, buckets=BUCKETS, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        self.requests = counter("navig_requests", "Finished requests by gRPC status", ["method", "status"])
        self.latency = histogram("navig_request_seconds", "End-to-end latency", ["method"])
        self.stage_latency = histogram("navig_stage_seconds", "Pipeline stage latency", ["stage"])
        self.in_flight = gauge("navig_in_flight", "Requests running")
        self.queued = gauge("navig_queued", "Requests waiting for a slot")
        self.triton_latency = histogram("navig_triton_seconds", "Triton call latency", ["model"])
        self.triton_errors = counter("navig_triton_errors", "Failed Triton calls", ["model", "status"])
        self.tool_results = counter("navig_tool_results", "hit, miss or error", ["tool", "outcome"])
        self.triton_restarts = counter("navig_triton_restarts", "Embedded Triton restarts after it exited")
        self.auth_failures = counter("navig_auth_failures", "Calls refused by the token check", ["reason"])
        self.result_cache = counter(
            "navig_result_cache",
            "Locate answers: hit, shared (an identical run was in flight), miss",
            ["outcome"],
        )
        self.result_cache_entries = gauge("navig_result_cache_entries", "Answers held by the result cache")
        self._http = None

    def serve(self, host: str, port: int) -> int:
        """Starts the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
