"""The language of the text read, as a prior over the countries that speak it (CLDR populations)."""

from __future__ import annotations

import functools

from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.base import LanguagePrior


@functools.cache  # one per process: the models are read-only and large (up to ~1 GB); the map shares it
def language_prior(high_accuracy: bool) -> LanguagePrior:
    from navig.orchestrator.tools.language import LanguagePriorModel

    return LanguagePriorModel(high_accuracy)


class LanguageOfText(SearchTool):
    name = "language"
    after = ("ocr",)
    modes = frozenset({"fast"})  # NAVIG has no language prior
    evidence_rank = 30

    def __init__(self, settings: Settings, config: ToolConfig) -> None:
        super().__init__(settings, config)
        self.prior = language_prior(settings.language_high_accuracy)

    async def run(self, search: Search) -> None:
        found = search.found
        if not found.lines:
            return
        found.language, prior = self.prior(found.lines)
        found.country_prior.update(prior)  # added to, never replaced: other tools may vote too
        for code, weight in sorted(prior.items(), key=lambda kv: -kv[1])[:3]:
            result = f"{found.language} is spoken in {code}"
            search.record(Evidence(self.name, " | ".join(found.lines), result, "CLDR", weight, code))
