"""The machine a measurement ran on, stored with every profile and benchmark result."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path


def machine() -> dict[str, str | int]:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    versions: dict[str, str] = {"python": platform.python_version()}
    for package in ("numpy", "onnxruntime", "torch", "grpc"):
        try:
            versions[package] = importlib.import_module(package).__version__
        except ImportError:
            continue
    return {"cpu": cpu, "cores": os.cpu_count() or 0, **versions}
