"""One base, two adapters: the REASONER merged into its own model vs as a LoRA adapter on `vlm`.

Two VLM-only repositories of the same `--preset` checkpoints, each served by the real Triton in turn:
`merged` (`vlm` + `reasoner`, two processes, two copies of the weights; export `vlm.reasoner: merged`)
and `adapter` (`vlm` with the REASONER adapter beside its base, one process; `vlm.reasoner: adapter`).
For each:

- agreement: the REASONER's tokens on the first `--agreement-photos` sample photos (as the
  Geolocator sends them: downscaled to 640 px), adapter vs merged: the share of photos with
  identical tokens, and where the first difference falls on the others (merged and unmerged LoRA
  differ by float rounding only);
- throughput at `--concurrency` (16) of a mixed load like the Geolocator's: per REASONER call three
  base calls with images (two describer crops, one GUESSER with its JSON schema), `--requests` calls
  in all, tokens and calls per second;
- CPU seconds the model processes spent on the mixed load, per call: the work, which a busy machine
  does not distort the way it distorts wall-clock throughput;
- memory: RSS and PSS (each shared page split between its sharers) of the model processes (Triton's
  python-backend stubs of `vlm` / `reasoner`) after the load.

Run: `python -m benchmarks.shared_lora` (writes build/bench/shared_lora.json).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as grpcclient
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks.cpu_time import model_of
from benchmarks.presets import checkpoints_of, source_digest
from navig.client.profile.machine import machine
from navig.export.build import build
from navig.export.demo_checkpoints import SPEC_FILE
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.export.spec import load_spec
from navig.model_repository import contract
from navig.orchestrator import prompts
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.images import downscale
from navig.orchestrator.triton_client import infer_inputs, vlm_inputs

VARIANTS = ("merged", "adapter")  # export `vlm.reasoner`
VLM_SIDE = 640  # the Geolocator's `vlm_image_max_side`


def repositories(checkpoints: Path, root: Path, preset: str, console: Console) -> dict[str, Path]:
    """The preset's VLMs exported twice beside its full repository (the VLMs alone: the other models
    play no part here), `vlm.reasoner: merged` and `adapter`; again when the model repository's source
    changed."""
    folders = {variant: root / f"repository-{preset}-vlms-{variant}" for variant in VARIANTS}
    spec = load_spec(checkpoints / SPEC_FILE)
    assert spec.vlm is not None
    for variant, folder in folders.items():
        stamp = folder / ".source-digest"
        if stamp.is_file() and stamp.read_text() == source_digest():
            continue
        vlm = spec.vlm.model_copy(update={"reasoner": variant})
        only_vlms = {"output": folder, "ocr": None, "detector": None, "clip": None, "vlm": vlm}
        with Progress(console=console, transient=True) as progress:
            progress.console.print(f"exporting the {preset} VLMs, reasoner {variant}...")
            build(spec.model_copy(update=only_vlms), progress)
        stamp.write_text(source_digest())
    return folders


class Caller:
    """REASONER and base calls to one server, the REASONER where the repository serves it."""

    def __init__(self, url: str, variant: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.variant = variant

    def reasoner(self, image: np.ndarray, max_tokens: int) -> list[int]:
        if self.variant == "merged":
            return self._call(contract.REASONER, vlm_inputs(prompts.REASONER, image, max_tokens, None))
        inputs = vlm_inputs(prompts.REASONER, image, max_tokens, None, contract.REASONER_ADAPTER)
        return self._call(contract.VLM, inputs)

    def base(self, prompt: str, image: np.ndarray, max_tokens: int, schema: str | None = None) -> list[int]:
        adapter = "" if self.variant == "adapter" else None  # the same inputs as REASONER rows: one batch
        return self._call(contract.VLM, vlm_inputs(prompt, image, max_tokens, schema, adapter))

    def _call(self, model: str, inputs: dict[str, np.ndarray]) -> list[int]:
        result = self.client.infer(model, infer_inputs(inputs), client_timeout=600)
        return result.as_numpy(contract.VLM_TOKEN_IDS).reshape(-1).tolist()


def mixed_load(photos: list[np.ndarray], requests: int, tokens: int) -> list[Callable[[Caller], list[int]]]:
    """`requests` calls, in groups of four: REASONER on a photo, two describer crops, the GUESSER."""
    guess = prompts.guesser_prompt("The signs are in Portuguese and the houses are whitewashed.", [])
    calls: list[Callable[[Caller], list[int]]] = []
    for k in range(requests):
        photo = photos[(k // 4) % len(photos)]
        h, w = photo.shape[:2]
        crop = photo[h // 4 : 3 * h // 4, (k % 2) * w // 2 : (k % 2 + 1) * w // 2]
        calls.append(
            [
                lambda c, p=photo: c.reasoner(p, tokens),
                lambda c, p=crop: c.base(prompts.DESCRIBE["house"], p, tokens),
                lambda c, p=crop: c.base(prompts.DESCRIBE["road sign"], p, tokens),
                lambda c, p=photo: c.base(guess, p, prompts.GUESS_MAX_TOKENS, prompts.GUESS_SCHEMA_JSON),
            ][k % 4]
        )
    return calls


def model_processes(server: EmbeddedTriton) -> dict[str, psutil.Process]:
    """The VLM stub processes by model name."""
    assert server.pid is not None
    children = psutil.Process(server.pid).children(recursive=True)
    return {m: child for child in children if (m := model_of(child.cmdline())) in contract.VLM_MODELS}


def model_memory(server: EmbeddedTriton) -> dict[str, dict[str, float]]:
    """MiB of RSS and PSS per VLM stub process."""
    out: dict[str, dict[str, float]] = {}
    for model, process in model_processes(server).items():
        info = process.memory_full_info()
        out[model] = {"rss_mib": info.rss / 2**20, "pss_mib": info.pss / 2**20}
    return out


def cpu_seconds(server: EmbeddedTriton) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in model_processes(server).values())


def measure(
    repository: Path, variant: str, photos: list[np.ndarray], args: argparse.Namespace, progress: Progress
) -> dict:
    log = args.root / f"shared_lora-{variant}.tritonserver.log"
    with EmbeddedTriton(TritonConfig(repository, ports=TritonPorts.free(), log_file=log)) as server:
        caller = Caller(server.grpc_url, variant)
        load = mixed_load(photos, args.requests, args.max_tokens)
        for call in load[:4]:  # warm-up: each kind once
            call(caller)
        checked = photos[: args.agreement_photos]
        task = progress.add_task(f"{variant}: REASONER on {len(checked)} photos", total=len(checked))
        with ThreadPoolExecutor(args.concurrency) as pool:

            def reason(photo: np.ndarray) -> list[int]:
                ids = caller.reasoner(photo, args.reasoner_tokens)
                progress.advance(task)
                return ids

            reasoning = list(pool.map(reason, checked))
            task = progress.add_task(f"{variant}: mixed load, c={args.concurrency}", total=len(load))

            def run(call: Callable[[Caller], list[int]]) -> int:
                count = len(call(caller))
                progress.advance(task)
                return count

            started, cpu_before = time.perf_counter(), cpu_seconds(server)
            generated = sum(pool.map(run, load))
            seconds, cpu = time.perf_counter() - started, cpu_seconds(server) - cpu_before
        memory = model_memory(server)
    return {
        "reasoner_tokens": reasoning,
        "calls": len(load),
        "generated_tokens": generated,
        "seconds": seconds,
        "calls_per_s": len(load) / seconds,
        "tokens_per_s": generated / seconds,
        "model_cpu_s_per_call": cpu / len(load),
        "memory": memory,
        "rss_mib": sum(m["rss_mib"] for m in memory.values()),
        "pss_mib": sum(m["pss_mib"] for m in memory.values()),
        "model_processes": len(memory),
    }


def agreement(merged: list[list[int]], adapter: list[list[int]]) -> dict:
    """Identical-token share and, where they differ, the first differing position."""
    divergences = []
    for a, b in zip(merged, adapter, strict=True):
        if a != b:
            divergences.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))))
    total = sum(len(a) for a in merged)
    same = sum(x == y for a, b in zip(merged, adapter, strict=True) for x, y in zip(a, b))
    return {
        "photos": len(merged),
        "identical_photos": len(merged) - len(divergences),
        "identical_rate": (len(merged) - len(divergences)) / len(merged),
        "same_position_token_rate": same / total if total else 1.0,
        "first_divergence": divergences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small", choices=["tiny", "small"])
    parser.add_argument("--root", type=Path, default=Path("build/bench"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--requests", type=int, default=32, help="calls in the mixed load (1 REASONER : 3 base)"
    )
    parser.add_argument("--agreement-photos", type=int, default=8, help="photos of the REASONER check")
    parser.add_argument("--max-tokens", type=int, default=32, help="free-text budget in the mixed load")
    parser.add_argument("--reasoner-tokens", type=int, default=64, help="budget of the agreement check")
    args = parser.parse_args()
    console = Console()
    repos = repositories(checkpoints_of(args.preset, args.root, console), args.root, args.preset, console)
    photos = [
        downscale(
            np.asarray(Image.open(SAMPLES_DIR / s.file).convert("RGB")), VLM_SIDE, contract.MIN_IMAGE_SIDE
        )
        for s in load_samples(SAMPLES_DIR)
    ]
    with Progress(console=console, transient=True) as progress:
        results = {variant: measure(repos[variant], variant, photos, args, progress) for variant in VARIANTS}
    merged, adapter = results["merged"], results["adapter"]
    report = {
        "machine": machine(),
        "preset": args.preset,
        "concurrency": args.concurrency,
        "mix": "1 REASONER : 2 describer crops : 1 GUESSER (JSON schema), images on every call",
        "agreement": agreement(merged.pop("reasoner_tokens"), adapter.pop("reasoner_tokens")),
        "reasoner_tokens": args.reasoner_tokens,
        "results": results,
        "adapter_vs_merged_throughput": adapter["calls_per_s"] / merged["calls_per_s"],
        "adapter_vs_merged_pss": adapter["pss_mib"] / merged["pss_mib"],
        "adapter_vs_merged_cpu_per_call": adapter["model_cpu_s_per_call"] / merged["model_cpu_s_per_call"],
        "load_average": os.getloadavg(),  # other work on the machine: wall-clock figures suffer from it
    }
    out = args.root / "shared_lora.json"
    out.write_text(json.dumps(report, indent=2))
    table = Table(
        "", "model processes", "calls/s", "tokens/s", "model CPU s/call", "RSS MiB", "PSS MiB",
        title=f"REASONER merged vs adapter on vlm, {args.preset} preset, c={args.concurrency}",
    )  # fmt: skip
    for variant, r in results.items():
        table.add_row(
            variant, str(r["model_processes"]), f"{r['calls_per_s']:.2f}", f"{r['tokens_per_s']:.0f}",
            f"{r['model_cpu_s_per_call']:.2f}",
            f"{r['rss_mib']:.0f}", f"{r['pss_mib']:.0f}",
        )  # fmt: skip
    console.print(table)
    a = report["agreement"]
    console.print(
        f"REASONER tokens, adapter vs merged: {a['identical_photos']}/{a['photos']} photos identical over "
        f"{args.reasoner_tokens} tokens; first differences at {a['first_divergence'] or 'none'}; {out}"
    )


if __name__ == "__main__":
    main()
