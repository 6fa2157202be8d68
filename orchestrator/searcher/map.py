"""The text read, looked up on a map: the offline GeoNames gazetteer, or Nominatim/Photon over HTTP.

Fast: every line read, in one search, with the language prior. Reference (NAVIG's `getOSM`): one
search per text read, its best MAP_RESULTS_PER_TEXT places, no language prior.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from pathlib import Path

from rich.console import Console

from navig.orchestrator import navig_reference
from navig.orchestrator.results import Evidence
from navig.orchestrator.searcher.language import language_prior
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.base import MapSearch

log = logging.getLogger("navig.tools")


class SearchMap(SearchTool):
    name = "map"
    option = "use_map_search"
    after = ("ocr",)
    modes = frozenset({"fast", "reference"})
    evidence_rank = 10  # a place named on a sign is the strongest evidence there is

    def __init__(self, settings: Settings, config: ToolConfig) -> None:
        super().__init__(settings, config)
        self.backend = _backend(settings)

    @classmethod
    def prepare(cls, settings: Settings, model_repository: Path | None, console: Console) -> Settings:
        if settings.use_map_search and settings.map_backend == "gazetteer":
            from navig.orchestrator.tools.gazetteer.cli import open_with_progress

            open_with_progress(settings.gazetteer_dir, console)  # built once, with a progress bar
        return settings

    async def run(self, search: Search) -> None:
        found = search.found
        if not found.lines:
            return
        if search.reference:
            texts = [" ".join(text.split()) for text in found.lines]  # the whole answer is one query
            per_text = navig_reference.MAP_RESULTS_PER_TEXT
            answers = await asyncio.gather(*(self.backend_without_prior.search([t], per_text) for t in texts))
            places = [place for answer in answers for place in answer[:per_text]]
        else:
            places = await self.backend.search(found.lines, self.settings.map_limit)
        found.places.extend(places)  # added to, never replaced: other tools may add candidates too
        for p in places:
            where = ", ".join(part for part in (p.name, p.admin1, p.country_code) if part)
            search.record(Evidence(self.name, p.matched, where, p.source, p.score, p.country_code,
                                   p.latitude, p.longitude))  # fmt: skip

    @functools.cached_property
    def backend_without_prior(self) -> MapSearch:
        """The backend, without a language prior if it has one (the gazetteer): the reference pipeline's."""
        if getattr(self.backend, "language_prior", None) is None:
            return self.backend
        plain = copy.copy(self.backend)  # shares the index
        plain.language_prior = None  # type: ignore[attr-defined]
        return plain

    async def aclose(self) -> None:
        await self.backend.aclose()


def _backend(settings: Settings) -> MapSearch:
    if settings.map_backend != "gazetteer":
        from navig.orchestrator.tools.http_map import http_map_search

        return http_map_search(settings)
    from navig.orchestrator.tools.gazetteer.index import GazetteerIndex
    from navig.orchestrator.tools.gazetteer.search import Gazetteer

    def progress(step: str, done: int, total: int) -> None:
        log.info("building the gazetteer index: %s (%d/%d)", step, done, total)

    prior = language_prior(settings.language_high_accuracy)
    return Gazetteer(GazetteerIndex.open(settings.gazetteer_dir, progress=progress), prior)
