"""The tool registry and a request's options: fast, no Triton."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.errors import InvalidInput
from navig.orchestrator.options import run_options, server_defaults
from navig.orchestrator.searcher import registry
from navig.orchestrator.searcher.ocr import ReadSigns
from navig.orchestrator.searcher.search import Search
from navig.orchestrator.searcher.tool import SearchTool, ToolConfig
from navig.orchestrator.settings import Settings, SettingsError, load_settings


class CountConfig(ToolConfig):
    limit: int = 3


class Counter(SearchTool):
    """A plugin: on by default, with its own setting."""

    name = "counter"
    after = ("ocr",)
    Config = CountConfig

    async def run(self, search: Search) -> None:
        pass


@pytest.fixture
def counter() -> Iterator[type[Counter]]:
    registry.register(Counter)
    yield Counter
    registry.unregister(Counter.name)


def server_tools(settings: Settings) -> list[SearchTool]:
    """The tools `create_tools` would make, without loading the heavy backends."""
    return [ReadSigns(settings, ToolConfig()), Counter(settings, settings_config(settings))]


def settings_config(settings: Settings) -> CountConfig:
    return CountConfig.model_validate(settings.tools.get("counter", {}))


def test_builtins_are_registered_in_start_order():
    assert registry.names()[:5] == ["ocr", "language", "map", "guidebook", "describer"]


def test_register_refuses_clashes_unknown_prerequisites_and_bad_names(counter: type[Counter]):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(type("Other", (Counter,), {}))
    with pytest.raises(ValueError, match="register those first"):
        registry.register(type("Late", (Counter,), {"name": "late", "after": ("later",)}))
    for name in ("detector", "guesser", "not a name", ""):
        with pytest.raises(ValueError, match="identifier"):
            registry.register(type("Bad", (Counter,), {"name": name}))
    with pytest.raises(ValueError, match="no LocateOptions and Settings field"):
        registry.register(type("Bad", (Counter,), {"name": "bad", "option": "use_bad"}))
    assert registry.register(Counter) is Counter  # the same class again is a no-op


def test_tool_settings_are_validated_at_start(counter: type[Counter]):
    tool = Counter.create(load_settings(tools={"counter": {"limit": 7, "enabled": False}}))
    assert isinstance(tool, Counter) and tool.config.limit == 7 and not tool.on_by_default()
    with pytest.raises(SettingsError, match=r"tools.counter.*limt"):
        Counter.create(load_settings(tools={"counter": {"limt": 7}}))
    with pytest.raises(SettingsError, match="switched by use_ocr"):
        ReadSigns.create(load_settings(tools={"ocr": {"enabled": False}}))
    with pytest.raises(SettingsError, match="unknown tools: countr"):
        registry.create_tools(load_settings(tools={"countr": {}}))


def test_options_merge_the_request_the_legacy_fields_and_the_settings(counter: type[Counter]):
    settings = load_settings(use_ocr=False, max_new_tokens=64, tools={"counter": {"enabled": False}})
    tools = server_tools(settings)
    defaults = server_defaults(settings, tools)
    assert defaults.tools == frozenset() and defaults.max_new_tokens == 64
    assert defaults.return_reasoning and defaults.return_evidence
    legacy = run_options(pb.LocateOptions(use_ocr=True, return_evidence=False), settings, tools)
    assert legacy.tools == {"ocr"} and not legacy.return_evidence
    by_name = run_options(
        pb.LocateOptions(use_ocr=True, tools={"ocr": False, "counter": True}), settings, tools
    )
    assert by_name.tools == {"counter"}  # the map wins over the legacy field


@pytest.mark.parametrize(
    ("request_options", "message"),
    [
        (pb.LocateOptions(max_new_tokens=0), "max_new_tokens must be in 1..4096, got 0"),
        (pb.LocateOptions(max_new_tokens=5000), "max_new_tokens must be in 1..4096, got 5000"),
        (pb.LocateOptions(tools={"ocr": True, "sundial": False}), "no SEARCHER tool named sundial"),
    ],
)
def test_bad_options_are_invalid_input(request_options: pb.LocateOptions, message: str):
    with pytest.raises(InvalidInput, match=message):
        run_options(request_options, load_settings(), [])


def test_a_registered_tool_the_server_has_not_set_up_is_just_off():
    settings = load_settings()  # no guidebook_dir: no guidebook tool on this server
    options = run_options(pb.LocateOptions(tools={"guidebook": True}), settings, [])
    assert options.tools == frozenset()


def test_plugins_load_in_dependency_order_and_a_broken_one_is_left_out(monkeypatch, caplog):
    class Second(Counter):
        name = "second"
        after = ("counter",)

    class Broken(Counter):
        name = "broken"
        after = ("nobody",)

    class Entry:
        def __init__(self, name: str, tool: object) -> None:
            self.name, self.value, self.tool = name, f"tests:{name}", tool

        def load(self) -> object:
            if isinstance(self.tool, Exception):
                raise self.tool
            return self.tool

    entries = [Entry("second", Second), Entry("broken", Broken), Entry("counter", Counter),
               Entry("crashes", ImportError("no module named plates"))]  # fmt: skip
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: entries)
    registry._plugins.cache_clear()
    try:
        assert registry.names()[-2:] == ["counter", "second"]
        assert "crashes" in caplog.text and "broken" in caplog.text
    finally:
        for name in ("counter", "second"):
            registry.unregister(name)
        registry._plugins.cache_clear()
