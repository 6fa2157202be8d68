"""Builds the tool backends the settings ask for, once, at server start."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.base import Guidebook, LanguagePrior, MapSearch
from navig.orchestrator.tools.countries import capitals

log = logging.getLogger("navig.tools")


@dataclass(frozen=True)
class Tools:
    map_search: MapSearch | None = None
    guidebook: Guidebook | None = None
    language_prior: LanguagePrior | None = None


def load_tools(settings: Settings) -> Tools:
    """The configured backends; anything slow (index builds, model loads) happens here, not per request."""
    capitals()  # the evidence guesser's fallback coordinates, read once
    language_prior = _language_prior(settings.language_high_accuracy)
    return Tools(_map_search(settings, language_prior), _guidebook(settings), language_prior)


@functools.cache  # one per process: the models are read-only and large (up to ~1 GB)
def _language_prior(high_accuracy: bool) -> LanguagePrior:
    from navig.orchestrator.tools.language import LanguagePriorModel

    return LanguagePriorModel(high_accuracy)


def _map_search(settings: Settings, language_prior: LanguagePrior) -> MapSearch:
    if settings.map_backend != "gazetteer":
        from navig.orchestrator.tools.http_map import http_map_search

        return http_map_search(settings)
    from navig.orchestrator.tools.gazetteer.index import GazetteerIndex
    from navig.orchestrator.tools.gazetteer.search import Gazetteer

    def progress(step: str, done: int, total: int) -> None:
        log.info("building the gazetteer index: %s (%d/%d)", step, done, total)

    return Gazetteer(GazetteerIndex.open(settings.gazetteer_dir, progress=progress), language_prior)


def _guidebook(settings: Settings) -> Guidebook | None:
    if settings.guidebook_dir is None:
        return None
    from navig.orchestrator.tools.guidebook.index import GuidebookIndex

    return GuidebookIndex.load(settings.guidebook_dir)
