"""The baseline's GUESSER prompt, assembled by NAVIG's rules (docs/navig-reference.md §8) in our own words.

NAVIG's repository has no licence, so none of its prompt strings is copied here. What is kept is the
assembly: the same sections in the same order, each included under the same condition, filled with
the same data in the same shape (Python reprs of the texts read and of the map results):

    base + intro + REASON + [MAP] + [DETAILS] + [GUIDEBOOK] + outro

- base, intro, REASON and outro are always there; REASON even when the REASONER said nothing (§8.3).
- MAP iff the map search left a non-empty result list (§8.3: `osm_results`, not the texts read); it
  shows the texts read per category without the answers that are exactly NO_TEXT, categories left
  empty dropped (§7.10), and the result list (§8.5).
- DETAILS iff some category has a comment (§8.6), categories in PROMPT_ORDER.
- GUIDEBOOK iff some category kept a guidebook hit (§8.7), its clues deduplicated (§5.9).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from navig.orchestrator.navig_reference import NO_TEXT, PROMPT_ORDER

BASE = (
    "You are an expert at working out where photos were taken. Look at this photo and name the "
    'country, the city and the coordinates, as JSON of the form {"country": "", "city": "", '
    '"latitude": 0.0, "longitude": 0.0} with nothing else in your answer. Give every field a value '
    "even when you are unsure: never leave one empty or call it unknown.\n\n"
)
INTRO = (
    "Other experts and tools collected the notes below. Some of them may be wrong or have nothing to "
    "do with this photo: weigh them and use the parts that help.\n"
)
REASON = "## Reasoning\nAn expert reasoned about the photo like this: {reasoning}\n"
MAP = (
    "## Map search\nText read on the photo, by object: {texts}. Searching a map for that text "
    "returned these places: {places}. The text and the places may not help.\n"
)
DETAILS = "## Details\nExperts commented on objects seen in the photo:{comments} Treat them as hints only.\n"
GUIDEBOOK = "## Guidebook\nParts of this photo resemble examples in a geography guidebook.{clues}\n"
OUTRO = (
    "With these notes as hints, estimate the place shown as precisely as you can, coordinates "
    "included when possible. Reply with JSON only, laid out like this:{\n"
    '    "country": "<country>",\n'
    '    "city": "<city>",\n'
    '    "latitude": <latitude>,\n'
    '    "longitude": <longitude>\n'
    "    }\n"
    "Fill every field with your best estimate and add no other words.\n"
)


def guesser_prompt(
    reasoning: str,
    texts: Mapping[str, Sequence[str]],
    map_results: Sequence[Mapping[str, str]] | None,
    comments: Mapping[str, str],
    clues: Mapping[str, Sequence[str]],
) -> str:
    """`texts`: the VLM's answers per category; `map_results`: the merged map results (None or empty:
    no MAP section); `comments`: per category, the comments joined as NAVIG joins them; `clues`: per
    category, the guidebook clues kept for the prompt (already deduplicated)."""
    parts = [BASE, INTRO, REASON.format(reasoning=reasoning)]
    if map_results:
        read = {c: [t for t in texts[c] if t != NO_TEXT] for c in PROMPT_ORDER if c in texts}
        read = {c: kept for c, kept in read.items() if kept}
        parts.append(MAP.format(texts=read, places=list(map_results)))
    commented = "".join(f"\n- {c}: {comments[c]}" for c in PROMPT_ORDER if comments.get(c))
    if commented:
        parts.append(DETAILS.format(comments=commented))
    found = "".join(f" Clues for the {c}: {' '.join(clues[c])}" for c in PROMPT_ORDER if clues.get(c))
    if found:
        parts.append(GUIDEBOOK.format(clues=found))
    parts.append(OUTRO)
    return "".join(parts)


_QUOTED_NUMBER_END = re.compile(r'(":\s*)(-?\d+\.?\d*)"')  # `"latitude": 48.1"`: a stray closing quote
_TRAILING_COMMA = re.compile(r",(\s*})")


def parse_answer(text: str) -> tuple[Any, str | None]:
    """NAVIG's parsing (§8.8): only the FIRST `{...}` of the output is tried, as is, then with a stray
    quote after a number dropped, then (from the original) with a trailing comma dropped. No range,
    type or country check. (None, why) when nothing parses."""
    match = re.search(r"\{.*?\}", text, re.DOTALL)
    if match is None:
        return None, f"no JSON object in the GUESSER output: {text[:80]!r}"
    first = match.group(0)
    for attempt in (first, _QUOTED_NUMBER_END.sub(r"\1\2", first), _TRAILING_COMMA.sub(r"\1", first)):
        try:
            return json.loads(attempt), None
        except json.JSONDecodeError:
            continue
    return None, f"the first {{...}} of the GUESSER output is not JSON: {first[:80]!r}"
