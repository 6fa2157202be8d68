"""Reads the signs. Fast: PP-OCR. By default (`photo_first`) the whole photo is read once and its lines
are given to the sign crops they lie in; a sign crop is read on its own only where the photo pass found
no line in it, or where it is too small in the photo for that pass to be trusted. `every_crop` reads
the photo and every sign crop, each a full detection + recognition pass (benchmarks/ocr_once.py
compares the two). Reference (NAVIG's `getOSM`): the base VLM reads every crop of every label, houses
included, one generation per crop."""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np
from pydantic import Field

from navig.model_repository import contract
from navig.orchestrator import navig_reference, prompts
from navig.orchestrator.images import downscale
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher import text_boxes
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.settings import Settings

SIGNS = ("road sign", "building sign")
PHOTO = "photo"


class ReadSignsConfig(ToolConfig):
    """`tools: {ocr: {...}}` in the settings (`fast` pipeline only)."""

    strategy: Literal["photo_first", "every_crop"] = "photo_first"
    # the photo pass's long side: PP-OCR detects on at most 960 px (the `ocr` model's limit_side_len)
    # whatever it is sent, and recognises the lines it found on the image as sent (up to its max_side_len,
    # 2000). 1280 is the detector's view, already made; small signs are read alone (small_crop_side)
    photo_side: int = Field(contract.DETECTOR_MAX_SIDE, ge=64, le=2000)
    min_inside: float = Field(text_boxes.MIN_INSIDE, gt=0.0, le=1.0)  # share of a line's box in a crop
    # a sign crop whose short side is below this in the photo as sent is too small there for its text to
    # be found whole: it is read on its own at full resolution, at once, beside the photo (0: never)
    small_crop_side: int = Field(64, ge=0)


class ReadSigns(SearchTool):
    name = "ocr"
    option = "use_ocr"
    models = (contract.OCR,)
    modes = frozenset({"fast", "reference"})
    evidence_rank = 20
    Config = ReadSignsConfig
    config: ReadSignsConfig

    def __init__(self, settings: Settings, config: ToolConfig) -> None:
        # a bare ToolConfig (built by hand, as in tests) takes this tool's defaults for the rest
        own = config if isinstance(config, ReadSignsConfig) else ReadSignsConfig(**config.model_dump())
        super().__init__(settings, own)

    @classmethod
    def models_in(cls, pipeline: str) -> tuple[str, ...]:
        return (contract.VLM,) if pipeline == "reference" else cls.models

    async def run(self, search: Search) -> None:
        if search.reference:
            await self._read_with_the_vlm(search)
            return
        if self.config.strategy == "every_crop":
            regions = search.regions(SIGNS)
            reads = await asyncio.gather(*(self._read(search, pixels) for _, pixels in regions))
            lines = [(where, *line) for (where, _), read in zip(regions, reads) for line in _lines(read)]
        else:
            lines = await self._read_photo_first(search)
        seen: set[str] = set()
        for where, line, score in lines:
            if line and line.casefold() not in seen:
                seen.add(line.casefold())
                search.found.lines.append(line)
                search.record(Evidence(self.name, where, line, contract.OCR, score))

    async def _read_photo_first(self, search: Search) -> list[tuple[str, str, float]]:
        """(where, line, score): the photo's lines, named for the sign crop holding most of each; then the
        lines of the sign crops read on their own at full resolution: those small in the photo (read
        beside it, their lines from the photo kept too, as `every_crop` keeps them) and those in which
        the photo pass found no line (text it missed)."""
        config = self.config
        photo_side = min(config.photo_side, max(search.image.shape[:2]))
        height, width = search.image.shape[:2]
        scale = photo_side / max(height, width)  # the photo's size as sent, before it is made
        crops = [c for c in search.crops if c.label in SIGNS]
        small = [
            k
            for k, c in enumerate(crops)
            if min(c.box[2] - c.box[0], c.box[3] - c.box[1]) * scale < config.small_crop_side
        ]
        alone = [asyncio.ensure_future(self._read(search, crops[k].pixels)) for k in small]
        try:
            if config.photo_side == contract.DETECTOR_MAX_SIDE:
                photo = search.view
            else:
                photo = await asyncio.to_thread(downscale, search.image, config.photo_side, 1)
            read = await self._read(search, photo)
        except BaseException:
            for task in alone:
                task.cancel()
            raise
        # boxes come in the sent photo's pixels, crops in the full image's
        frame = np.array([width / photo.shape[1], height / photo.shape[0]], np.float32)
        # an answer without boxes (a `Models` that has none) gives no crop its lines: every crop is read
        boxes = read.get(contract.OCR_BOXES, np.zeros((0, 4, 2), np.float32)) * frame
        owners = text_boxes.assign(boxes, [c.box for c in crops], config.min_inside)
        owners += [None] * (len(read[contract.OCR_TEXTS]) - len(owners))
        lines = [(PHOTO if o is None else crops[o].where, *line) for o, line in zip(owners, _lines(read))]
        unread = [k for k in range(len(crops)) if k not in owners and k not in small]
        alone += [asyncio.ensure_future(self._read(search, crops[k].pixels)) for k in unread]
        reads = await asyncio.gather(*alone)
        return lines + [(crops[k].where, *line) for k, r in zip(small + unread, reads) for line in _lines(r)]

    @staticmethod
    async def _read(search: Search, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return await search.models.infer(contract.OCR, {contract.OCR_IMAGE: pixels}, search.deadline)

    async def _read_with_the_vlm(self, search: Search) -> None:
        """Every answer goes to `found.texts` (the GUESSER keeps those that are not exactly NO_TEXT);
        an answer that contains NO_TEXT anywhere is not looked up on the map (NAVIG's two tests). Unlike
        NAVIG, such an answer does not throw away the map results of the crops read before it."""
        crops = search.crops
        answers = await asyncio.gather(*(search.ask_vlm(prompts.READ_TEXT, c.pixels) for c in crops))
        found = search.found
        for crop, text in zip(crops, answers):
            found.texts.setdefault(crop.label, []).append(text)
            if text and text != navig_reference.NO_TEXT:
                search.record(Evidence(self.name, crop.where, text, contract.VLM, crop.score))
            if text and navig_reference.NO_TEXT not in text:
                found.lines.append(text)  # one map query per text read, duplicates included


def _lines(read: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """(line, score) in the `ocr` model's reading order, whitespace normalised."""
    texts, scores = read[contract.OCR_TEXTS], read[contract.OCR_SCORES]
    return [(" ".join(t.decode("utf-8").split()), float(s)) for t, s in zip(texts, scores)]
