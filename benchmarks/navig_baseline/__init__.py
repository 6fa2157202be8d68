"""A NAVIG-faithful eager-PyTorch baseline for the benchmarks (not product code): see pipeline.py.

OpenMP's idle threads are made passive before torch loads, as in the VLM stubs
(`model_repository/vlm_model.py`) and the in-process side: spinning threads would take the cores.
It only takes effect when this package is imported before torch (`python -m benchmarks.navig_baseline`,
which `benchmarks.versus_navig` runs in its own process with the variable set).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from benchmarks.navig_baseline.pipeline import BaselineResult, NavigBaseline

__all__ = ["BaselineResult", "NavigBaseline"]
