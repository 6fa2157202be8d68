"""Reading image files given on the command line, with errors a person can act on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from navig.model_repository import contract

IMAGE_SUFFIXES = frozenset(contract.IMAGE_SUFFIXES)  # what the server decodes: a .bmp would only be refused


class ImageReadError(ValueError):
    pass


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; directories expanded to the images they contain, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise ImageReadError(f"{path}: no such file or directory")
    return found


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
