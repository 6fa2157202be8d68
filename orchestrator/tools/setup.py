"""Builds the tool backends the settings ask for, once, at server start."""

from __future__ import annotations

from dataclasses import dataclass

from navig.orchestrator.settings import Settings
from navig.orchestrator.tools.base import Guidebook, LanguagePrior, MapSearch


@dataclass(frozen=True)
class Tools:
    map_search: MapSearch | None = None
    guidebook: Guidebook | None = None
    language_prior: LanguagePrior | None = None


def load_tools(settings: Settings) -> Tools:
    raise NotImplementedError  # wired once the gazetteer, guidebook and HTTP backends land
