"""Orchestrator settings: defaults < a YAML file < NAVIG_* environment variables < explicit overrides.

One flat model so `navig serve --config FILE` and `NAVIG_MAX_CONCURRENCY=8` name the same
thing. Unknown keys in the file are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

_SETTINGS_FILE: ContextVar[Path | None] = ContextVar("navig_settings_file", default=None)


class SettingsError(ValueError):
    """The settings file or environment is unusable; the message says which key and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NAVIG_", extra="forbid")

    # --- network ---------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    metrics_port: int | None = Field(9464, ge=0, le=65535, description="Prometheus /metrics; None disables")
    triton_url: str = "127.0.0.1:8001"
    max_message_bytes: int = Field(32 * 2**20, ge=2**16)

    # --- load control ----------------------------------------------------------------------
    max_concurrency: int = Field(4, ge=1, description="requests run at once")
    max_queue: int = Field(16, ge=0, description="requests waiting for a slot; beyond: RESOURCE_EXHAUSTED")
    default_timeout_s: float = Field(300.0, gt=0, description="deadline when the client sets none")
    shutdown_grace_s: float = Field(30.0, ge=0, description="time in-flight requests get to finish")
    health_poll_s: float = Field(1.0, gt=0, description="how often Triton model readiness is checked")

    # --- input limits ----------------------------------------------------------------------
    max_image_bytes: int = Field(20 * 2**20, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1, description="width x height; larger = decompression bomb")
    min_image_side: int = Field(28, ge=1, description="Qwen2-VL's smallest patch grid")

    # --- pipeline --------------------------------------------------------------------------
    use_reasoner: bool = True
    use_ocr: bool = True
    use_map_search: bool = True
    use_guidebook: bool = True
    use_describer: bool = True
    use_vlm_guesser: bool = True
    max_new_tokens: int = Field(128, ge=1, le=4096)
    vlm_image_max_side: int = Field(640, ge=28, description="photos are downscaled to this for the VLMs")
    box_threshold: float = Field(0.35, ge=0, le=1, description="GroundingDINO box score (NAVIG: 0.35)")
    min_crop_side: int = Field(32, ge=1, description="smaller detections are not worth a crop")
    max_crops: int = Field(12, ge=0, description="per photo, best scores first")
    describe_houses: int = Field(3, ge=0, description="house crops the describer comments on (NAVIG: 3)")
    describe_signs: int = Field(3, ge=0, description="sign crops the describer comments on")

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

    # --- logs ------------------------------------------------------------------------------
    log_level: str = "INFO"
    log_json: bool = True

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
