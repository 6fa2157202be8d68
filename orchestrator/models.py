"""What the pipeline asks of its models: `Models`, answered by Triton (`TritonModels`) in serving,
by in-process engines in `benchmarks/in_process.py`, and by fakes in the unit tests.

The searcher and the guesser depend on this protocol only, so they can be tested without Triton.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import numpy as np

from navig.orchestrator.deadline import Deadline


class Models(Protocol):
    async def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline
    ) -> dict[str, np.ndarray]:
        """One inference; every output by name. Failures raise the pipeline's errors."""
        ...

    def generate(
        self,
        model: str,
        prompt: str,
        deadline: Deadline,
        image: np.ndarray | None = None,
        max_tokens: int | None = None,
        json_schema: str | None = None,
    ) -> AsyncIterator[str]:
        """A VLM answer as pieces of text (one piece unless the model streams)."""
        ...
