"""Every word the pipeline says to a model, in one place and versioned.

Change a prompt here and bump PROMPTS_VERSION: responses report it with the model versions,
so evaluation results stay attributable to the wording that produced them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

PROMPTS_VERSION = "2026-11-24.1"

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

# The GUESSER's answer shape, enforced token by token by the grammar; `answer.py` validates values.
GUESS_SCHEMA = {
    "type": "object",
    "properties": {
        "country": {"type": "string", "maxLength": 48},
        "city": {"type": "string", "maxLength": 48},
        "latitude": {"type": "number"},
        "longitude": {"type": "number"},
    },
    "required": ["country", "city", "latitude", "longitude"],
    "additionalProperties": False,
}
GUESS_SCHEMA_JSON = json.dumps(GUESS_SCHEMA, separators=(",", ":"))


def guesser_prompt(reasoning: str, evidence: Sequence[str]) -> str:
    return GUESSER.format(
        reasoning=reasoning.strip() or "(none)",
        evidence="\n".join(f"- {line}" for line in evidence) or "(none)",
    )
