"""Validates the VLM GUESSER's JSON: the grammar guarantees its shape, not that it makes sense.

Under the GUESSER's grammar (`prompts.GUESS_SCHEMA`) an answer always parses and names a known
country; these checks still hold for engines without one. Invalid answers (unknown country,
coordinates out of range, a JSON cut off when the token budget ran out: "truncated") raise
`InvalidAnswer`; the pipeline then answers with the evidence guesser and
flags `vlm_guesser` as degraded with the reason.

The reference pipeline's GUESSER writes free text (NAVIG has no grammar): `parse_lenient` finds its JSON
the way NAVIG's `parse_json` does (docs/navig-reference.md 8.8), then applies the same checks.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import pycountry


class InvalidAnswer(ValueError):
    pass


@dataclass(frozen=True)
class VlmAnswer:
    country: str  # pycountry's English short name
    country_code: str
    city: str
    latitude: float
    longitude: float


def parse_answer(text: str) -> VlmAnswer:
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):  # valid, then cut
            raise InvalidAnswer(f"truncated: the JSON stopped after {len(text)} characters") from None
        raise InvalidAnswer(f"not JSON ({exc})") from None
    return _checked(answer)


# NAVIG's parse_json, rewritten from its description: the first {...} (shortest, across lines) only;
# a ```json fence stripped; json.loads; then twice more, each from the unrepaired text: with a stray
# quote after a number value removed ('"latitude": 48.85",'), and with commas before a '}' removed.
_FIRST_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)
_QUOTE_AFTER_NUMBER = re.compile(r'(":\s*)(-?\d+\.?\d*)"')
_COMMA_BEFORE_BRACE = re.compile(r",(\s*\})")


def lenient_json(text: str) -> Any:
    """The object NAVIG's parser would read from a free-text answer; None when it reads none."""
    match = _FIRST_OBJECT.search(text)
    if match is None:
        return None
    part = match.group(0).strip().removeprefix("```json").removesuffix("```").strip()
    repairs = (part, _QUOTE_AFTER_NUMBER.sub(r"\1\2", part), _COMMA_BEFORE_BRACE.sub(r"\1", part))
    for candidate in repairs:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None


def parse_lenient(text: str) -> VlmAnswer:
    """A free-text answer: `lenient_json`, then `parse_answer`'s checks."""
    answer = lenient_json(text)
    if answer is None:
        raise InvalidAnswer("no JSON object in the answer")
    return _checked(answer)


def _checked(answer: Any) -> VlmAnswer:
    if not isinstance(answer, dict):
        raise InvalidAnswer("not a JSON object")
    latitude, longitude = _number(answer, "latitude", 90), _number(answer, "longitude", 180)
    country = lookup_country(str(answer.get("country", "")))
    city = str(answer.get("city", "")).strip()
    return VlmAnswer(country.name, country.alpha_2, city, latitude, longitude)


def lookup_country(name: str) -> Any:  # pycountry does not export its record type
    """ISO record for a name, official name, common name or alpha-2/3 code."""
    name = name.strip()
    try:
        return pycountry.countries.lookup(name)
    except LookupError:
        raise InvalidAnswer(f"unknown country {name[:40]!r}") from None


def _number(answer: dict, key: str, limit: float) -> float:
    value = answer.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidAnswer(f"{key} is not a finite number")
    if abs(value) > limit:
        raise InvalidAnswer(f"{key} {value} is outside -{limit}..{limit}")
    return float(value)
