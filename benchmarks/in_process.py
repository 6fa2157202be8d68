"""The orchestrator's own pipeline with every model called in-process: the limit of this machine.

`LocalModels` stands where `TritonModels` stands (the two calls the pipeline makes: `infer` and
`generate`), backed by the exported files of a model repository: ONNX Runtime sessions for the
detector, CLIP and PP-OCR (with the same `OcrPipeline` the `ocr` model runs), transformers for the
VLMs. Each model runs one call at a time, as one Triton instance does, and concurrent VLM calls
share one `generate_batch` as Triton's dynamic batcher groups them, so the pipeline's concurrency
and batching are the same and only the serving (gRPC, Triton, python-backend IPC) is missing.
Latency through this minus latency through Triton is the serving overhead.

Run by `benchmarks.versus_navig` in its own process (OpenMP threads passive, as in the VLM stubs):
`python -m benchmarks.in_process --repository R --guidebook G --out in_process.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from benchmarks import cpu_time
from navig.export.cli import quiet_transformers
from navig.export.samples import SAMPLES_DIR, load_samples
from navig.model_repository import contract
from navig.model_repository.ocr_pipeline import OcrPipeline, OcrSettings
from navig.model_repository.vlm_api import Generation
from navig.model_repository.vlm_engine import TransformersVlm
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.options import RunOptions, server_defaults
from navig.orchestrator.pipeline import Pipeline
from navig.orchestrator.searcher.registry import create_tools
from navig.orchestrator.searcher.search import Searcher
from navig.orchestrator.searcher.tool import SearchTool
from navig.orchestrator.settings import Settings, load_settings

ONNX_MODELS = (contract.DETECTOR, contract.CLIP_IMAGE, contract.OCR_DET, contract.OCR_REC)


def vision_cache_mb(repository: Path, model: str) -> float:
    """The model's `vision_cache_mb` as its config.pbtxt gives it to the served engine (0: none)."""
    config = text_format.Parse((repository / model / "config.pbtxt").read_text(), mc.ModelConfig())
    parameter = config.parameters.get("vision_cache_mb")
    return float(parameter.string_value) if parameter is not None else 0.0


class LocalModels:
    def __init__(self, repository: Path, threads: int = 0) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the cpu configs
        self.sessions = {
            name: ort.InferenceSession(str(repository / name / "1" / "model.onnx"), options)
            for name in ONNX_MODELS
        }
        characters = (repository / contract.OCR / "1" / "characters.txt").read_text(encoding="utf-8")
        self.ocr = OcrPipeline(characters.splitlines(), OcrSettings())
        self.vlms = {
            name: BatchingVlm(
                TransformersVlm(
                    repository / name / "1" / "weights", vision_cache_mb=vision_cache_mb(repository, name)
                )
            )
            for name in contract.VLM_MODELS
        }
        self.locks = {name: asyncio.Lock() for name in (*ONNX_MODELS, contract.OCR)}

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
        answer = await self.vlms[model](prompt, image, max_tokens or 128, json_schema)
        yield answer.text


class BatchingVlm:
    """Triton's dynamic batcher in miniature: calls that arrive while the engine is busy, or within
    `delay_s` of the first, share one `generate_batch` (at most `max_batch` rows; the served defaults)."""

    def __init__(self, engine: TransformersVlm, delay_s: float = 0.005, max_batch: int = 8) -> None:
        self.engine, self.delay_s, self.max_batch = engine, delay_s, max_batch
        self.pending: list[tuple[tuple, asyncio.Future[Generation]]] = []
        self.busy = asyncio.Lock()

    async def __call__(
        self, prompt: str, image: np.ndarray | None, max_tokens: int, json_schema: str | None
    ) -> Generation:
        done: asyncio.Future[Generation] = asyncio.get_running_loop().create_future()
        self.pending.append(((prompt, image, max_tokens, json_schema), done))
        async with self.busy:  # one batch at a time, as one Triton instance
            while not done.done():
                await asyncio.sleep(self.delay_s)
                batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch :]
                columns = [list(column) for column in zip(*(row for row, _ in batch), strict=True)]
                try:
                    answers = await asyncio.to_thread(self.engine.generate_batch, *columns)
                except Exception as exc:
                    for _, waiter in batch:
                        waiter.set_exception(exc)
                    continue
                for (_, waiter), answer in zip(batch, answers, strict=True):
                    waiter.set_result(answer)
        return await done


