"""A request's options: built once, from the request and the server's settings, and carried everywhere.

Unset request fields take the server's settings. Switches of SEARCHER tools come from the tool
registry: the built-ins also answer to their `LocateOptions` fields (`use_ocr`, ...), every tool to
`LocateOptions.tools[name]`, which wins when both are set. A tool runs only in the pipelines its
class names (`SearchTool.modes`). In the `reference` pipeline every VLM call gets NAVIG's token
budget (256) unless the request sets `max_new_tokens`; the `max_new_tokens` setting is the fast one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from navig.model_repository import contract
from navig.orchestrator import navig_reference, wire
from navig.orchestrator.api import geolocator_pb2 as pb
from navig.orchestrator.errors import InvalidInput
from navig.orchestrator.searcher import registry
from navig.orchestrator.searcher.tool import SearchTool
from navig.orchestrator.settings import Settings


@dataclass(frozen=True)
class RunOptions:
    use_reasoner: bool
    use_vlm_guesser: bool
    tools: frozenset[str]  # names of the SEARCHER tools this request runs
    max_new_tokens: int  # per free-text generation (REASONER, describer; reference: every VLM call)
    return_reasoning: bool = True
    return_evidence: bool = True
    pipeline: str = "fast"  # one of settings.PIPELINES


def run_options(request: pb.LocateOptions, settings: Settings, tools: Sequence[SearchTool]) -> RunOptions:
    """Raises InvalidInput for a token budget out of range, a pipeline that is no PipelineMode, or a
    switch naming no tool of this server."""

    def pick(name: str, default: bool) -> bool:
        return getattr(request, name) if request.HasField(name) else default

    if request.pipeline == pb.PIPELINE_MODE_UNSPECIFIED:
        pipeline = settings.pipeline
    elif wire.pipeline_name(request.pipeline):
        pipeline = wire.pipeline_name(request.pipeline)
    else:  # proto3 enums are open: a newer client's value arrives as a bare number
        names = ", ".join(pb.PipelineMode.Name(mode) for mode in wire.PIPELINES.values())
        raise InvalidInput(f"pipeline must be {names} or unset, got {request.pipeline}")
    default_tokens = settings.max_new_tokens if pipeline == "fast" else navig_reference.MAX_NEW_TOKENS
    max_new_tokens = request.max_new_tokens if request.HasField("max_new_tokens") else default_tokens
    if not 1 <= max_new_tokens <= contract.MAX_NEW_TOKENS:
        raise InvalidInput(f"max_new_tokens must be in 1..{contract.MAX_NEW_TOKENS}, got {max_new_tokens}")
    unknown = sorted(set(request.tools) - set(registry.names()))
    if unknown:  # a registered tool this server has not configured (no guidebook index...) is just off
        known = ", ".join(registry.names())
        raise InvalidInput(f"no SEARCHER tool named {', '.join(unknown)}; the tools are {known}")
    enabled = set()
    for tool in tools:
        if pipeline not in tool.modes:
            continue
        on = pick(tool.option, tool.on_by_default()) if tool.option else tool.on_by_default()
        if request.tools.get(tool.name, on):
            enabled.add(tool.name)
    return RunOptions(
        use_reasoner=pick("use_reasoner", settings.use_reasoner),
        use_vlm_guesser=pick("use_vlm_guesser", settings.use_vlm_guesser),
        tools=frozenset(enabled),
        max_new_tokens=max_new_tokens,
        return_reasoning=pick("return_reasoning", True),
        return_evidence=pick("return_evidence", True),
        pipeline=pipeline,
    )


def server_defaults(settings: Settings, tools: Sequence[SearchTool]) -> RunOptions:
    """What a request that sets nothing runs."""
    return run_options(pb.LocateOptions(), settings, tools)
