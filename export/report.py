"""What each export step produced and how closely it reproduces its source."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ArtifactReport:
    model: str  # Triton model name, or the artifact's name when it is not served directly
    path: Path
    size_bytes: int
    max_abs_diff: float | None  # vs the source checkpoint on the same inputs; None = not comparable
    tolerance: float | None
    seconds: float
    check: str = ""  # what was compared, e.g. "ONNX vs PyTorch, 2 images"
    figure: str = ""  # the measured result when it is not a difference, e.g. "identical bytes (sha256)"
    misses: int | None = None  # outputs left out of max_abs_diff: no counterpart within tolerance
    misses_allowed: int | None = None  # the most misses the check accepts (argued beside its constant)
    precision: str = "fp32"  # int8: quantized after the check above, behind `gate` (export/quantize.py)
    gate: dict[str, float | int] | None = None  # int8 vs fp32 figures and the one required
    warnings: list[str] = field(default_factory=list)  # what the user should check (e.g. adapter vs base)

    @classmethod
    def of_file(
        cls,
        model: str,
        path: Path,
        diff: float,
        tolerance: float,
        started: float,
        check: str,
        *,
        misses: int | None = None,
        misses_allowed: int | None = None,
    ) -> ArtifactReport:
        """Report for an artifact just written at `path`; `started` is its perf_counter start."""
        seconds = time.perf_counter() - started
        size = folder_size(path)
        return cls(model, path, size, diff, tolerance, seconds, check, "", misses, misses_allowed)

    def parity(self) -> str:
        """The parity figure as the export table shows it: diff (tolerance), misses beside it."""
        if self.max_abs_diff is None:
            return self.figure or "-"
        text = f"{self.max_abs_diff:.1e} ({self.tolerance:.0e})"
        if self.misses is not None:
            text += f", {self.misses} missed (<= {self.misses_allowed})"
        if self.gate:
            metric, value = next(iter(self.gate.items()))
            text += f"; int8 {metric} {value:.4f} (>= {self.gate['required']})"
        return text


def folder_size(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def write_report(path: Path, reports: list[ArtifactReport], **extra: object) -> Path:
    entries = [{k: str(v) if isinstance(v, Path) else v for k, v in asdict(r).items()} for r in reports]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**extra, "artifacts": entries}, indent=2) + "\n")
    return path
