"""The SEARCHER tools, in the order they start (a tool's `after` tools come before it).

Built-ins are listed here; other packages add theirs with an entry point in the group
`navig.search_tools` (`name = "package.module:ToolClass"`), or, in-process, with `register`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging

from navig.orchestrator.api.geolocator_pb2 import LocateOptions
from navig.orchestrator.searcher.describer import DescribeCrops
from navig.orchestrator.searcher.guidebook import ConsultGuidebook
from navig.orchestrator.searcher.language import LanguageOfText
from navig.orchestrator.searcher.map import SearchMap
from navig.orchestrator.searcher.ocr import ReadSigns
from navig.orchestrator.searcher.tool import SearchTool
from navig.orchestrator.settings import PIPELINES, Settings, SettingsError

log = logging.getLogger("navig.tools")
ENTRY_POINTS = "navig.search_tools"

_tools: dict[str, type[SearchTool]] = {}


RESERVED = ("queue", "decode", "reasoner", "searcher", "detector", "guesser", "vlm_guesser")  # stage names
OPTIONS = frozenset(LocateOptions.DESCRIPTOR.fields_by_name) & frozenset(Settings.model_fields)


def register(tool: type[SearchTool]) -> type[SearchTool]:
    """Adds a tool class (usable as a decorator). Its name must be new and its `after` tools known."""
    name = getattr(tool, "name", "")
    if not name.isidentifier() or name in RESERVED:
        raise ValueError(f"{tool.__qualname__}: a tool name is an identifier, not a stage name: {name!r}")
    if tool.option is not None and tool.option not in OPTIONS:
        field = f"option {tool.option!r} is no LocateOptions and Settings field"
        raise ValueError(f"{name}: {field} (a plugin's option is None)")
    modes = getattr(tool, "modes", None)
    if not isinstance(modes, frozenset) or not modes or not modes <= set(PIPELINES):
        raise ValueError(f"{name}: modes {modes!r} is no non-empty frozenset of {', '.join(PIPELINES)}")
    if _tools.get(name, tool) is not tool:
        raise ValueError(f"a tool named {name} is registered already ({_tools[name].__qualname__})")
    missing = [n for n in tool.after if n not in _tools]
    if missing:
        raise ValueError(f"{name} runs after {', '.join(missing)}: register those first")
    _tools[name] = tool
    return tool


def unregister(name: str) -> None:
    _tools.pop(name, None)


@functools.cache
def _plugins() -> None:
    """Tools other installed packages declare; loaded once, on first use of the registry, in an order
    where each comes after the tools it names in `after`. A plugin that fails is logged and left out."""
    pending = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
        try:
            pending.append(entry.load())
        except Exception:
            log.exception("search tool plugin %s (%s) does not load: left out", entry.name, entry.value)
    while pending:
        ready = [tool for tool in pending if all(name in _tools for name in tool.after)]
        for tool in ready or pending:  # none ready: what is left names tools nobody registers
            pending.remove(tool)
            try:
                register(tool)
            except (ValueError, AttributeError) as exc:
                log.error("search tool plugin %r left out: %s", tool, exc)


def registered() -> list[type[SearchTool]]:
    _plugins()
    return list(_tools.values())


def names() -> list[str]:
    return [tool.name for tool in registered()]


def builtin_names() -> list[str]:
    """Without loading plugins: for help texts, which must not fail with a broken plugin."""
    return [tool.name for tool in BUILTIN]


def create_tools(settings: Settings) -> list[SearchTool]:
    """Every registered tool this server is set up for, backends loaded (slow: call once, off the loop)."""
    tools = registered()
    unknown = sorted(set(settings.tools) - {t.name for t in tools})
    if unknown:
        raise SettingsError(
            f"settings for unknown tools: {', '.join(unknown)}; the tools are {', '.join(names())}"
        )
    created = [tool for tool_class in tools if (tool := tool_class.create(settings)) is not None]
    skipped = sorted({t.name for t in tools} - {t.name for t in created})
    if skipped:
        log.info("tools not set up on this server: %s", ", ".join(skipped))
    return created


BUILTIN = (ReadSigns, LanguageOfText, SearchMap, ConsultGuidebook, DescribeCrops)
for _builtin in BUILTIN:
    register(_builtin)
