"""The benchmark harness measures what it says: the in-process VLM batches as Triton's dynamic
batcher does (same answers), and CPU seconds are attributed to the real Triton model processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cpu_time
from benchmarks.in_process import BatchingVlm
from navig.model_repository import contract
from navig.model_repository.vlm_engine import TransformersVlm
from navig.orchestrator.embedded_triton import EmbeddedTriton


@pytest.mark.timeout(300)
def test_in_process_vlm_batches_concurrent_calls_with_single_call_answers(model_repository: Path):
    engine = TransformersVlm(model_repository / contract.VLM / "1" / "weights")
    batches: list[int] = []
    generate_batch = engine.generate_batch

    def counted(*columns: list) -> list:
        batches.append(len(columns[0]))
        return generate_batch(*columns)

    engine.generate_batch = counted  # type: ignore[method-assign]
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    calls = [("Describe this house.", image, 6, None), ("Where?", None, 9, None)]
    calls += [("Read it.", image, 3, None)]
    calls += [("More.", None, 4, None)] * 8  # more than one batch's rows (8)
    vlm = BatchingVlm(engine)

    async def all_at_once() -> list:
        return await asyncio.gather(*(vlm(*call) for call in calls))

    answers = asyncio.run(all_at_once())
    assert sum(batches) == len(calls) and max(batches) <= 8 and len(batches) < len(calls), batches
    assert answers == [engine.generate(*call) for call in calls]


def test_cpu_seconds_are_attributed_to_triton_model_processes(triton: EmbeddedTriton):
    import tritonclient.grpc as grpcclient

    before = cpu_time.snapshot(triton.pid, "test")
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    images = grpcclient.InferInput(contract.DETECTOR_IMAGES, [1, 240, 320, 3], "UINT8")
    images.set_data_from_numpy(np.zeros((1, 240, 320, 3), np.uint8))
    for _ in range(3):
        client.infer(contract.DETECTOR, [images])
    spent = cpu_time.spent(before, cpu_time.snapshot(triton.pid, "test"), items=3)
    assert spent.get(contract.DETECTOR, 0) > 0, spent  # the detector's own stub process did the work
    assert contract.VLM not in spent and contract.REASONER not in spent, spent
    assert 0 < cpu_time.utilisation(spent, 3, 60.0) < 1
