"""Profile results: per-level summaries, the JSON/CSV files, the PNG report, and A/B comparison.

Percentiles are numpy's linear interpolation over every successful request of a level; the JSON
keeps every sample, so any figure here can be recomputed from it.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from navig.client.profile.load import Level, Sample

PERCENTILES = (50, 90, 95, 99)
SEQUENTIAL = ("queue", "decode", "parallel", "guesser", "other")  # the request's critical path, in order
PARALLEL = ("reasoner", "searcher")  # run side by side: the longer one is on the critical path
COLORS = {
    "queue": "#bbbbbb",
    "decode": "#8dd3c7",
    "parallel": "#80b1d3",
    "guesser": "#fdb462",
    "other": "#eeeeee",
}


def distribution(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    out = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
    return out | {"mean": statistics.fmean(values), "max": max(values), "min": min(values)}


def summarise(
    level: Level, samples: list[Sample], duration_s: float, triton: dict[str, Any]
) -> dict[str, Any]:
    ok = [s for s in samples if s.status == "OK"]
    stages: dict[str, list[float]] = {}
    for s in ok:
        for stage, ms in s.stages_ms.items():
            stages.setdefault(stage, []).append(ms)
    return {
        "level": level.label,
        "concurrency": level.concurrency,
        "rate": level.rate,
        "requests": len(samples),
        "ok": len(ok),
        "errors": dict(Counter(s.status for s in samples if s.status != "OK")),
        "duration_s": duration_s,
        "throughput_rps": len(ok) / duration_s if duration_s > 0 else 0.0,
        "latency_ms": distribution([s.latency_ms for s in ok]),
        "ttfe_ms": distribution([s.ttfe_ms for s in ok if s.ttfe_ms is not None]),
        "ttft_ms": distribution([s.ttft_ms for s in ok if s.ttft_ms is not None]),
        "stages_ms": {stage: statistics.fmean(v) for stage, v in sorted(stages.items())},
        "critical_path_ms": critical_path(ok),
        "answered_by": dict(Counter(s.answered_by for s in ok if s.answered_by)),
        "triton": triton,
        "samples": [vars(s) for s in samples],
    }


def critical_path(ok: list[Sample]) -> dict[str, float]:
    """Mean time per sequential segment: queue, decode, REASONER || SEARCHER, GUESSER, and the rest
    (network, serialisation, the client); the segments add up to the mean latency."""
    if not ok or not ok[0].stages_ms:
        return {}
    parts: dict[str, list[float]] = {name: [] for name in SEQUENTIAL}
    for s in ok:
        st = s.stages_ms
        segments = {
            "queue": st.get("queue", 0.0),
            "decode": st.get("decode", 0.0),
            "parallel": max((st.get(p, 0.0) for p in PARALLEL), default=0.0),
            "guesser": st.get("guesser", 0.0),
        }
        segments["other"] = max(s.latency_ms - sum(segments.values()), 0.0)
        for name, ms in segments.items():
            parts[name].append(ms)
    return {name: statistics.fmean(v) for name, v in parts.items()}


def write_reports(report: dict[str, Any], out: Path) -> list[Path]:
    """`out`.json (everything), `out`.csv (a row per level), `out`.png; returns the paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".json"), out.with_suffix(".csv"), out.with_suffix(".png")]
    paths[0].write_text(json.dumps(report, indent=1))
    write_csv(report["levels"], paths[1])
    write_png(report, paths[2])
    return paths


