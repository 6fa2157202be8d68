"""The orchestrator's own pipeline with every model called in-process: the limit of this machine.

`LocalModels` stands where `TritonModels` stands (the two calls the pipeline makes: `infer` and
`generate`), backed by the exported files of a model repository: ONNX Runtime sessions for the
detector, CLIP and PP-OCR (with the same `OcrPipeline` the `ocr` model runs), transformers for the
VLMs. Each model runs one call at a time, as one Triton instance does, so the pipeline's
concurrency and batching are the same and only the serving (gRPC, Triton, python-backend IPC) is
missing. Latency through this minus latency through Triton is the serving overhead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from navig.model_repository import contract
from navig.model_repository.ocr_pipeline import OcrPipeline, OcrSettings
from navig.model_repository.vlm_engine import TransformersVlm
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.pipeline import Pipeline, RunOptions
from navig.orchestrator.searcher import Searcher, ToolSwitches
from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.setup import Tools

ONNX_MODELS = (contract.DETECTOR, contract.CLIP_IMAGE, contract.OCR_DET, contract.OCR_REC)


class LocalModels:
    def __init__(self, repository: Path, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.sessions = {
            name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"), options)
            for name in ONNX_MODELS
        }
        characters = (repository / contract.OCR / "1" / "characters.txt").read_text(encoding="utf-8")
        self.ocr = OcrPipeline(characters.splitlines(), OcrSettings())
        self.vlms = {
            name: TransformersVlm(repository / name / "1" / "weights") for name in contract.VLM_MODELS
        }
        self.locks = {name: asyncio.Lock() for name in (*ONNX_MODELS, contract.OCR, *contract.VLM_MODELS)}

    def _run(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.sessions[model]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, dict(inputs))))

    async def infer(self, model: str, inputs: Mapping[str, np.ndarray], deadline: Deadline) -> dict:
        async with self.locks[model]:
            if model != contract.OCR:
                return await asyncio.to_thread(self._run, model, inputs)
            return await asyncio.to_thread(self._read, inputs[contract.OCR_IMAGE])

    def _read(self, image: np.ndarray) -> dict[str, np.ndarray]:
        def detect(images: np.ndarray) -> np.ndarray:
            return self._run(contract.OCR_DET, {contract.OCR_DET_INPUT: images})[contract.OCR_DET_OUTPUT]

        def recognize(crops: np.ndarray) -> np.ndarray:
            return self._run(contract.OCR_REC, {contract.OCR_REC_INPUT: crops})[contract.OCR_REC_OUTPUT]

        result = self.ocr(image, detect, recognize)
        return {
            contract.OCR_TEXTS: np.array([t.encode() for t in result.texts], dtype=np.object_),
            contract.OCR_BOXES: result.boxes.astype(np.float32),
            contract.OCR_SCORES: np.asarray(result.scores, np.float32),
        }

    async def generate(
        self,
        model: str,
        prompt: str,
        deadline: Deadline,
        image: np.ndarray | None = None,
        max_tokens: int | None = None,
        json_schema: str | None = None,
    ) -> AsyncIterator[str]:
        async with self.locks[model]:
            answer = await asyncio.to_thread(
                self.vlms[model].generate, prompt, image, max_tokens or 128, json_schema
            )
        yield answer.text


def in_process_pipeline(settings: Settings, repository: Path, tools: Tools) -> Pipeline:
    models = LocalModels(repository)
    metrics = Metrics()
    searcher = Searcher(settings, models, metrics, tools)  # type: ignore[arg-type]
    return Pipeline(settings, models, searcher, metrics)  # type: ignore[arg-type]


def run_options(settings: Settings, max_new_tokens: int) -> RunOptions:
    """Every component on, as the served runs of the benchmark ask."""
    switches = ToolSwitches(
        ocr=True, map_search=True, guidebook=True, describer=True, max_new_tokens=max_new_tokens
    )
    return RunOptions(True, switches, True, max_new_tokens)


async def locate(pipeline: Pipeline, image: bytes, options: RunOptions) -> dict[str, float]:
    """One photo through the in-process pipeline: its stage durations (ms), as the service reports them."""
    outcome = await pipeline.run(image, options, Deadline.after(3600), lambda _: None)
    stages: dict[str, float] = {}
    for timing in outcome.timings:
        stages[timing.stage] = stages.get(timing.stage, 0.0) + timing.duration_ms
    return stages
