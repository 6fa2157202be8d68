"""The base VLM's one-sentence comment on house and sign crops, all requests at once. Fast: the first
`describe_houses` houses and `describe_signs` signs. Reference (NAVIG's `getComment`): the first
COMMENT_HOUSES houses and every road-sign and building-sign crop."""

from __future__ import annotations

import asyncio

from navig.model_repository import contract
from navig.orchestrator import navig_reference, prompts
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.ocr import SIGNS
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool


class DescribeCrops(SearchTool):
    name = "describer"
    option = "use_describer"
    models = (contract.VLM,)
    modes = frozenset({"fast", "reference"})
    evidence_rank = 50

    async def run(self, search: Search) -> None:
        settings = self.settings
        if search.reference:
            houses = [c for c in search.crops if c.label == "house"][: navig_reference.COMMENT_HOUSES]
            chosen = houses + [c for c in search.crops if c.label in SIGNS]
        else:
            houses = [c for c in search.crops if c.label == "house"][: settings.describe_houses]
            signs = [c for c in search.crops if c.label in SIGNS][: settings.describe_signs]
            chosen = [c for c in houses + signs if min(c.pixels.shape[:2]) >= settings.min_image_side]
        comments = await asyncio.gather(
            *(search.ask_vlm(prompts.DESCRIBE[crop.label], crop.pixels) for crop in chosen)
        )
        for crop, comment in zip(chosen, comments):
            search.found.comments.setdefault(crop.label, []).append(comment)
            search.record(Evidence(self.name, crop.where, comment, contract.VLM, crop.score))
