from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PipelineMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PIPELINE_MODE_UNSPECIFIED: _ClassVar[PipelineMode]
    FAST: _ClassVar[PipelineMode]
    REFERENCE: _ClassVar[PipelineMode]

class Component(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPONENT_UNSPECIFIED: _ClassVar[Component]
    VLM_GUESSER: _ClassVar[Component]
    EVIDENCE_GUESSER: _ClassVar[Component]
    NONE: _ClassVar[Component]
PIPELINE_MODE_UNSPECIFIED: PipelineMode
FAST: PipelineMode
REFERENCE: PipelineMode
COMPONENT_UNSPECIFIED: Component
VLM_GUESSER: Component
EVIDENCE_GUESSER: Component
NONE: Component

class LocateRequest(_message.Message):
    __slots__ = ("image", "options", "request_id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    options: LocateOptions
    request_id: str
    def __init__(self, image: _Optional[bytes] = ..., options: _Optional[_Union[LocateOptions, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class LocateOptions(_message.Message):
    __slots__ = ("use_reasoner", "use_ocr", "use_map_search", "use_guidebook", "use_describer", "use_vlm_guesser", "max_new_tokens", "return_reasoning", "return_evidence", "tools", "pipeline", "no_cache")
    class ToolsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bool
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bool] = ...) -> None: ...
    USE_REASONER_FIELD_NUMBER: _ClassVar[int]
    USE_OCR_FIELD_NUMBER: _ClassVar[int]
    USE_MAP_SEARCH_FIELD_NUMBER: _ClassVar[int]
    USE_GUIDEBOOK_FIELD_NUMBER: _ClassVar[int]
    USE_DESCRIBER_FIELD_NUMBER: _ClassVar[int]
    USE_VLM_GUESSER_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RETURN_REASONING_FIELD_NUMBER: _ClassVar[int]
    RETURN_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    NO_CACHE_FIELD_NUMBER: _ClassVar[int]
    use_reasoner: bool
    use_ocr: bool
    use_map_search: bool
    use_guidebook: bool
    use_describer: bool
    use_vlm_guesser: bool
    max_new_tokens: int
    return_reasoning: bool
    return_evidence: bool
    tools: _containers.ScalarMap[str, bool]
    pipeline: PipelineMode
    no_cache: bool
    def __init__(self, use_reasoner: _Optional[bool] = ..., use_ocr: _Optional[bool] = ..., use_map_search: _Optional[bool] = ..., use_guidebook: _Optional[bool] = ..., use_describer: _Optional[bool] = ..., use_vlm_guesser: _Optional[bool] = ..., max_new_tokens: _Optional[int] = ..., return_reasoning: _Optional[bool] = ..., return_evidence: _Optional[bool] = ..., tools: _Optional[_Mapping[str, bool]] = ..., pipeline: _Optional[_Union[PipelineMode, str]] = ..., no_cache: _Optional[bool] = ...) -> None: ...

class Location(_message.Message):
    __slots__ = ("country", "country_code", "city", "latitude", "longitude", "confidence")
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_CODE_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    country: str
    country_code: str
    city: str
    latitude: float
    longitude: float
    confidence: float
    def __init__(self, country: _Optional[str] = ..., country_code: _Optional[str] = ..., city: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ..., confidence: _Optional[float] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("tool", "query", "result", "source", "score", "country_code", "latitude", "longitude")
    TOOL_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_CODE_FIELD_NUMBER: _ClassVar[int]
    LATITUDE_FIELD_NUMBER: _ClassVar[int]
    LONGITUDE_FIELD_NUMBER: _ClassVar[int]
    tool: str
    query: str
    result: str
    source: str
    score: float
    country_code: str
    latitude: float
    longitude: float
    def __init__(self, tool: _Optional[str] = ..., query: _Optional[str] = ..., result: _Optional[str] = ..., source: _Optional[str] = ..., score: _Optional[float] = ..., country_code: _Optional[str] = ..., latitude: _Optional[float] = ..., longitude: _Optional[float] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "start_ms", "duration_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    START_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    start_ms: float
    duration_ms: float
    def __init__(self, stage: _Optional[str] = ..., start_ms: _Optional[float] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Degradation(_message.Message):
    __slots__ = ("component", "reason")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    component: str
    reason: str
    def __init__(self, component: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LocateResponse(_message.Message):
    __slots__ = ("location", "answered_by", "reasoning", "evidence", "timings", "models", "degraded", "request_id", "reasons", "guesser_output", "total_ms", "pipeline", "cached")
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    REASONING_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    GUESSER_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    location: Location
    answered_by: Component
    reasoning: str
    evidence: _containers.RepeatedCompositeFieldContainer[Evidence]
    timings: _containers.RepeatedCompositeFieldContainer[StageTiming]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    degraded: _containers.RepeatedCompositeFieldContainer[Degradation]
    request_id: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    guesser_output: str
    total_ms: float
    pipeline: PipelineMode
    cached: bool
    def __init__(self, location: _Optional[_Union[Location, _Mapping]] = ..., answered_by: _Optional[_Union[Component, str]] = ..., reasoning: _Optional[str] = ..., evidence: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[StageTiming, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., degraded: _Optional[_Iterable[_Union[Degradation, _Mapping]]] = ..., request_id: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., guesser_output: _Optional[str] = ..., total_ms: _Optional[float] = ..., pipeline: _Optional[_Union[PipelineMode, str]] = ..., cached: _Optional[bool] = ...) -> None: ...

class ReasoningDelta(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class LocateEvent(_message.Message):
    __slots__ = ("reasoning", "evidence", "stage", "result")
    REASONING_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    reasoning: ReasoningDelta
    evidence: Evidence
    stage: StageTiming
    result: LocateResponse
    def __init__(self, reasoning: _Optional[_Union[ReasoningDelta, _Mapping]] = ..., evidence: _Optional[_Union[Evidence, _Mapping]] = ..., stage: _Optional[_Union[StageTiming, _Mapping]] = ..., result: _Optional[_Union[LocateResponse, _Mapping]] = ...) -> None: ...
