"""Evaluation datasets: a CSV of images with their true coordinates, in one of three layouts.

The layout is detected from the header (column names are case-insensitive, surrounding blanks ignored):

generic
    ``image`` (or ``path`` / ``file`` / ``filename``), ``latitude`` / ``lat``, ``longitude`` / ``lon`` /
    ``lng``, optional ``country`` / ``country_code`` (an ISO code or an English name) and ``city``::

        image,latitude,longitude,country,city
        photos/zurich.jpg,47.3769,8.5417,CH,Zürich

Im2GPS3k
    ``im2gps3k_places365.csv``: ``IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,...``;
    ``IMG_ID`` is the image's file name, in a folder given with ``--images`` (no country or city)::

        IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban
        1000_4960478404_3a1bbc0a1e_o.jpg,someone,37.7749,-122.4194,2,10,200,0.1,0.2,0.7

GWS-style (Street-View datasets such as GWS15k and OSV-5M)
    ``id,latitude,longitude,country,city,...`` or ``id,lat,lon,country,...``; the image is
    ``<images>/<id>.jpg`` (``.jpeg`` and ``.png`` are tried too)::

        id,latitude,longitude,country,city
        8394021,48.8566,2.3522,FR,Paris

Relative image paths are resolved against ``--images`` when given, else the CSV's folder: that folder is
the dataset root, and an item's ``key`` (what resuming matches on) is its image path relative to it.
A missing or unreadable image is not a dataset error (the run records it as UNREADABLE), but a dataset
none of whose images exist is: the images folder is then almost certainly wrong.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

IMAGE_COLUMNS = ("image", "path", "file", "filename")
LATITUDE_COLUMNS = ("latitude", "lat")
LONGITUDE_COLUMNS = ("longitude", "lon", "lng")
COUNTRY_COLUMNS = ("country", "country_code")
GWS_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(ValueError):
    """A dataset that cannot be evaluated; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class EvalItem:
    image: Path
    latitude: float
    longitude: float
    country: str = ""  # ISO code or English name, as the dataset gives it; "" when unknown
    city: str = ""
    key: str = ""  # image path relative to the dataset root: the identity used for resuming


@dataclass(frozen=True)
class Layout:
    name: str  # "generic", "im2gps3k" or "gws"
    image: str  # column holding the image path, file name or id
    latitude: str
    longitude: str
    country: str | None
    city: str | None


def detect_layout(header: list[str], where: str) -> Layout:
    """Which layout a (lower-cased) header is; `where` names the file for the error message."""

    def first(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in header), None)

    latitude, longitude = first(LATITUDE_COLUMNS), first(LONGITUDE_COLUMNS)
    image = first(IMAGE_COLUMNS)
    name = "generic"
    if image is None and "img_id" in header:
        image, name = "img_id", "im2gps3k"
    elif image is None and "id" in header:
        image, name = "id", "gws"
    missing = [
        label
        for label, column in (
            ("an image column (image, path, file, filename, IMG_ID or id)", image),
            ("latitude (or lat)", latitude),
            ("longitude (or lon, lng)", longitude),
        )
        if column is None
    ]
    if missing:
        raise DatasetError(f"{where}: line 1: missing column {', '.join(missing)}; header is {header}")
    assert image and latitude and longitude
    return Layout(name, image, latitude, longitude, first(COUNTRY_COLUMNS), first(("city",)))


def load_dataset(csv_path: Path, images: Path | None = None, limit: int | None = None) -> list[EvalItem]:
    """The items of a dataset CSV, in file order (the first `limit` if given)."""
    root = (images or csv_path.parent).resolve()
    if images is not None and not images.is_dir():
        raise DatasetError(f"{images}: --images is not a folder")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            return _read(csv.reader(handle), str(csv_path), root, limit)
    except FileNotFoundError:
        raise DatasetError(f"{csv_path}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{csv_path}: cannot read as a UTF-8 CSV ({exc})") from None


def _read(reader: csv.reader, where: str, root: Path, limit: int | None) -> list[EvalItem]:
    header = next(reader, None)
    if not header:
        raise DatasetError(f"{where}: empty file; expected a header line")
    header = [column.strip().lower() for column in header]
    layout = detect_layout(header, where)
    column = {name: index for index, name in reversed(list(enumerate(header)))}  # first occurrence wins
    resolve = _gws_image if layout.name == "gws" else _plain_image
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for row in reader:
        if limit is not None and len(items) >= limit:
            break
        if not any(cell.strip() for cell in row):
            continue
        line = reader.line_num

        def cell(name: str | None, row: list[str] = row) -> str:
            index = column.get(name) if name else None
            return row[index].strip() if index is not None and index < len(row) else ""

        def fail(message: str, line: int = line) -> DatasetError:
            return DatasetError(f"{where}: line {line}: {message}")

        name = cell(layout.image)
        if not name:
            raise fail(f"empty {layout.image!r}")
        latitude = _number(cell(layout.latitude), layout.latitude, -90.0, 90.0, fail)
        longitude = _number(cell(layout.longitude), layout.longitude, -180.0, 180.0, fail)
        image = resolve(root, name)
        key = _key(image, root)
        if key in seen:
            raise fail(f"image {key} already listed on line {seen[key]}")
        seen[key] = line
        items.append(EvalItem(image, latitude, longitude, cell(layout.country), cell(layout.city), key))
    if items and not any(item.image.is_file() for item in items[:1000]):
        hint = "" if layout.name == "generic" else "; pass the images folder with --images"
        raise DatasetError(f"{where}: none of its images is in {root} (first: {items[0].image}){hint}")
    return items


def _number(text: str, column: str, low: float, high: float, fail: Callable[[str], DatasetError]) -> float:
    try:
        value = float(text)
    except ValueError:
        raise fail(f"{column} {text!r} is not a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise fail(f"{column} {text} is out of range [{low:g}, {high:g}]")
    return value


def _plain_image(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _gws_image(root: Path, image_id: str) -> Path:
    """`<root>/<id>.jpg`, or the first of .jpeg/.png that exists; .jpg if none does (reported unreadable)."""
    candidates = [root / f"{image_id}{suffix}" for suffix in GWS_SUFFIXES]
    return next((path for path in candidates if path.is_file()), candidates[0])


def _key(image: Path, root: Path) -> str:
    try:
        return image.relative_to(root).as_posix()
    except ValueError:
        return image.as_posix()  # an absolute path outside the root is its own key
