"""CPU seconds spent per process: which model the cores went to (each python-backend model
instance runs in its own stub process), and how busy the machine was.

At saturation throughput is cores / (CPU seconds per photo), so these figures say where a
throughput ceiling comes from, and they compare with the baseline's own CPU seconds per photo.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import psutil


def _seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def snapshot(triton_pid: int | None, here: str) -> Counter[str]:
    """Cumulative CPU seconds: this process (as `here`), and Triton's server and model stubs by model name."""
    out: Counter[str] = Counter({here: _seconds(psutil.Process())})
    if triton_pid is None:
        return out
    server = psutil.Process(triton_pid)
    out["tritonserver"] = _seconds(server)
    for child in server.children(recursive=True):
        try:
            command, seconds = child.cmdline(), _seconds(child)
            out[model_of(command) or child.name()] += seconds
        except psutil.NoSuchProcess:
            continue
    return out


def model_of(command: list[str]) -> str | None:
    """The model a Triton python-backend stub serves (argv[1]: <repository>/<model>/<version>/model.py)."""
    stub = len(command) > 1 and command[1].endswith("model.py")
    return Path(command[1]).parts[-3] if stub else None


def spent(before: Counter[str], after: Counter[str], items: int) -> dict[str, float]:
    """CPU seconds per item (photo) of every process that worked between the snapshots, busiest first."""
    per_item = {name: (after[name] - before.get(name, 0.0)) / max(items, 1) for name in after}
    return dict(sorted(((k, v) for k, v in per_item.items() if v > 0.005), key=lambda kv: -kv[1]))


def utilisation(per_item: dict[str, float], items: int, wall_seconds: float) -> float:
    """Share of the machine's cores that were busy."""
    return sum(per_item.values()) * items / (wall_seconds * (os.cpu_count() or 1))
