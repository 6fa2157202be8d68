"""A NAVIG-faithful eager-PyTorch baseline for the benchmarks (not product code): see pipeline.py."""

from benchmarks.navig_baseline.pipeline import BaselineResult, NavigBaseline

__all__ = ["BaselineResult", "NavigBaseline"]
