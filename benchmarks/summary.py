"""All `make bench` figures in one JSON and one chart, with each target of the benchmarks issue checked.

Reads what the other benchmarks wrote into build/bench/ in the same run (versus_navig.json,
encoders-<preset>.json, and each performance lever's: caches.json, ocr_once.json,
detector_single_pass.json, shared_lora.json, vision_cache.json) and writes summary.json + summary.png.
Run: `python -m benchmarks.summary` (last step of `make bench`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

TARGETS = {
    # NAVIG's rules on both sides: meant to be what the serving architecture gains (the work counts in
    # versus_navig.json say whether both sides cut the same crops)
    "reference_c16_vs_baseline": (">=", 4.0, "served `reference` at concurrency 16 vs the baseline"),
    # the product's gain: serving architecture and less work (its work counts are in versus_navig.json)
    "throughput_c16_vs_baseline": (">=", 10.0, "served `fast` at concurrency 16 vs the baseline"),
    "p50_c1_vs_baseline": ("<=", 1 / 3, "p50 latency at concurrency 1 vs the baseline"),
    "serving_overhead_c1": ("<=", 0.10, "serving overhead at concurrency 1 (share of in-process latency)"),
    "min_served_encoder_speedup_b8": (">=", 2.0, "slowest served encoder vs PyTorch eager at batch 8"),
}


def read(bench: Path, name: str) -> dict[str, Any]:
    return json.loads((bench / f"{name}.json").read_text())


def figures(bench: Path, preset: str) -> dict[str, Any]:
    versus = read(bench, "versus_navig")
    encoders = read(bench, f"encoders-{preset}")
    base, limit = versus["baseline"], versus["in_process"]
    served = {s["concurrency"]: s for s in versus["served"]}
    reference = {s["concurrency"]: s for s in versus["served_reference"]}
    runs = cpu_runs(versus)
    out: dict[str, Any] = {
        "throughput_vs_baseline": {
            c: s["throughput_rps"] / base["throughput_rps"] for c, s in served.items()
        },
        "reference_throughput_vs_baseline": {
            c: s["throughput_rps"] / base["throughput_rps"] for c, s in reference.items()
        },
        "generations_per_photo": {
            side: work["mean_per_photo"]["generations"]
            for side, work in (
                ("baseline", base["work"]),
                ("served reference", versus["served_reference_work"]),
                ("served fast", versus["served_work"]),
            )
        },
        "fast_vs_reference_same_country": versus["agreement"],
        "reference_vs_baseline_crops": versus["same_crops"],
        "served_b8_speedups": {
            f"{r['encoder']} {r.get('precision', 'fp32')}": r.get("served_speedup")
            for r in encoders["results"]
            if r["batch"] == 8 and r.get("served_speedup")
        },
        "cpu_s_per_photo": {name: sum(run["cpu_s_per_photo"].values()) for name, run in runs.items()},
        "cpu_utilisation": {name: run["cpu_utilisation"] for name, run in runs.items()},
        "levers": levers(bench, encoders),
    }
    if 16 in served:
        out["throughput_c16_vs_baseline"] = out["throughput_vs_baseline"][16]
    if 16 in reference:
        out["reference_c16_vs_baseline"] = out["reference_throughput_vs_baseline"][16]
    if 1 in served:
        out["p50_c1_vs_baseline"] = served[1]["p50_ms"] / base["p50_ms"]
        out["serving_overhead_c1"] = served[1]["p50_ms"] / limit["p50_ms"] - 1
    fp32 = [v for k, v in out["served_b8_speedups"].items() if k.endswith(" fp32")]
    if fp32:
        out["min_served_encoder_speedup_b8"] = min(fp32)
    return out


def levers(bench: Path, encoders: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each performance lever of issue 15, on against off in this run: `effect` is on/off of its main
    figure (above 1 is better), `kept` whether it outputs the same, and the figures it rests on."""
    caches = {r["setup"]: r for r in read(bench, "caches")["results"]}
    ocr = read(bench, "ocr_once")["results"]
    single = read(bench, "detector_single_pass")
    lora = read(bench, "shared_lora")
    vision = read(bench, "vision_cache")
    served = {
        (r["encoder"].split(" ")[0], r.get("precision", "fp32")): r
        for r in encoders["results"]
        if r["batch"] == 8
    }
    int8 = {
        name: {
            "served_ms_fp32": served[(name, "fp32")].get("served_ms"),
            "served_ms_int8": served[(name, "int8")].get("served_ms"),
            "served_speedup_int8_vs_eager": served[(name, "int8")].get("served_speedup"),
            "gate": served[(name, "int8")].get("gate"),
        }
        for name, precision in served
        if precision == "int8"
    }
    timing = single["timing"]
    return {
        "result cache (repeated photos)": {
            "effect": caches["result"]["photos_per_s"] / caches["none"]["photos_per_s"],
            "figure": "photos/s, result cache vs none",
            "cached_share": caches["result"]["cached_share"],
        },
        "Triton response cache (repeated photos, result cache off)": {
            "effect": caches["triton"]["photos_per_s"] / caches["none"]["photos_per_s"],
            "figure": "photos/s, Triton's response cache vs none",
            "hits": caches["triton"]["triton_cache_hits"],
        },
        "OCR once per photo": {
            "effect": ocr["every_crop"]["cpu_ms_mean"] / ocr["photo_first"]["cpu_ms_mean"],
            "figure": "Triton CPU ms of OCR per photo, every crop / photo first",
            "ocr_calls": {k: ocr[k]["calls_per_photo"]["ocr"] for k in ("every_crop", "photo_first")},
            "lines_vs_every_crop": ocr["photo_first"]["agreement_with_every_crop"],
        },
        "single-pass detector": {
            "effect": timing["per_prompt"]["ort_ms"]["8"] / timing["single_pass"]["ort_ms"]["8"],
            "figure": "ONNX Runtime ms at batch 8, three passes / one",
            "agreement_f1": single["agreement"]["overall"]["f1"],
        },
        "one base, two adapters": {
            "effect": lora["adapter_vs_merged_throughput"],
            "figure": "calls/s at c=16 on a mixed load, adapter / merged",
            "memory_pss_ratio": lora["adapter_vs_merged_pss"],
            "identical_reasoner_tokens": lora["agreement"]["identical_rate"],
        },
        "one vision pass per image (vision cache)": {
            "effect": vision["speedup"],
            "figure": "`reference` VLM rows/s, vision cache on / off",
            "identical_rows": f"{vision['identical_rows']}/{vision['rows']}",
            "vision_passes": vision["on"]["vision_passes"],
        },
        "int8 encoders": {
            "effect": min(
                (v["served_ms_fp32"] / v["served_ms_int8"] for v in int8.values() if v["served_ms_int8"]),
                default=None,
            ),
            "figure": "served ms at batch 8, fp32 / int8 (the least improved encoder)",
            "encoders": int8,
        },
    }


