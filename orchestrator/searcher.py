"""SEARCHER: the detector once, then OCR -> map search, CLIP -> guidebook and the describer, concurrently.

Every tool call for one photo is batched or fanned out at once; Triton's dynamic batcher merges
them with other requests' calls. A tool that fails is recorded as degraded and the search goes
on; only a lost Triton (UNAVAILABLE) or the deadline ends the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from navig.model_repository import contract
from navig.orchestrator import prompts
from navig.orchestrator.deadline import Deadline
from navig.orchestrator.errors import DeadlineExceeded, PipelineError, Unavailable
from navig.orchestrator.metrics import Metrics
from navig.orchestrator.models import Models
from navig.orchestrator.results import Degradation, Emit, Evidence
from navig.orchestrator.settings import Settings
from navig.orchestrator.timeline import Timeline
from navig.orchestrator.tools.base import Guidebook, GuideHit, MapSearch, Place, ToolUnavailable
from navig.orchestrator.tools.setup import Tools

SIGNS = ("road sign", "building sign")
CLIP_SIDE = 224  # crops are batched for `clip_image` at one size; the graph's own resize then is a no-op


@dataclass(frozen=True)
class Crop:
    label: str  # one of contract.DETECTOR_PROMPTS
    score: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels
    pixels: np.ndarray

    @property
    def where(self) -> str:
        return f"{self.label} at {list(self.box)}"


@dataclass(frozen=True)
class ToolSwitches:
    ocr: bool
    map_search: bool
    guidebook: bool
    describer: bool
    max_new_tokens: int


@dataclass
class Findings:
    """What the search found, for the guessers; evidence is also emitted as it is found."""

    lines: list[str] = field(default_factory=list)
    places: list[Place] = field(default_factory=list)
    language: str = ""
    country_prior: dict[str, float] = field(default_factory=dict)
    guide_hits: list[GuideHit] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    degraded: list[Degradation] = field(default_factory=list)


class Searcher:
    """Shared tools; `run` starts one photo's search."""

    def __init__(
        self,
        settings: Settings,
        triton: Models,
        metrics: Metrics,
        tools: Tools,
    ) -> None:
        self.settings = settings
        self.triton = triton
        self.metrics = metrics
        self.map_search = tools.map_search
        self.guidebook = tools.guidebook
        self.language_prior = tools.language_prior

    async def run(
        self, image: np.ndarray, switches: ToolSwitches, deadline: Deadline, timeline: Timeline, emit: Emit
    ) -> Findings:
        return await _Search(self, image, switches, deadline, timeline, emit).run()


