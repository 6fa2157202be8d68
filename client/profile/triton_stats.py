"""Per-model queue and compute time from Triton's statistics API, as the difference over one level.

Triton keeps cumulative counters per model (requests, executions, and nanoseconds spent queued,
moving inputs, computing, moving outputs). A snapshot before and after a level, subtracted, says
where that level's time went inside Triton, and how well requests were batched (requests per
execution).
"""

from __future__ import annotations

import time
from typing import Any

import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

Snapshot = dict[str, dict[str, int]]  # model -> counter -> value
PARTS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def snapshot(url: str) -> Snapshot:
    """Cumulative counters of every model Triton serves; {} when Triton cannot be asked."""
    try:
        client = triton_grpc.InferenceServerClient(url)
        try:
            stats: dict[str, Any] = client.get_inference_statistics(as_json=True)
        finally:
            client.close()
    except InferenceServerException:
        return {}
    out: Snapshot = {}
    for model in stats.get("model_stats", []):
        counters = {
            "inferences": int(model.get("inference_count", 0)),
            "executions": int(model.get("execution_count", 0)),
        }
        for part in PARTS:
            entry = model.get("inference_stats", {}).get(part, {})
            counters[f"{part}_count"] = int(entry.get("count", 0))
            counters[f"{part}_ns"] = int(entry.get("ns", 0))
        name = model["name"]
        if name in out:  # several versions: add up
            counters = {k: v + out[name].get(k, 0) for k, v in counters.items()}
        out[name] = counters
    return out


def settled_snapshot(url: str, interval_s: float = 0.1, attempts: int = 20) -> Snapshot:
    """A snapshot once the counters stop moving: Triton counts a request just after answering it."""
    last = snapshot(url)
    for _ in range(attempts):
        time.sleep(interval_s)
        current = snapshot(url)
        if current == last:
            break
        last = current
    return last


def difference(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float]]:
    """Models that did work between the snapshots: requests, executions, mean batch, mean ms per request."""
    out: dict[str, dict[str, float]] = {}
    for model, end in sorted(after.items()):
        start = before.get(model, {})
        delta = {k: v - start.get(k, 0) for k, v in end.items()}
        requests = delta["success_count"] + delta["fail_count"]
        if requests <= 0:
            continue

        def ms(part: str) -> float:
            return delta[f"{part}_ns"] / 1e6 / requests  # noqa: B023 - used within this iteration

        out[model] = {
            "requests": requests,
            "failed": delta["fail_count"],
            "executions": delta["executions"],
            "mean_batch": delta["inferences"] / delta["executions"] if delta["executions"] else 0.0,
            "queue_ms": ms("queue"),
            "compute_input_ms": ms("compute_input"),
            "compute_infer_ms": ms("compute_infer"),
            "compute_output_ms": ms("compute_output"),
            "compute_ms": ms("compute_input") + ms("compute_infer") + ms("compute_output"),
        }
    return out