def cpu_runs(versus: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs that recorded CPU seconds per photo, by label: at saturation, throughput is cores / that."""
    runs = {"baseline": versus["baseline"], "in-process": versus["in_process"]}
    runs |= {f"reference c={s['concurrency']}": s for s in versus["served_reference"]}
    runs |= {f"fast c={s['concurrency']}": s for s in versus["served"]}
    return {name: run for name, run in runs.items() if "cpu_s_per_photo" in run}


def stacked_cpu(runs: dict[str, dict[str, Any]], parts: int = 6) -> dict[str, list[float]]:
    """Per busiest process, its CPU seconds per photo in each run; the rest is 'other'."""
    per_run = [run["cpu_s_per_photo"] for run in runs.values()]
    names = {name for cpu in per_run for name in cpu}
    busiest = sorted(names, key=lambda name: -max(cpu.get(name, 0.0) for cpu in per_run))[:parts]
    out = {name: [cpu.get(name, 0.0) for cpu in per_run] for name in busiest}
    out["other"] = [sum(v for k, v in cpu.items() if k not in busiest) for cpu in per_run]
    return out


def verdicts(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, (op, bound, what) in TARGETS.items():
        value = found.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"what": what, "target": f"{op} {bound:.3g}", "value": value, "met": met}
    return out


def plot(bench: Path, preset: str, path: Path, checked: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    versus = read(bench, "versus_navig")
    encoders = read(bench, f"encoders-{preset}")["results"]
    fig, grid = plt.subplots(2, 3, figsize=(18, 9))
    axes = grid.ravel()

    levels = [s["concurrency"] for s in versus["served"]]
    x = np.arange(len(levels))
    reference = [s["throughput_rps"] for s in versus["served_reference"]]
    axes[0].bar(x - 0.27, [versus["baseline"]["throughput_rps"]] * len(levels), 0.27, label="NAVIG baseline")
    axes[0].bar(x, reference, 0.27, label="served `reference` (NAVIG's rules)")
    axes[0].bar(x + 0.27, [s["throughput_rps"] for s in versus["served"]], 0.27, label="served `fast`")
    axes[0].set_xticks(x, [f"c={c}" for c in levels])
    axes[0].set(title="end-to-end throughput", ylabel="photos/s")
    axes[0].legend(fontsize=8, loc="lower right")

    c1 = next(s for s in versus["served"] if s["concurrency"] == levels[0])
    names = ["baseline", "in-process\n(fast)", f"served fast\nc={levels[0]}"]
    axes[1].bar(
        names,
        [versus["baseline"]["p50_ms"], versus["in_process"]["p50_ms"], c1["p50_ms"]],
        color=["C0", "C2", "C1"],
    )
    axes[1].set(title="p50 latency, one photo at a time", ylabel="ms")

    rows = [r for r in encoders if r.get("served_ms")]
    labels = [f"{r['encoder'].split(' ')[0]} {r.get('precision', 'fp32')}\nb{r['batch']}" for r in rows]
    xs = np.arange(len(rows))
    axes[2].bar(xs - 0.2, [r["speedup"] for r in rows], 0.4, label="ONNX Runtime in-process")
    axes[2].bar(xs + 0.2, [r["served_speedup"] for r in rows], 0.4, label="served by Triton")
    axes[2].axhline(2.0, color="grey", linestyle="--", linewidth=1)
    axes[2].set_xticks(xs, labels, fontsize=7, rotation=30)
    axes[2].set(title="encoders: speed-up over PyTorch eager", ylabel="x")
    axes[2].legend(fontsize=8)

    effects = {
        name: lever["effect"] for name, lever in levers(bench, read(bench, f"encoders-{preset}")).items()
    }
    shown = {name: value for name, value in effects.items() if value}
    axes[3].barh(list(shown), list(shown.values()), color="C4")
    axes[3].axvline(1.0, color="grey", linestyle="--", linewidth=1)
    axes[3].tick_params(axis="y", labelsize=7)
    axes[3].set(title="performance levers: on / off (above 1: better)", xlabel="x")

    runs = cpu_runs(versus)
    bottom = np.zeros(len(runs))
    for part, heights in stacked_cpu(runs).items():
        axes[4].bar(list(runs), heights, bottom=bottom, label=part)
        bottom += heights
    axes[4].tick_params(axis="x", labelsize=7, labelrotation=30)
    axes[4].set(title="CPU seconds per photo, by process", ylabel="CPU s")
    axes[4].legend(fontsize=7)

    axes[5].axis("off")
    axes[5].set_title("targets")
    lines = [
        f"{'met' if row['met'] else 'NOT met' if row['met'] is False else 'not measured'}: {row['what']}\n"
        f"    wanted {row['target']}, measured {'-' if row['value'] is None else format(row['value'], '.3g')}"
        for row in checked.values()
    ]
    axes[5].text(0, 1, "\n\n".join(lines), va="top", fontsize=9, family="monospace", wrap=True)
    fig.suptitle(
        f"navig-serve vs a NAVIG-faithful baseline ({preset} preset, {versus['machine']['cpu']}, "
        f"{versus['machine']['cores']} cores)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bench", type=Path, default=Path("build/bench"))
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    found = figures(args.bench, args.preset)
    checked = verdicts(found)
    (args.bench / "summary.json").write_text(json.dumps({"figures": found, "targets": checked}, indent=1))
    plot(args.bench, args.preset, args.bench / "summary.png", checked)
    table = Table("target", "wanted", "measured", "met", title="benchmark targets")
    for row in checked.values():
        value = "-" if row["value"] is None else f"{row['value']:.3g}"
        met = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "not measured"}[row["met"]]
        table.add_row(row["what"], row["target"], value, met)
    console = Console()
    console.print(table)
    effects = Table("lever", "on / off", "of", title="performance levers (issue 15)")
    for name, lever in found["levers"].items():
        effect = "-" if lever["effect"] is None else f"{lever['effect']:.2f}x"
        effects.add_row(name, effect, lever["figure"])
    console.print(effects)


if __name__ == "__main__":
    main()
