"""VLM throughput under concurrency: N generations at once to `vlm` through Triton, tokens/s.

Each round sends `concurrency` requests at the same moment (image + prompt, `--max-tokens`
budget), waits for all, and repeats `--rounds` times; tokens/s = generated tokens / wall time.
With dynamic batching Triton hands concurrent requests to one batched `generate`, so tokens/s
should grow with concurrency instead of staying flat. Run against any repository with a `vlm`
model, e.g. `python -m benchmarks.vlm_batching --model-repository build/model_repository`.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from rich.console import Console
from rich.table import Table

from navig.client.profile.machine import machine
from navig.export.vlm import parity_images
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts

PROMPTS = ("Describe the place in this photo.", "Which country is this? Explain.", "Read the signs.")


def request(url: str, n: int, max_tokens: int, batched: bool) -> int:
    """One generation; returns how many tokens came back."""
    image = parity_images()[n % 2]
    values = {
        contract.VLM_PROMPT: np.array([PROMPTS[n % len(PROMPTS)].encode()], dtype=np.object_),
        contract.VLM_IMAGE: image,
        contract.VLM_MAX_TOKENS: np.array([max_tokens], np.int32),
    }
    inputs = []
    for name, value in values.items():
        value = value[None] if batched else value
        dtype = "BYTES" if value.dtype == np.object_ else "UINT8" if value.dtype == np.uint8 else "INT32"
        inputs.append(grpcclient.InferInput(name, list(value.shape), dtype))
        inputs[-1].set_data_from_numpy(value)
    with grpcclient.InferenceServerClient(url) as client:
        return client.infer(contract.VLM, inputs).as_numpy(contract.VLM_TOKEN_IDS).size


def tokens_per_second(url: str, concurrency: int, rounds: int, max_tokens: int, batched: bool) -> dict:
    tokens, started = 0, time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for r in range(rounds):
            jobs = [
                pool.submit(request, url, r * concurrency + k, max_tokens, batched)
                for k in range(concurrency)
            ]
            tokens += sum(job.result() for job in jobs)
    seconds = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("build/bench/vlm_batching.json"))
    args = parser.parse_args()
    console = Console()
    with EmbeddedTriton(TritonConfig(args.model_repository, ports=TritonPorts.free())) as server:
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            batched = client.get_model_config(contract.VLM).config.max_batch_size > 0
        request(server.grpc_url, 0, args.max_tokens, batched)  # warm-up
        results = [
            tokens_per_second(server.grpc_url, c, args.rounds, args.max_tokens, batched)
            for c in args.concurrency
        ]
    table = Table("concurrency", "tokens", "seconds", "tokens/s", title=f"vlm, max_batch_size>0: {batched}")
    for r in results:
        table.add_row(
            str(r["concurrency"]), str(r["tokens"]), f"{r['seconds']:.2f}", f"{r['tokens_per_s']:.1f}"
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "batched": batched, "results": results}, indent=2))


if __name__ == "__main__":
    main()