@dataclass
class _Search:
    """One photo's search: the request-scoped state every tool step reads and adds to."""

    tools: Searcher
    image: np.ndarray
    switches: ToolSwitches
    deadline: Deadline
    timeline: Timeline
    emit: Emit
    found: Findings = field(default_factory=Findings)
    crops: list[Crop] = field(default_factory=list)

    async def run(self) -> Findings:
        tools, switches = self.tools, self.switches
        with self.timeline.stage("detector"):
            self.crops = await self._detect()
        for crop in self.crops:
            self._record(Evidence("detector", crop.label, crop.where, contract.DETECTOR, crop.score))
        async with asyncio.TaskGroup() as tasks:
            if switches.ocr:
                tasks.create_task(self._guarded("ocr", self._read()))
            if switches.guidebook and tools.guidebook is not None:
                tasks.create_task(self._guarded("guidebook", self._consult(tools.guidebook)))
            if switches.describer:
                tasks.create_task(self._guarded("describer", self._describe()))
        return self.found

    def _record(self, evidence: Evidence) -> None:
        self.found.evidence.append(evidence)
        self.emit(evidence)

    async def _guarded(self, tool: str, work: Coroutine[Any, Any, None]) -> None:
        """Runs one tool; its failure degrades the answer unless Triton is gone or time is up."""
        try:
            await work
        except (Unavailable, DeadlineExceeded):
            raise
        except (PipelineError, ToolUnavailable) as exc:
            self.tools.metrics.tool_results.labels(tool, "error").inc()
            self.found.degraded.append(Degradation(tool, str(exc)))

    async def _detect(self) -> list[Crop]:
        settings = self.tools.settings
        inputs = {contract.DETECTOR_IMAGES: self.image[None]}
        out = await self.tools.triton.infer(contract.DETECTOR, inputs, self.deadline)
        height, width = self.image.shape[:2]
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
            pixels = np.ascontiguousarray(self.image[y0:y1, x0:x1])
            crops.append(Crop(contract.DETECTOR_PROMPTS[int(label)], float(score), (x0, y0, x1, y1), pixels))
        return crops

    def _regions(self, labels: Sequence[str]) -> list[tuple[str, np.ndarray]]:
        """The whole photo first, then the crops with these labels, each named for the evidence."""
        crops = [(c.where, c.pixels) for c in self.crops if c.label in labels]
        return [("photo", self.image), *crops]

    async def _read(self) -> None:
        """OCR on the whole photo and every sign crop at once, then language and map search on the lines."""
        tools, found = self.tools, self.found
        regions = self._regions(SIGNS)
        with self.timeline.stage("ocr"):
            infer = tools.triton.infer
            reads = await asyncio.gather(
                *[infer(contract.OCR, {contract.OCR_IMAGE: pixels}, self.deadline) for _, pixels in regions]
            )
        seen: set[str] = set()
        for (where, _), out in zip(regions, reads):
            for text, score in zip(out[contract.OCR_TEXTS], out[contract.OCR_SCORES]):
                line = " ".join(text.decode("utf-8").split())
                if line and line.casefold() not in seen:
                    seen.add(line.casefold())
                    found.lines.append(line)
                    self._record(Evidence("ocr", where, line, contract.OCR, float(score)))
        tools.metrics.tool_results.labels("ocr", "hit" if found.lines else "miss").inc()
        if not found.lines:
            return
        if tools.language_prior is not None:
            found.language, found.country_prior = tools.language_prior(found.lines)
            for code, weight in sorted(found.country_prior.items(), key=lambda kv: -kv[1])[:3]:
                result = f"{found.language} is spoken in {code}"
                self._record(Evidence("language", " | ".join(found.lines), result, "CLDR", weight, code))
        if self.switches.map_search and tools.map_search is not None:
            await self._guarded("map", self._search_map(tools.map_search))

    async def _search_map(self, map_search: MapSearch) -> None:
        """The lines on the map; a backend that fails degrades only the map evidence."""
        tools, found = self.tools, self.found
        with self.timeline.stage("map"):
            found.places = await map_search.search(found.lines, tools.settings.map_limit)
        tools.metrics.tool_results.labels("map", "hit" if found.places else "miss").inc()
        for p in found.places:
            where = ", ".join(part for part in (p.name, p.admin1, p.country_code) if part)
            self._record(Evidence("map", p.matched, where, p.source, p.score, p.country_code,
                                  p.latitude, p.longitude))  # fmt: skip

    async def _consult(self, guidebook: Guidebook) -> None:
        """CLIP on the photo and every crop in one batch, then the guidebook's nearest clues."""
        settings = self.tools.settings
        regions = self._regions(contract.DETECTOR_PROMPTS)
        batch = np.stack([_square(pixels, CLIP_SIDE) for _, pixels in regions])
        with self.timeline.stage("guidebook"):
            inputs = {contract.CLIP_IMAGE_IMAGES: batch}
            out = await self.tools.triton.infer(contract.CLIP_IMAGE, inputs, self.deadline)
            embeddings = out[contract.CLIP_EMBEDDINGS]
            hits = guidebook.search(embeddings, settings.guidebook_k, settings.guidebook_threshold)
        for (where, _), region_hits in zip(regions, hits):
            for hit in region_hits:
                self.found.guide_hits.append(hit)
                self._record(Evidence("guidebook", where, hit.text, hit.source or hit.entry_id, hit.score,
                                      hit.country_code))  # fmt: skip
        self.tools.metrics.tool_results.labels("guidebook", "hit" if self.found.guide_hits else "miss").inc()

    async def _describe(self) -> None:
        """The base VLM's one-sentence comment on the first houses and signs, all requests at once."""
        settings = self.tools.settings
        houses = [c for c in self.crops if c.label == "house"][: settings.describe_houses]
        signs = [c for c in self.crops if c.label in SIGNS][: settings.describe_signs]
        chosen = [c for c in houses + signs if min(c.pixels.shape[:2]) >= settings.min_image_side]
        if not chosen:
            return

        async def describe(crop: Crop) -> str:
            prompt = prompts.DESCRIBE[crop.label]
            pieces = self.tools.triton.generate(
                contract.VLM, prompt, self.deadline, crop.pixels, self.switches.max_new_tokens
            )
            return "".join([piece async for piece in pieces]).strip()

        with self.timeline.stage("describer"):
            comments = await asyncio.gather(*(describe(crop) for crop in chosen))
        for crop, comment in zip(chosen, comments):
            self._record(Evidence("describer", crop.where, comment, contract.VLM, crop.score))


def _square(pixels: np.ndarray, side: int) -> np.ndarray:
    """CLIP's view: shortest side to `side`, centre crop (as its preprocessing does)."""
    image = Image.fromarray(pixels)
    scale = side / min(image.size)
    image = image.resize((max(side, round(image.width * scale)), max(side, round(image.height * scale))))
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return np.asarray(image.crop((left, top, left + side, top + side)))
