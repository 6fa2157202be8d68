"""What abandoned generations cost: K VLM requests whose deadline passes, then the VLM's CPU seconds.

Each request asks `vlm` for `--max-tokens` tokens with a client deadline of `--deadline` seconds,
so every call ends in DEADLINE_EXCEEDED long before its generation could finish. Without
cancellation the model keeps generating for nobody; with it, the model sees Triton's request
cancellation between decode steps and stops. Reported: the VLM stub process's CPU seconds from
the moment the calls were abandoned until it is idle again, and how long that took.

    python -m benchmarks.cancellation --model-repository build/model_repository
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
from tritonclient.utils import InferenceServerException

from benchmarks.cpu_time import snapshot
from navig.client.profile.machine import machine
from navig.export.vlm import parity_images
from navig.model_repository import contract
from navig.orchestrator.embedded_triton import EmbeddedTriton, TritonConfig, TritonPorts
from navig.orchestrator.triton_client import infer_inputs

IDLE_CPU_S = 0.05  # CPU seconds per idle window below which the VLM process counts as idle
IDLE_WINDOW_S = 1.0


def _inputs(n: int, max_tokens: int) -> list[grpcclient.InferInput]:
    return infer_inputs(
        {
            contract.VLM_PROMPT: np.array([[f"Describe photo {n} in detail.".encode()]], dtype=np.object_),
            contract.VLM_IMAGE: parity_images()[n % 2][None],
            contract.VLM_MAX_TOKENS: np.array([[max_tokens]], np.int32),
            contract.VLM_JSON_SCHEMA: np.array([[b""]], dtype=np.object_),
        }
    )


def _call(url: str, n: int, max_tokens: int, deadline_s: float | None) -> str:
    with grpcclient.InferenceServerClient(url) as client:
        try:
            client.infer(contract.VLM, _inputs(n, max_tokens), client_timeout=deadline_s)
        except InferenceServerException as exc:
            return str(exc.status()).removeprefix("StatusCode.")
    return "OK"


def _vlm_cpu(triton_pid: int) -> float:
    return snapshot(triton_pid, "bench")[contract.VLM]


def wait_idle(triton_pid: int, cap_s: float) -> tuple[float, float]:
    """(CPU seconds the VLM spent, seconds until it was idle), measured from now."""
    start_cpu, started = _vlm_cpu(triton_pid), time.perf_counter()
    last = start_cpu
    while time.perf_counter() - started < cap_s:
        time.sleep(IDLE_WINDOW_S)
        now = _vlm_cpu(triton_pid)
        if now - last < IDLE_CPU_S:
            return now - start_cpu, time.perf_counter() - started - IDLE_WINDOW_S
        last = now
    return _vlm_cpu(triton_pid) - start_cpu, cap_s


def run(repository: Path, requests: int, max_tokens: int, deadline_s: float, cap_s: float) -> dict:
    with EmbeddedTriton(TritonConfig(repository, ports=TritonPorts.free())) as triton:
        assert triton.pid is not None
        _call(triton.grpc_url, 0, 4, None)  # warm-up: first generate pays one-off costs
        wait_idle(triton.pid, cap_s)
        one_cpu = _vlm_cpu(triton.pid)
        _call(triton.grpc_url, 0, max_tokens, None)
        full_cpu = _vlm_cpu(triton.pid) - one_cpu  # what one complete generation costs
        with ThreadPoolExecutor(requests) as pool:
            statuses = list(
                pool.map(lambda n: _call(triton.grpc_url, n, max_tokens, deadline_s), range(requests))
            )
        cpu_s, idle_after_s = wait_idle(triton.pid, cap_s)
    return {
        "machine": machine(),
        "requests": requests,
        "max_tokens": max_tokens,
        "deadline_s": deadline_s,
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "one_full_generation_cpu_s": round(full_cpu, 2),
        "vlm_cpu_s_after_abandon": round(cpu_s, 2),
        "seconds_until_idle": round(idle_after_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--deadline", type=float, default=0.3, help="client deadline per call, seconds")
    parser.add_argument("--cap", type=float, default=300.0, help="stop waiting for idle after this")
    parser.add_argument("--out", type=Path, default=Path("build/bench/cancellation.json"))
    args = parser.parse_args()
    console = Console()
    with console.status(f"{args.requests} generations abandoned after {args.deadline} s..."):
        result = run(args.model_repository, args.requests, args.max_tokens, args.deadline, args.cap)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    console.print_json(json.dumps({k: v for k, v in result.items() if k != "machine"}))


if __name__ == "__main__":
    main()
