"""Reads the signs: PP-OCR on the whole photo and every sign crop at once."""

from __future__ import annotations

import asyncio

from navig.model_repository import contract
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool

SIGNS = ("road sign", "building sign")


class ReadSigns(SearchTool):
    name = "ocr"
    option = "use_ocr"
    models = (contract.OCR,)
    evidence_rank = 20

    async def run(self, search: Search) -> None:
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