def write_csv(levels: list[dict[str, Any]], path: Path) -> None:
    stages = sorted({stage for level in levels for stage in level["stages_ms"]})
    models = sorted({model for level in levels for model in level["triton"]})
    header = ["level", "concurrency", "rate", "requests", "ok", "errors", "throughput_rps"]
    header += [f"latency_{k}_ms" for k in ("p50", "p90", "p95", "p99", "mean")]
    header += [f"{kind}_{k}_ms" for kind in ("ttfe", "ttft") for k in ("p50", "p99")]
    header += [f"stage_{s}_ms" for s in stages]
    header += [f"{m}_{k}" for m in models for k in ("queue_ms", "compute_ms", "mean_batch")]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        for lv in levels:
            row = [
                lv["level"],
                lv["concurrency"],
                lv["rate"],
                lv["requests"],
                lv["ok"],
                sum(lv["errors"].values()),
                round(lv["throughput_rps"], 4),
            ]
            row += [_round(lv["latency_ms"].get(k)) for k in ("p50", "p90", "p95", "p99", "mean")]
            row += [_round(lv[f"{kind}_ms"].get(k)) for kind in ("ttfe", "ttft") for k in ("p50", "p99")]
            row += [_round(lv["stages_ms"].get(s)) for s in stages]
            row += [
                _round(lv["triton"].get(m, {}).get(k))
                for m in models
                for k in ("queue_ms", "compute_ms", "mean_batch")
            ]
            writer.writerow(row)


def write_png(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [lv for lv in report["levels"] if lv["ok"]]
    models = sorted({m for lv in levels for m in lv["triton"]})
    panels = 3 if models else 2
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.6))
    curve = axes[0]
    throughput = [lv["throughput_rps"] for lv in levels]
    for key, style in (("p50", "o-"), ("p99", "s--")):
        curve.plot(throughput, [lv["latency_ms"][key] for lv in levels], style, label=f"{key} latency")
    for lv, x in zip(levels, throughput):
        curve.annotate(
            lv["level"], (x, lv["latency_ms"]["p50"]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    curve.set(xlabel="throughput (requests/s)", ylabel="latency (ms)", title="latency vs throughput")
    curve.grid(alpha=0.3)
    curve.legend()

    bars, names = axes[1], [lv["level"] for lv in levels]
    if all(lv["critical_path_ms"] for lv in levels):
        bottom = np.zeros(len(levels))
        for part in SEQUENTIAL:
            heights = np.array([lv["critical_path_ms"].get(part, 0.0) for lv in levels])
            label = "reasoner || searcher" if part == "parallel" else part
            bars.bar(names, heights, bottom=bottom, label=label, color=COLORS[part])
            bottom += heights
        bars.set(title="where a request's time goes (mean)", ylabel="ms")
        bars.legend(fontsize=8)
    else:
        bars.bar(names, [lv["latency_ms"]["mean"] for lv in levels])
        bars.set(title="mean latency", ylabel="ms")

    if models:
        inside, width = axes[2], 0.8 / len(models)
        for i, model in enumerate(models):
            x = np.arange(len(levels)) + i * width
            queue = [lv["triton"].get(model, {}).get("queue_ms", 0.0) for lv in levels]
            compute = [lv["triton"].get(model, {}).get("compute_ms", 0.0) for lv in levels]
            inside.bar(x, compute, width, label=model, color=f"C{i % 10}")
            inside.bar(x, queue, width, bottom=compute, color=f"C{i % 10}", alpha=0.35, hatch="//")
        inside.bar([0], [0], color="white", edgecolor="grey", hatch="//", label="(hatched: queued)")
        inside.set_xticks(np.arange(len(levels)) + 0.4 - width / 2, names)
        inside.set(title="inside Triton per request: compute, then queue (mean)", ylabel="ms")
        inside.legend(fontsize=7, ncol=2)
    fig.suptitle(f"navig profile: {report['config']['target']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """B relative to A, level by level (matched by label): throughput and latency ratios."""
    by_label = {lv["level"]: lv for lv in a["levels"]}
    rows = []
    for lv in b["levels"]:
        base = by_label.get(lv["level"])
        if base is None:
            continue
        row: dict[str, Any] = {
            "level": lv["level"],
            "throughput_ratio": _ratio(lv["throughput_rps"], base["throughput_rps"]),
        }
        for key in ("p50", "p99"):
            row[f"latency_{key}_ratio"] = _ratio(lv["latency_ms"].get(key), base["latency_ms"].get(key))
        row["ttfe_p50_ratio"] = _ratio(lv["ttfe_ms"].get("p50"), base["ttfe_ms"].get("p50"))
        rows.append(row)
    return rows


def _ratio(new: float | None, old: float | None) -> float | None:
    return new / old if new is not None and old else None


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 3)
