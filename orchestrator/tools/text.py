"""Sign text -> the strings worth looking up on a map; shared by every map backend.

OCR lines on signs mix place names with distances, road numbers and generic words ("Zentrum 5 km",
"B 12", "Centre-ville"). Candidates are the n-grams of what is left; `normalise` makes names
comparable across case, accents and the letters NFKD cannot decompose (ł, ø, ß, ı ...).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

MAX_WORDS = 4  # longest place-name n-gram tried ("Ústí nad Labem", "Saint-Jean-de-Luz" is one token)
CJK_MAX_CHARS = 6  # CJK runs have no spaces: their substrings of 2..6 characters are candidates

# Letters NFKD leaves whole; mapped the way GeoNames' ASCII names spell them.
_FOLD = str.maketrans({"ł": "l", "ø": "o", "æ": "ae", "œ": "oe", "ß": "ss", "đ": "d", "ı": "i",
                       "þ": "th", "ð": "d", "ħ": "h", "ŧ": "t", "ŀ": "l"})  # fmt: skip
_TOKEN = re.compile(r"[^\W\d_][\w'’.-]*", re.UNICODE)
_ROAD_NUMBER = re.compile(r"^[A-Za-z]{1,3}[- ]?\d+[a-z]?$")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]+")

# Words on direction signs that are not place names (and connectors a name never starts or ends
# with), in the languages of the signs we read.
STOP_WORDS = frozenset(
    """
    km m mi min h ausfahrt zentrum bahnhof hbf hauptbahnhof stadtmitte flughafen hafen richtung
    umleitung centrum dworzec stacja lotnisko port centre centre-ville ville gare aeroport sortie
    toutes directions autres centro estacion salida aeropuerto puerto saida rodoviaria cidade
    stanica nadrazi letiste namesti palyaudvar belvaros kozpont repuloter centru gara aeroport
    iesire merkez gar havalimani otogar cikis sentrum stasjon lufthavn havn station stationen
    centralstation flygplats hamn avfart keskusta asema lentoasema satama lahto midbaer hofn
    luka kolodvor zracna centras stotis centrs stacija osta kesklinn jaam lennujaam stazione
    uscita aeroporto city downtown exit airport harbour harbor street road avenue north south
    east west str ul al via rue calle rua strasse gatan gata vej tie utca ulica
    nad pod am an im der die das de du des la le les del los las da do dos di sur sul och og i
    """.split()
)


def normalise(text: str) -> str:
    """Case-, accent- and spacing-insensitive form used as the lookup key."""
    folded = unicodedata.normalize("NFKD", text.casefold().translate(_FOLD))
    bare = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return " ".join(bare.replace("’", "'").split())


def words(line: str) -> list[str]:
    """The line's words, without numbers, distances and road numbers (B 12, A5, N-29, E 28)."""
    line = re.sub(r"\b[A-Za-z]{1,3}[- ]?\d+\b", " ", line)
    return [w.strip(".-'’") for w in _TOKEN.findall(line) if not _ROAD_NUMBER.match(w) and w.strip(".-'’")]


def candidates(lines: Sequence[str], max_words: int = MAX_WORDS) -> list[str]:
    """Distinct n-grams of the lines worth a lookup, longest first within each line."""
    seen: dict[str, None] = {}
    for line in lines:
        tokens = words(line)
        for n in range(min(max_words, len(tokens)), 0, -1):
            for i in range(len(tokens) - n + 1):
                gram = tokens[i : i + n]
                if normalise(gram[0]) in STOP_WORDS or normalise(gram[-1]) in STOP_WORDS:
                    continue  # "Düsseldorf km", "Ústí nad": a name does not start or end with these
                seen.setdefault(" ".join(gram))
        for run in _CJK.findall(line):
            for gram in _substrings(run):
                seen.setdefault(gram)
    return [c for c in seen if len(normalise(c)) >= 2 or _CJK.fullmatch(c)]


def queries(lines: Sequence[str]) -> list[str]:
    """One free-text query per line, for backends that do their own parsing (Nominatim, Photon)."""
    out: dict[str, None] = {}
    for line in lines:
        kept = [w for w in words(line) if normalise(w) not in STOP_WORDS]
        if kept:
            out.setdefault(" ".join(kept))
    return list(out)


def _substrings(run: str) -> Iterable[str]:
    for n in range(min(CJK_MAX_CHARS, len(run)), 1, -1):
        for i in range(len(run) - n + 1):
            yield run[i : i + n]
