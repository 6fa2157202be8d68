"""What a SEARCHER tool is. The searcher, health, metrics, request options, the GUESSER's evidence
order and the CLI read every fact about a tool from here, so adding one is one new module plus
one registry line (docs/adding-a-tool.md).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from navig.orchestrator.settings import Settings, SettingsError

if TYPE_CHECKING:
    from rich.console import Console

    from navig.orchestrator.searcher.search import Search


class ToolConfig(BaseModel):
    """A tool's own settings, under `tools: {<name>: {...}}` in the settings file (or NAVIG_TOOLS as
    JSON). Subclass it to add keys; unknown keys are errors, as everywhere in the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True  # on when a request does not say; the built-ins use their `use_*` setting instead


class SearchTool(abc.ABC):
    """One SEARCHER step over the detector's crops. One instance per server, shared by all requests:
    request state lives in the `Search` passed to `run`."""

    name: ClassVar[str]  # evidence `tool`, metric and stage label, degradation, switch and CLI name
    option: ClassVar[str | None] = None  # the built-ins' `LocateOptions`/`Settings` field (`use_ocr`)
    after: ClassVar[tuple[str, ...]] = ()  # tools whose findings it reads: it runs when they succeeded
    models: ClassVar[tuple[str, ...]] = ()  # Triton models it calls: health waits for them when it is on
    # pipelines it runs in; a plugin does not know NAVIG's rules, so it is off in `reference` unless it says
    modes: ClassVar[frozenset[str]] = frozenset({"fast"})
    evidence_rank: ClassVar[int] = 100  # its evidence's place in the GUESSER prompt, lowest first
    Config: ClassVar[type[ToolConfig]] = ToolConfig

    def __init__(self, settings: Settings, config: ToolConfig) -> None:
        self.settings = settings
        self.config = config

    @classmethod
    def create(cls, settings: Settings) -> SearchTool | None:
        """The tool with its backends loaded (slow work happens here, once); None when this server is
        not set up for it (e.g. no guidebook index), so it is skipped. Raises SettingsError."""
        section = settings.tools.get(cls.name, {})
        if cls.option and "enabled" in section:
            raise SettingsError(
                f"tools.{cls.name}.enabled: the built-in {cls.name} is switched by {cls.option}"
            )
        try:
            config = cls.Config.model_validate(section)
        except ValidationError as exc:
            problems = "; ".join(
                f"tools.{cls.name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            raise SettingsError(f"invalid settings: {problems}") from None
        return cls(settings, config)

    @classmethod
    def prepare(cls, settings: Settings, model_repository: Path | None, console: Console) -> Settings:
        """One-time builds before serving, with progress on `console` (an index, an embedding of a
        guidebook with the repository's CLIP); returns the settings to serve with."""
        return settings

    @classmethod
    def models_in(cls, pipeline: str) -> tuple[str, ...]:
        """The Triton models it calls in this pipeline (`models` unless a mode calls others)."""
        return cls.models

    def on_by_default(self) -> bool:
        return bool(getattr(self.settings, self.option)) if self.option else self.config.enabled

    @abc.abstractmethod
    async def run(self, search: Search) -> None:
        """Reads `search` (photo, crops, findings of `after` tools) and adds evidence with `search.record`.
        A failure raises `PipelineError` or `ToolUnavailable`: the tool is degraded, the search goes on."""

    async def aclose(self) -> None:
        """Releases connections when the server stops."""
        return None
