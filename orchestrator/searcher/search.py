"""SEARCHER: the detector once, then every enabled tool over its crops, concurrently.

Tools run as soon as the tools they read (`after`) have finished; a tool whose prerequisite is
off or failed is skipped. A tool that fails is recorded as degraded and the search goes on; only
a lost Triton (UNAVAILABLE) or the deadline ends the request. Every Triton call of one photo is
batched or fanned out at once, and Triton's dynamic batcher merges it with other requests' calls.

A request's pipeline (`options.pipeline`) picks the detector and crop rule (fast: `detector`,
`box_threshold`, `min_crop_side`, `max_crops`; reference: `detector_reference` and NAVIG's rules, from
`navig_reference`, capped by `reference_crops_per_label`) and the tools that run (those whose `modes`
name it); each tool follows the pipeline's rules in `run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from navig.model_repository import contract
from navig.orchestrator import navig_reference
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded, PipelineError, Unavailable, first_error
from navig.orchestrator.images import downscale, jpeg_round_trip, resize_bilinear
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.models import Models
from navig.orchestrator.results import Degradation, Emit, Evidence
from navig.orchestrator.searcher.tool import SearchTool
from navig.orchestrator.settings import Settings
from navig.orchestrator.timeline import Timeline
from navig.orchestrator.tools.base import GuideHit, Place, ToolUnavailable

if TYPE_CHECKING:
    from navig.orchestrator.options import RunOptions


@dataclass(frozen=True)
class Crop:
    label: str  # one of contract.DETECTOR_PROMPTS
    score: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels
    pixels: np.ndarray

    @property
    def where(self) -> str:
        return f"{self.label} at {list(self.box)}"


@dataclass
class Findings:
    """What the search found, for the guessers; evidence is also emitted as it is found."""

    lines: list[str] = field(default_factory=list)  # text read (ocr)
    places: list[Place] = field(default_factory=list)  # map candidates (map)
    language: str = ""  # language of the text (language)
    country_prior: dict[str, float] = field(default_factory=dict)
    guide_hits: list[GuideHit] = field(default_factory=list)  # (guidebook)
    # by crop label, in crop order, for the reference GUESSER's sections:
    texts: dict[str, list[str]] = field(default_factory=dict)  # every answer of the VLM reading a crop
    comments: dict[str, list[str]] = field(default_factory=dict)  # the describer's comments
    guide_by_label: dict[str, list[GuideHit]] = field(default_factory=dict)  # hits of a label's first crop
    evidence: list[Evidence] = field(default_factory=list)
    degraded: list[Degradation] = field(default_factory=list)


@dataclass
class Search:
    """One photo's search: what every tool reads (photo, crops, earlier findings) and adds to."""

    models: Models
    settings: Settings
    options: RunOptions
    image: np.ndarray  # RGB, full resolution: crops are cut from it
    view: np.ndarray  # the photo downscaled to DETECTOR_MAX_SIDE: what models are sent as "the photo"
    deadline: Deadline
    emit: Emit
    crops: list[Crop] = field(default_factory=list)
    found: Findings = field(default_factory=Findings)

    def record(self, evidence: Evidence) -> None:
        self.found.evidence.append(evidence)
        self.emit(evidence)

    def regions(self, labels: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """The photo (its `view`) first, then the crops with these labels, each named for the evidence."""
        crops = [(c.where, c.pixels) for c in self.crops if c.label in labels]
        return [("photo", self.view), *crops]

    @property
    def reference(self) -> bool:
        return self.options.pipeline == "reference"

    async def ask_vlm(self, prompt: str, pixels: np.ndarray) -> str:
        """The base VLM's answer about one crop, stripped, within the request's token budget. The crop
        is seen as the VLMs see the photo (long side at most `vlm_image_max_side`: image tokens), and a
        crop thinner than the VLM's smallest patch grid is stretched to it (NAVIG's qwen-vl-utils
        resizes such crops up too)."""
        s = self.settings
        view = fit_for_vlm(pixels, s.vlm_image_max_side, s.min_image_side)
        pieces = self.models.generate(contract.VLM, prompt, self.deadline, view, self.options.max_new_tokens)
        return "".join([piece async for piece in pieces]).strip()


class Searcher:
    """The server's tools, in registry order; `run` searches one photo."""

    def __init__(
        self, settings: Settings, models: Models, metrics: Metrics, tools: Sequence[SearchTool]
    ) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.tools = list(tools)

    def evidence_order(self) -> list[str]:
        """Tool names by the rank of their evidence in the GUESSER prompt."""
        return [t.name for t in sorted(self.tools, key=lambda t: t.evidence_rank)]

    async def run(
        self, image: np.ndarray, options: RunOptions, deadline: Deadline, timeline: Timeline, emit: Emit
    ) -> Findings:
        with timeline.stage("detector"):
            # a 12 MP photo is ~36 MB of pixels, over gRPC's message limit; the detector's graph, OCR and
            # CLIP resize it far below this anyway, and the detector's TensorRT profile ends here
            view = await asyncio.to_thread(downscale, image, contract.DETECTOR_MAX_SIDE, 1)
            search = Search(self.models, self.settings, options, image, view, deadline, emit)
            search.crops = await self._detect(image, view, deadline, search.reference)
        for crop in search.crops:
            search.record(Evidence("detector", crop.label, crop.where, contract.DETECTOR, crop.score))
        finished: dict[str, asyncio.Task[bool]] = {}
        try:
            async with asyncio.TaskGroup() as tasks:
                for tool in self.tools:  # a tool's `after` tools are registered before it
                    if tool.name in options.tools and options.pipeline in tool.modes:
                        needs = [finished.get(name) for name in tool.after]
                        finished[tool.name] = tasks.create_task(self._run(tool, needs, search, timeline))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        # tools finish in an order that varies run to run: the answer lists their evidence in a fixed
        # one (the detector's crops, then by rank; each tool's own in the order it recorded it)
        rank = {name: k for k, name in enumerate(["detector", *self.evidence_order()])}
        search.found.evidence.sort(key=lambda e: rank.get(e.tool, len(rank)))
        return search.found

    async def _run(
        self, tool: SearchTool, needs: list[asyncio.Task[bool] | None], search: Search, timeline: Timeline
    ) -> bool:
        """Runs one tool once its prerequisites succeeded; its failure degrades the answer unless
        Triton is gone or time is up. True when it ran and succeeded."""
        for need in needs:
            if need is None or not await need:
                return False
        try:
            with timeline.stage(tool.name):
                await tool.run(search)
        except (Unavailable, DeadlineExceeded):
            raise
        except (PipelineError, ToolUnavailable) as exc:
            self.metrics.tool_results.labels(tool.name, "error").inc()
            search.found.degraded.append(Degradation(tool.name, str(exc)))
            return False
        hit = any(e.tool == tool.name for e in search.found.evidence)
        self.metrics.tool_results.labels(tool.name, "hit" if hit else "miss").inc()
        return True

    async def _detect(
        self, image: np.ndarray, view: np.ndarray, deadline: Deadline, reference: bool
    ) -> list[Crop]:
        """Fast: the crops, best score first, score >= box_threshold and both sides >= min_crop_side, at
        most max_crops."""
        if reference:
            return await self._detect_reference(image, deadline)
        settings = self.settings
        out = await self.models.infer(contract.DETECTOR, {contract.DETECTOR_IMAGES: view[None]}, deadline)
        height, width = image.shape[:2]  # boxes come as fractions: crops are cut from the full photo
        scale = np.array([width, height, width, height], np.float32)
        detections = zip(out[contract.DETECTOR_BOXES][0], out[contract.DETECTOR_SCORES][0],
                         out[contract.DETECTOR_LABELS][0])  # fmt: skip
        crops: list[Crop] = []
        for box, score, label in detections:
            if score < settings.box_threshold or len(crops) >= settings.max_crops:
                break  # scores come sorted, best first
            x0, y0, x1, y1 = np.clip(np.round(box * scale), 0, scale).astype(int).tolist()
            if min(x1 - x0, y1 - y0) < settings.min_crop_side:
                continue
            pixels = np.ascontiguousarray(image[y0:y1, x0:x1])
            crops.append(Crop(contract.DETECTOR_PROMPTS[int(label)], float(score), (x0, y0, x1, y1), pixels))
        return crops

    async def _detect_reference(self, image: np.ndarray, deadline: Deadline) -> list[Crop]:
        """NAVIG's crops (utils.py:185-205, inference.py:62-71) from `detector_reference` (every query of
        every prompt, in query order) on the photo resized as GroundingDINO does (Pillow bilinear to the
        shorter side 800: for a photo of the export's shape, exactly NAVIG's detector input): per label in
        PROMPT_ORDER, queries in order, score > BOX_THRESHOLD;
        the box scaled to the full photo and int()-truncated, not clipped; kept iff width or height >=
        CROP_MIN_SIDE; cut as a Python slice (a negative edge counts from the end, so an edge box can come
        out empty) and JPEG round-tripped as NAVIG saves crops to files; an empty crop is skipped (NAVIG
        cannot save it). At most `reference_crops_per_label` per label (NAVIG: no cap)."""
        height, width = image.shape[:2]
        size = navig_reference.detector_input_size(height, width)
        pixels = await asyncio.to_thread(
            resize_bilinear, image, size
        )  # the graph's own resize is then identity
        out = await self.models.infer(
            contract.DETECTOR_REFERENCE, {contract.DETECTOR_IMAGES: pixels[None]}, deadline
        )
        boxes = out[contract.DETECTOR_BOXES][0] * np.array([width, height, width, height], np.float32)
        scores, labels = out[contract.DETECTOR_SCORES][0], out[contract.DETECTOR_LABELS][0]
        side, cap = navig_reference.CROP_MIN_SIDE, self.settings.reference_crops_per_label
        crops: list[Crop] = []
        for label in navig_reference.PROMPT_ORDER:
            mine = labels == contract.DETECTOR_PROMPTS.index(label)
            kept = 0
            for box, score in zip(boxes[mine], scores[mine]):
                if kept >= cap:
                    break
                x0, y0, x1, y1 = (int(v) for v in box)
                if not score > navig_reference.BOX_THRESHOLD or (abs(x1 - x0) < side and abs(y1 - y0) < side):
                    continue
                pixels = await asyncio.to_thread(jpeg_round_trip, image[y0:y1, x0:x1])
                if pixels is not None:
                    crops.append(Crop(label, float(score), (x0, y0, x1, y1), pixels))
                    kept += 1
        return crops


def fit_for_vlm(pixels: np.ndarray, max_side: int, min_side: int) -> np.ndarray:
    """`downscale` to `max_side`; a crop thinner than `min_side` (a reference crop is kept for one long
    side) is stretched to it, its long side then at most `max_side` (thin crops lose their aspect)."""
    pixels = downscale(pixels, max_side, min_side)
    height, width = pixels.shape[:2]
    if min(height, width) >= min_side:
        return pixels
    scale = min_side / min(height, width)
    width, height = (max(min_side, min(round(side * scale), max_side)) for side in (width, height))
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC))
