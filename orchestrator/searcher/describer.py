"""The base VLM's one-sentence comment on the first houses and signs, all requests at once."""

from __future__ import annotations

import asyncio

from navig.model_repository import contract
from navig.orchestrator import prompts
from navig.orchestrator.images import downscale
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.ocr import SIGNS
from navig.orchestrator.searcher.search import Crop, Search
from navig.orchestrator.searcher.tool import SearchTool


class DescribeCrops(SearchTool):
    name = "describer"
    option = "use_describer"
    models = (contract.VLM,)
    evidence_rank = 50

    async def run(self, search: Search) -> None:
        settings = self.settings
        houses = [c for c in search.crops if c.label == "house"][: settings.describe_houses]
        signs = [c for c in search.crops if c.label in SIGNS][: settings.describe_signs]
        chosen = [c for c in houses + signs if min(c.pixels.shape[:2]) >= settings.min_image_side]

        async def describe(crop: Crop) -> str:
            # the VLMs' view, as for the REASONER: a large crop would cost thousands of image tokens
            pixels = downscale(crop.pixels, settings.vlm_image_max_side, settings.min_image_side)
            prompt, budget = prompts.DESCRIBE[crop.label], search.options.max_new_tokens
            pieces = search.models.generate(contract.VLM, prompt, search.deadline, pixels, budget)
            return "".join([piece async for piece in pieces]).strip()

        comments = await asyncio.gather(*(describe(crop) for crop in chosen))
        for crop, comment in zip(chosen, comments):
            search.record(Evidence(self.name, crop.where, comment, contract.VLM, crop.score))
