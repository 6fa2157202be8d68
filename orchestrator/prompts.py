"""Every word the pipeline says to a model, in one place and versioned.

Change a prompt here and bump PROMPTS_VERSION: responses report it with the model versions,
so evaluation results stay attributable to the wording that produced them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pycountry

PROMPTS_VERSION = "2026-12-01.1"  # the GUESSER schema: country names, bounded city and coordinates

REASONER = (
    "You are an expert GeoGuessr player. Analyse this photo to work out where it was taken. "
    "Describe the clues step by step: vegetation and climate, terrain, architecture, road markings, "
    "vehicles, language and script of any text, and signs. Then say which country and region they "
    "point to and why."
)

DESCRIBE = {
    "house": "Which country or region does the architecture of this house suggest? Answer in one sentence.",
    "road sign": "Which country or region does the design of this road sign suggest? Answer in one sentence.",
    "building sign": "Which country or region does the style of this sign suggest? Answer in one sentence.",
}

GUESSER = """You are an expert GeoGuessr player. Decide where this photo was taken.

Analysis of the photo:
{reasoning}

Evidence found by tools:
{evidence}

Answer with the country, the city and the coordinates in JSON."""

# The GUESSER's answer shape, enforced token by token by the grammar, so that every answer parses
# and names a known country: the country is one of ISO 3166's names, the city a JSON string without
# escapes or control characters (xgrammar's `maxLength` strings let raw control characters through,
# which strict JSON rejects), the coordinates numbers in range with at most 6 decimals. The
# answer's length is therefore bounded: GUESS_MAX_TOKENS is enough for the longest one.
COUNTRY_NAMES = sorted({n for c in pycountry.countries for n in (c.name, getattr(c, "common_name", c.name))})
CITY_MAX_CHARS = 48
GUESS_SCHEMA = {
    "type": "object",
    "properties": {
        "country": {"enum": COUNTRY_NAMES},
        "city": {"type": "string", "pattern": f'^[^"\\\\\\x00-\\x1f]{{0,{CITY_MAX_CHARS}}}$'},
        "latitude": {"type": "number", "minimum": -90, "maximum": 90},
        "longitude": {"type": "number", "minimum": -180, "maximum": 180},
    },
    "required": ["country", "city", "latitude", "longitude"],
    "additionalProperties": False,
}
GUESS_SCHEMA_JSON = json.dumps(GUESS_SCHEMA, separators=(",", ":"))


def longest_guess() -> str:
    """The longest text the grammar allows, as the engines format it (", " and ": " separators)."""
    longest = {
        "country": max(COUNTRY_NAMES, key=lambda name: len(name.encode())),
        "city": "\U0010ffff" * CITY_MAX_CHARS,  # 4 UTF-8 bytes per character: the most a character costs
        "latitude": -89.999999,
        "longitude": -179.999999,
    }
    return json.dumps(longest, ensure_ascii=False)


# Byte-level BPE: a token is at least one byte. +1 for the end-of-sequence token.
GUESS_MAX_TOKENS = len(longest_guess().encode()) + 1


def guesser_prompt(reasoning: str, evidence: Sequence[str]) -> str:
    return GUESSER.format(
        reasoning=reasoning.strip() or "(none)",
        evidence="\n".join(f"- {line}" for line in evidence) or "(none)",
    )
