"""Reads the signs. Fast: PP-OCR on the whole photo and every sign crop at once. Reference (NAVIG's
`getOSM`): the base VLM reads every crop of every label, houses included, one generation per crop."""

from __future__ import annotations

import asyncio

from navig.model_repository import contract
from navig.orchestrator import navig_reference, prompts
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool

SIGNS = ("road sign", "building sign")


class ReadSigns(SearchTool):
    name = "ocr"
    option = "use_ocr"
    models = (contract.OCR,)
    modes = frozenset({"fast", "reference"})
    evidence_rank = 20

    @classmethod
    def models_in(cls, pipeline: str) -> tuple[str, ...]:
        return (contract.VLM,) if pipeline == "reference" else cls.models

    async def run(self, search: Search) -> None:
        if search.reference:
            await self._read_with_the_vlm(search)
            return
        regions = search.regions(SIGNS)
        infer = search.models.infer
        reads = await asyncio.gather(
            *[infer(contract.OCR, {contract.OCR_IMAGE: pixels}, search.deadline) for _, pixels in regions]
        )
        seen: set[str] = set()
        for (where, _), out in zip(regions, reads):
            for text, score in zip(out[contract.OCR_TEXTS], out[contract.OCR_SCORES]):
                line = " ".join(text.decode("utf-8").split())
                if line and line.casefold() not in seen:
                    seen.add(line.casefold())
                    search.found.lines.append(line)
                    search.record(Evidence(self.name, where, line, contract.OCR, float(score)))

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
