"""Where built indexes (gazetteer, default guidebook) are kept between runs."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NAVIG_CACHE_DIR"


def cache_root() -> Path:
    """$NAVIG_CACHE_DIR, else ~/.cache/navig."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "navig")
