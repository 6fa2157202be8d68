"""Guidebook entries and their JSONL file format, validated row by row so errors name the line.

One JSON object per line:
  id            str, unique in the file
  text          str, the clue (CLIP's text encoder reads its first 77 tokens)
  country_code  ISO 3166-1 alpha-2 (any case, stored upper case) or "" when not tied to one country
  source        str, where the clue comes from (shown as evidence)
  image         optional path, relative to the JSONL file: an example photo; the entry's vector is then
                the L2-normalised mean of its text and image embeddings
Any other field is kept as metadata and written back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class GuidebookError(ValueError):
    """A guidebook file or folder is missing, malformed or does not fit the embedder."""


class GuideEntry(BaseModel):
    """One clue; extra fields are kept (users attach their own metadata)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    country_code: str = ""
    source: str = ""
    image: str | None = None

    @field_validator("country_code")
    @classmethod
    def _alpha2(cls, value: str) -> str:
        value = value.strip().upper()
        if value and (len(value) != 2 or not value.isascii() or not value.isalpha()):
            raise ValueError(f"country_code must be an ISO 3166-1 alpha-2 code or empty, got {value!r}")
        return value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is blank")
        return value


def parse_entries(lines: Iterable[str], origin: str = "<jsonl>") -> list[GuideEntry]:
    """Validated entries; the first bad line raises GuidebookError naming `origin:line`."""
    entries: list[GuideEntry] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{origin}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GuidebookError(f"{where}: not JSON: {exc.msg}") from exc
        if not isinstance(row, dict):
            raise GuidebookError(f"{where}: expected a JSON object, got {type(row).__name__}")
        try:
            entry = GuideEntry.model_validate(row)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise GuidebookError(f"{where}: {problems}") from exc
        if entry.id in seen:
            raise GuidebookError(f"{where}: duplicate id {entry.id!r} (first on line {seen[entry.id]})")
        seen[entry.id] = number
        entries.append(entry)
    return entries


def read_entries(path: Path) -> list[GuideEntry]:
    """A guidebook JSONL file -> validated entries (an empty file is an error: nothing to index)."""
    if not path.is_file():
        raise GuidebookError(f"{path}: no such file")
    try:
        with path.open(encoding="utf-8") as lines:
            entries = parse_entries(lines, str(path))
    except UnicodeDecodeError as exc:
        raise GuidebookError(f"{path}: not UTF-8 text: {exc}") from exc
    if not entries:
        raise GuidebookError(f"{path}: no entries")
    return entries


def dump_entries(entries: Iterable[GuideEntry | dict]) -> str:
    """JSONL text, one object per line, non-ASCII kept readable."""
    rows = (e.model_dump(exclude_none=True) if isinstance(e, GuideEntry) else e for e in entries)
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_entries(path: Path, entries: Iterable[GuideEntry | dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_entries(entries), encoding="utf-8")