def in_process_pipeline(settings: Settings, repository: Path, tools: list[SearchTool]) -> Pipeline:
    models = LocalModels(repository)
    metrics = Metrics()
    searcher = Searcher(settings, models, metrics, tools)
    return Pipeline(settings, models, searcher, metrics)  # type: ignore[arg-type]


def run_options(pipeline: Pipeline, max_new_tokens: int) -> RunOptions:
    """Every component on, as the served runs of the benchmark ask."""
    defaults = server_defaults(pipeline.settings, pipeline.searcher.tools)
    every_tool = frozenset(tool.name for tool in pipeline.searcher.tools)
    return dataclasses.replace(
        defaults, use_reasoner=True, use_vlm_guesser=True, tools=every_tool, max_new_tokens=max_new_tokens
    )


async def locate(pipeline: Pipeline, image: bytes, options: RunOptions) -> dict[str, float]:
    """One photo through the in-process pipeline: its stage durations (ms), as the service reports them."""
    outcome = await pipeline.run(image, options, Deadline.after(3600), lambda _: None)
    stages: dict[str, float] = {}
    for timing in outcome.timings:
        stages[timing.stage] = stages.get(timing.stage, 0.0) + timing.duration_ms
    return stages


HERE = "in-process pipeline (one process)"


def latency_summary(latencies_ms: list[float], seconds: float) -> dict[str, float]:
    return {
        "requests": len(latencies_ms),
        "throughput_rps": len(latencies_ms) / seconds,
        "p50_ms": float(np.percentile(latencies_ms, 50)),
        "p99_ms": float(np.percentile(latencies_ms, 99)),
        "mean_ms": statistics.fmean(latencies_ms),
    }


def measure(settings: Settings, repository: Path, images: list[bytes], tokens: int) -> dict:
    """One photo at a time after a warm-up: latency, throughput and CPU seconds per photo."""
    pipeline = in_process_pipeline(settings, repository, create_tools(settings))
    options = run_options(pipeline, tokens)

    async def run() -> tuple[list[float], float, dict[str, float]]:
        await locate(pipeline, images[0], options)  # warm-up
        latencies, cpu_before, started = [], cpu_time.snapshot(None, HERE), time.perf_counter()
        for image in images:
            t = time.perf_counter()
            await locate(pipeline, image, options)
            latencies.append((time.perf_counter() - t) * 1e3)
        seconds = time.perf_counter() - started
        return latencies, seconds, cpu_time.spent(cpu_before, cpu_time.snapshot(None, HERE), len(images))

    latencies, seconds, cpu = asyncio.run(run())
    return {
        "cpu_s_per_photo": cpu,
        "cpu_utilisation": cpu_time.utilisation(cpu, len(images), seconds),
        **latency_summary(latencies, seconds),
    }


def measure_command_line(description: str) -> tuple[dict, Path]:
    """`measure` on what the command line names; the report and where it goes (`--out`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--guidebook", type=Path, required=True)
    parser.add_argument("--images", type=int, default=6, help="the first sample photos")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    quiet_transformers()
    images = [(SAMPLES_DIR / s.file).read_bytes() for s in load_samples(SAMPLES_DIR)][: args.images]
    settings = load_settings(port=0, metrics_port=None, log_json=False, guidebook_dir=args.guidebook)
    return measure(settings, args.repository, images, args.max_new_tokens), args.out


def main() -> None:
    report, out = measure_command_line(__doc__ or "")
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
