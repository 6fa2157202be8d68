"""Benchmarks (`make bench`): measured numbers for the README, never timed assertions in tests."""
