"""Validates and decodes request images once, before any model sees them.

Every rejection is an `ImageRejected` whose message the client gets as INVALID_ARGUMENT. The
pixel count is checked from the header before decoding, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("JPEG", "PNG", "WEBP")
# Modes with a faithful RGB conversion; 16-bit, float and 1-bit images are not photos we serve.
MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr")


class ImageRejected(ValueError):
    """The request's image is not one we can serve; the message says why."""


def decode_image(data: bytes, max_bytes: int, max_pixels: int, min_side: int) -> np.ndarray:
    """RGB uint8 [H, W, 3], upright per EXIF orientation."""
    if not data:
        raise ImageRejected("image is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"image is {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected(f"not a {'/'.join(FORMATS)} image") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise ImageRejected("image dimensions are absurdly large (decompression bomb)") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"image is {width}x{height} = {width * height:,} pixels; limit {max_pixels:,}")
    if min(width, height) < min_side:
        raise ImageRejected(f"image is {width}x{height}; both sides must be at least {min_side} px")
    if image.mode not in MODES:
        raise ImageRejected(f"unsupported image mode {image.mode!r}; use 8-bit RGB, grayscale or palette")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageRejected(f"{image.format} image is corrupt or truncated: {exc}") from None
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def downscale(image: np.ndarray, max_side: int) -> np.ndarray:
    """The photo as the VLMs see it: their cost grows with pixels, their reading of a scene does not."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
