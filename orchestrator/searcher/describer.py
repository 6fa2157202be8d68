"""The base VLM's one-sentence comment on house and sign crops, all requests at once. Fast: the first
`describe_houses` houses and `describe_signs` signs. Reference (NAVIG's `getComment`): the first
COMMENT_HOUSES houses and every road-sign and building-sign crop."""

from __future__ import annotations

import asyncio

from navig.model_repository import contract
from navig.orchestrator import navig_reference, prompts
from navig.orchestrator.images import downscale
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.ocr import SIGNS
from navig.orchestrator.searcher.search import Crop, Search
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
            comments = await asyncio.gather(
                *(search.ask_vlm(prompts.DESCRIBE[crop.label], crop.pixels) for crop in chosen)
            )
            self._record(search, chosen, comments)
            return
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
        self._record(search, chosen, comments)

    def _record(self, search: Search, chosen: list[Crop], comments: list[str]) -> None:
        for crop, comment in zip(chosen, comments):
            search.found.comments.setdefault(crop.label, []).append(comment)
            search.record(Evidence(self.name, crop.where, comment, contract.VLM, crop.score))
