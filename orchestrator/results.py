"""What a pipeline run produces, independent of the wire format (`wire.py` maps it to protobuf)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class Component(enum.Enum):
    VLM_GUESSER = "vlm_guesser"
    EVIDENCE_GUESSER = "evidence_guesser"
    NONE = "none"


@dataclass(frozen=True)
class Location:
    country: str
    country_code: str
    city: str
    latitude: float
    longitude: float
    confidence: float


@dataclass(frozen=True)
class Evidence:
    tool: str  # detector, ocr, map, language, guidebook, describer
    query: str
    result: str
    source: str
    score: float = 0.0
    country_code: str = ""
    latitude: float | None = None
    longitude: float | None = None


@dataclass(frozen=True)
class StageTiming:
    stage: str
    start_ms: float  # since the request was accepted
    duration_ms: float


@dataclass(frozen=True)
class Degradation:
    component: str
    reason: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


Event = ReasoningDelta | Evidence | StageTiming
Emit = Callable[[Event], None]


@dataclass
class Outcome:
    location: Location | None
    answered_by: Component
    reasoning: str = ""
    evidence: list[Evidence] = field(default_factory=list)
    timings: list[StageTiming] = field(default_factory=list)
    degraded: list[Degradation] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    guesser_output: str = ""
