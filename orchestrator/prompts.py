"""Every word the pipeline says to a model, in one place and versioned.

Change a prompt here and bump PROMPTS_VERSION: responses report it with the model versions,
so evaluation results stay attributable to the wording that produced them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pycountry

from navig.orchestrator.navig_reference import NO_TEXT

PROMPTS_VERSION = "2026-12-01.2"  # the reference pipeline's prompts: READ_TEXT, REFERENCE_GUESSER

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


# --- the reference pipeline (NAVIG's calls) ------------------------------------------------------------
# NAVIG's repository has no licence, so its prompt strings are not copied: these follow the structure
# and intent of its prompts (docs/navig-reference.md sections 7-9) in our own words. The REASONER and the
# describer use the prompts above in both pipelines.

# The base VLM reading one crop for the map search (NAVIG's `osm_gen`): the text, or NO_TEXT.
READ_TEXT = (
    "Read the writing in this picture that could help tell where it is, such as shop names, the text of "
    "street or road signs, place names or other markers. Reply with that writing exactly as it appears "
    "and add no explanation. If the picture has no such writing, or it is illegible or says nothing "
    f"about a place, reply {NO_TEXT}."
)

# The reference GUESSER's prompt: one template per section, concatenated in NAVIG's order (base, intro,
# reason, map, details, guidebook, outro) under NAVIG's conditions (`reference_guesser_prompt`).
REFERENCE_GUESSER = {
    "base": (
        "You are a geolocation specialist. Work out where this photo was taken: its country, its city "
        'and its coordinates. Reply with JSON of the form {{"country": "", "city": "", "latitude": 0.0, '
        '"longitude": 0.0}} and nothing else. Give a best guess at every level even when you are unsure, '
        "and never leave a value empty or unknown.\n\n"
    ),
    "intro": (
        "Below are notes from other specialists and from searches. Use them to place the photo, but "
        "weigh them with care: they can be wrong or have nothing to do with it, so keep what is useful "
        "and ignore the rest. The notes:\n"
    ),
    "reason": "[Specialist's reasoning] {reasoning}\n",
    "map": (
        "[Map search] Text read on the signs and buildings of the photo: {texts}. A map search for that "
        "text found these places: {places}. The text and the places may have nothing to do with where "
        "the photo was taken.\n"
    ),
    "details": (
        "[Details] Specialists looked at single objects in the photo and concluded:{comments}\n"
        "Take these as hints only.\n"
    ),
    "guidebook": (
        "[Guidebook] Parts of this photo look like examples in a geolocation guidebook, whose notes say:"
        "{clues}\n"
    ),
    "item": "\n{label}: {text}",  # one line of the details or the guidebook section
    "outro": (
        "Using these notes as a guide, estimate as precisely as you can where the photo was taken, down "
        'to the coordinates if you can. Reply with JSON only, in exactly this shape: {{"country": '
        '"<country name>", "city": "<city name>", "latitude": <number>, "longitude": <number>}}. Fill in '
        "every value with your best estimate and add no other text.\n"
    ),
}


def reference_guesser_prompt(
    reasoning: str,
    texts: Mapping[str, Sequence[str]],
    places: Sequence[Mapping[str, Any]],
    comments: Mapping[str, Sequence[str]],
    clues: Mapping[str, Sequence[str]],
) -> str:
    """NAVIG's assembly: base, intro and the REASONER's text (even empty) always; the map section when
    the map found places; details when a label has a comment; the guidebook when a label has a clue; the
    outro. Labels in the order given (the caller's: NAVIG's PROMPT_ORDER)."""
    sections = REFERENCE_GUESSER
    prompt = [sections["base"].format(), sections["intro"], sections["reason"].format(reasoning=reasoning)]
    if places:
        text_json = json.dumps(dict(texts), ensure_ascii=False)
        prompt.append(
            sections["map"].format(texts=text_json, places=json.dumps(list(places), ensure_ascii=False))
        )
    details = "".join(sections["item"].format(label=k, text=" ".join(v)) for k, v in comments.items() if v)
    if details:
        prompt.append(sections["details"].format(comments=details))
    found = "".join(sections["item"].format(label=k, text=" ".join(v)) for k, v in clues.items() if v)
    if found:
        prompt.append(sections["guidebook"].format(clues=found))
    prompt.append(sections["outro"].format())
    return "".join(prompt)
