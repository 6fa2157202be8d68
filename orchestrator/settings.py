"""Orchestrator settings: defaults < a YAML file < NAVIG_* environment variables < explicit overrides.

One flat model so `navig serve --config FILE` and `NAVIG_MAX_CONCURRENCY=8` name the same
thing. Unknown keys in the file are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, YamlConfigSettingsSource

from navig.model_repository import contract

# `fast`: the product (PP-OCR, capped describer, grammar-constrained GUESSER). `reference`: NAVIG's
# calls, thresholds and GUESSER prompt (orchestrator/navig_reference.py; docs/navig-reference.md).
PipelineName = Literal["fast", "reference"]
PIPELINES: tuple[str, ...] = get_args(PipelineName)
Pipeline = StrEnum("Pipeline", {name: name for name in PIPELINES})  # the CLI's choices (--pipeline)

DEFAULT_POOL = "default"  # triton_url's pool: every model no other pool names

_SETTINGS_FILE: ContextVar[Path | None] = ContextVar("navig_settings_file", default=None)


class SettingsError(ValueError):
    """The settings file or environment is unusable; the message says which key and why."""


def read_tokens(path: Path) -> list[str]:
    """Bearer tokens from a file: one per line, blank lines and `#` lines ignored. ValueError names the
    line of a token that could never arrive in an `authorization` header (never the token itself)."""
    tokens = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        token = line.strip()
        if token and not token.startswith("#"):
            _check_token(token, f"{path} line {number}")
            tokens.append(token)
    return tokens


def _check_token(token: str, where: str) -> None:
    if not all(33 <= ord(c) <= 126 for c in token):
        raise ValueError(f"the token at {where} has spaces or non-ASCII characters")


class TritonPool(BaseModel):
    """Triton replicas serving some models behind one gRPC target; calls round-robin over them."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(
        min_length=1, description="host:port, ipv4:a:port,b:port or dns:///service:port (gRPC target syntax)"
    )
    models: list[str] = Field(min_length=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NAVIG_", extra="forbid")

    # --- network ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int | None = Field(9464, ge=0, le=65535, description="Prometheus /metrics; None disables")
    triton_url: str = "127.0.0.1:8001"
    triton_routes: dict[str, str] = Field(
        default_factory=dict,
        description="model -> gRPC URL of the Triton serving it (gpu: the VLMs' server); others: triton_url",
    )
    pools: dict[str, TritonPool] = Field(
        default_factory=dict,
        description="Triton pools by name: {target, models}; models in no pool go to triton_url (the default "
        "pool). NAVIG_POOLS is JSON",
    )
    triton_keepalive_s: float = Field(
        0,
        ge=0,
        description="gRPC keepalive pings to Triton during calls; 0: off (Triton must permit the rate)",
    )
    max_message_bytes: int = Field(32 * 2**20, ge=2**16)

    # --- load control ----------------------------------------------------------------------
    max_concurrency: int = Field(4, ge=1, description="requests run at once")
    max_queue: int = Field(16, ge=0, description="requests waiting for a slot; beyond: RESOURCE_EXHAUSTED")
    default_timeout_s: float = Field(300.0, gt=0, description="deadline when the client sets none")
    shutdown_grace_s: float = Field(30.0, ge=0, description="time in-flight requests get to finish")
    health_poll_s: float = Field(1.0, gt=0, description="how often Triton model readiness is checked")
    # the embedded Triton is restarted when it exits; more restarts than this in the window: exit 1
    triton_max_restarts: int = Field(5, ge=0, description="restarts allowed within triton_restart_window_s")
    triton_restart_window_s: float = Field(600.0, gt=0)
    triton_restart_backoff_s: float = Field(1.0, ge=0, description="first restart's delay; doubles")

    # --- input limits ----------------------------------------------------------------------
    max_image_bytes: int = Field(20 * 2**20, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height; larger = decompression bomb")
    min_image_side: int = Field(contract.MIN_IMAGE_SIDE, ge=contract.MIN_IMAGE_SIDE, description="both sides")

    # --- pipeline --------------------------------------------------------------------------
    pipeline: PipelineName = Field("fast", description="fast (the product) or reference (NAVIG's calls)")
    use_reasoner: bool = True
    use_ocr: bool = True
    use_map_search: bool = True
    use_guidebook: bool = True
    use_describer: bool = True
    use_vlm_guesser: bool = True
    max_new_tokens: int = Field(
        128, ge=1, le=contract.MAX_NEW_TOKENS, description="fast pipeline; reference: NAVIG's 256"
    )
    vlm_image_max_side: int = Field(
        640, ge=contract.MIN_IMAGE_SIDE, description="photos are downscaled to this for the VLMs"
    )
    box_threshold: float = Field(
        0.35, ge=0, le=1, description="fast pipeline's GroundingDINO box score (reference: NAVIG's 0.65)"
    )
    min_crop_side: int = Field(32, ge=1, description="fast pipeline: smaller detections are not worth a crop")
    max_crops: int = Field(12, ge=0, description="fast pipeline: per photo, best scores first")
    reference_crops_per_label: int = Field(
        16, ge=0, description="reference pipeline: the first N per label in query order (NAVIG: no cap)"
    )
    describe_houses: int = Field(3, ge=0, description="house crops the describer comments on (NAVIG: 3)")
    describe_signs: int = Field(3, ge=0, description="sign crops the describer comments on")

    # --- result cache (orchestrator/result_cache.py: why it is off by default) ---------------
    result_cache_entries: int = Field(0, ge=0, description="Locate answers kept (LRU); 0: off")
    result_cache_ttl_s: float = Field(3600.0, gt=0, description="a stored answer is reused this long at most")
    triton_response_cache_mb: int = Field(
        0, ge=0, description="embedded Triton: response cache (MiB) for the encoders that enable it; 0: off"
    )

    # --- tools -----------------------------------------------------------------------------
    map_backend: Literal["gazetteer", "nominatim", "photon"] = "gazetteer"
    map_url: str | None = Field(None, description="base URL of the nominatim/photon backend")
    map_user_agent: str = "navig-serve/0.1 (+https://github.com/navig-serve)"
    map_limit: int = Field(5, ge=1, le=50)
    map_timeout_s: float = Field(10.0, gt=0)
    map_retries: int = Field(3, ge=0)
    map_min_interval_s: float | None = Field(
        None,
        ge=0,
        description="spacing between requests; None: 1 s for nominatim (its usage policy), 0 for photon",
    )
    map_cache_size: int = Field(1024, ge=0)
    gazetteer_dir: Path | None = Field(None, description="None: ~/.cache/navig/gazetteer, built on first use")
    language_high_accuracy: bool = Field(True, description="lingua's full models (~1 GB) or trigrams (60 MB)")
    guidebook_dir: Path | None = Field(None, description="`navig guidebook build` output; None: none")
    guidebook_k: int = Field(3, ge=1)
    guidebook_threshold: float = Field(0.25, ge=-1, le=1)
    tools: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="SEARCHER tools' own settings by tool name (docs/adding-a-tool.md)"
    )

    # --- security --------------------------------------------------------------------------
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain; with tls_key_file: TLS")
    tls_key_file: Path | None = Field(None, validate_default=True, description="PEM key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(None, description="PEM CA; set: mTLS required")
    auth_tokens_file: Path | None = Field(None, description="bearer tokens, one a line; # comments")
    auth_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="bearer tokens; NAVIG_AUTH_TOKENS is comma separated"
    )
    reflection: bool = Field(True, description="gRPC reflection; behind the token check when tokens are set")
    metrics_host: str | None = Field(None, description="None: host if loopback or insecure, else 127.0.0.1")
    insecure: bool = Field(False, description="allow a non-loopback bind without TLS or tokens")

    # --- logs ------------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("triton_routes")
    @classmethod
    def _known_models(cls, routes: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(routes) - set(contract.MODELS))
        if unknown:
            models = ", ".join(contract.MODELS)
            raise ValueError(f"no model named {', '.join(unknown)}; the models are {models}")
        return routes

    @field_validator("pools")
    @classmethod
    def _pool_models(cls, pools: dict[str, TritonPool]) -> dict[str, TritonPool]:
        if DEFAULT_POOL in pools:
            raise ValueError(f"'{DEFAULT_POOL}' is triton_url's pool (the models in no other pool)")
        seen: dict[str, str] = {}
        for name, pool in pools.items():
            unknown = sorted(set(pool.models) - set(contract.MODELS))
            if unknown:
                models = ", ".join(contract.MODELS)
                raise ValueError(f"pool {name}: no model named {', '.join(unknown)}; the models are {models}")
            for model in pool.models:
                if model in seen:
                    raise ValueError(f"model {model} is in pools {seen[model]} and {name}: one pool each")
                seen[model] = name
        return pools

    @model_validator(mode="after")
    def _routes_or_pools(self) -> Settings:
        both = sorted(set(self.triton_routes) & {m for pool in self.pools.values() for m in pool.models})
        if both:
            raise ValueError(f"{', '.join(both)} in both triton_routes and pools; name each model once")
        return self

    @field_validator("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        return path

    @field_validator("tls_key_file")
    @classmethod
    def _key_with_cert(cls, key: Path | None, info: ValidationInfo) -> Path | None:
        if "tls_cert_file" in info.data and (info.data["tls_cert_file"] is None) != (key is None):
            raise ValueError("tls_cert_file and tls_key_file go together (a PEM certificate and its key)")
        return key

    @field_validator("tls_client_ca_file")
    @classmethod
    def _client_ca_with_tls(cls, ca: Path | None, info: ValidationInfo) -> Path | None:
        if ca is not None and info.data.get("tls_key_file", ca) is None:
            raise ValueError("needs tls_cert_file and tls_key_file: client certificates are checked by TLS")
        return ca

    @field_validator("auth_tokens_file")
    @classmethod
    def _tokens_in_file(cls, path: Path | None) -> Path | None:
        try:
            if path is not None and not read_tokens(path):
                raise ValueError(f"no tokens in {path} (one a line; blank lines and # comments are ignored)")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from exc
        return path

    @field_validator("auth_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value

    @field_validator("auth_tokens")
    @classmethod
    def _printable_tokens(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for number, token in enumerate(tokens, 1):
            _check_token(token.get_secret_value(), f"position {number}")
        return tokens

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any, **_: Any
    ) -> tuple[Any, ...]:
        file_settings = YamlConfigSettingsSource(settings_cls, yaml_file=_SETTINGS_FILE.get())
        return init_settings, env_settings, file_settings


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Settings from `path` (YAML), the environment and `overrides` (None values are ignored)."""
    if path is not None and not path.is_file():
        raise SettingsError(f"settings file {path} does not exist")
    token = _SETTINGS_FILE.set(path)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in exc.errors())
        raise SettingsError(f"invalid settings{f' in {path}' if path else ''}: {problems}") from exc
    finally:
        _SETTINGS_FILE.reset(token)
