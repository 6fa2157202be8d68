"""Validates and decodes request images once, before any model sees them.

Every rejection is an `ImageRejected` whose message the client gets as INVALID_ARGUMENT. The bytes
come from anyone, so any exception Pillow raises while parsing them (open, decode, EXIF, orientation,
conversion) is the image's fault and a rejection, never an INTERNAL. MemoryError is not: the server is
short of memory, not the image wrong, so it propagates (INTERNAL, logged) instead of passing as either
success or the client's error. The pixel count is checked from the header before decoding, so a
decompression bomb costs nothing.

Choices for what is valid but unusual:
- animated WEBP / APNG and multi-picture JPEG (MPO): the first frame, what a viewer shows still;
- 16-bit grayscale PNG (mode I;16): scaled to 8 bits (its high byte), like 16-bit RGB PNGs, which
  Pillow already opens as 8-bit RGB;
- CMYK and YCbCr JPEG: Pillow's conversion to RGB (Adobe's inverted CMYK included);
- EXIF orientation outside 1..8 (0, 9, 65535, ...): ignored, the image is served as stored; EXIF that
  cannot be parsed at all: rejected (the bytes are corrupt, like any other part of the file).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from navig.model_repository import contract

FORMATS = contract.IMAGE_FORMATS
# Modes with a faithful RGB conversion; float, 32-bit and 1-bit images are not photos we serve.
MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B")  # 16-bit grayscale PNG: served as 8-bit grayscale
DETAIL_CHARS = 200  # of Pillow's own message, quoted in the rejection


# Pillow warns of images above its own pixel limit; `max_pixels` below (checked from the header) is ours.
# A process-wide filter, set once: `warnings.catch_warnings` per call is not thread-safe, and decoding
# runs in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageRejected(ValueError):
    """The request's image is not one we can serve; the message says why."""


@contextmanager
def _parsing(what: str) -> Iterator[None]:
    """Turns any failure of Pillow on the client's bytes into a rejection that says `what` failed."""
    try:
        yield
    except (ImageRejected, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("image dimensions are absurdly large (decompression bomb)") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        detail = " ".join(str(exc).split())[:DETAIL_CHARS] or type(exc).__name__
        raise ImageRejected(f"{what}: {detail}") from exc


def decode_image(data: bytes, max_bytes: int, max_pixels: int, min_side: int) -> np.ndarray:
    """RGB uint8 [H, W, 3], upright per EXIF orientation, both sides >= `min_side`; else ImageRejected."""
    if not data:
        raise ImageRejected("image is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"image is {len(data):,} bytes; the limit is {max_bytes:,}")
    with _parsing("image header is corrupt or truncated"):
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageRejected(f"not a {'/'.join(FORMATS)} image") from None
    with image:
        name = image.format or "image"
        width, height = image.size
        if width * height > max_pixels:
            pixels = width * height
            raise ImageRejected(f"image is {width}x{height} = {pixels:,} pixels; limit {max_pixels:,}")
        if min(width, height) < min_side:
            raise ImageRejected(f"image is {width}x{height}; both sides must be at least {min_side} px")
        if max(width, height) > contract.MAX_ASPECT_RATIO * min(width, height):
            raise ImageRejected(
                f"image is {width}x{height}; the aspect ratio may be at most {contract.MAX_ASPECT_RATIO}"
            )
        if image.mode not in MODES + SIXTEEN_BIT:
            raise ImageRejected(f"unsupported image mode {image.mode!r}; use 8-bit RGB, grayscale or palette")
        with _parsing(f"{name} image is corrupt or truncated"):
            image.load()  # the first frame of an animation
        with _parsing(f"{name} image has corrupt EXIF metadata"):
            upright = ImageOps.exif_transpose(image)
        with _parsing(f"{name} image (mode {image.mode}) cannot be converted to RGB"):
            return _rgb(upright)


def _rgb(image: Image.Image) -> np.ndarray:
    if image.mode in SIXTEEN_BIT:
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    return np.asarray(image.convert("RGB"))


def downscale(image: np.ndarray, max_side: int, min_side: int) -> np.ndarray:
    """The photo as the VLMs see it: their cost grows with pixels, their reading of a scene does not.

    The short side never drops below `min_side` (the VLM's smallest patch grid): a long, thin photo
    keeps a long side above `max_side` rather than becoming too thin to serve.
    """
    height, width = image.shape[:2]
    scale = max(max_side / max(height, width), min_side / min(height, width))
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def jpeg_round_trip(pixels: np.ndarray) -> np.ndarray | None:
    """The crop as NAVIG's VLM and CLIP see it: saved as JPEG (Pillow's default quality) and read back,
    since NAVIG writes every crop to a file; None where Pillow cannot save it (an empty crop), which
    NAVIG skips."""
    buffer = io.BytesIO()
    try:
        Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="JPEG")
    except (ValueError, OSError):
        return None
    with Image.open(buffer) as image:
        return np.asarray(image.convert("RGB"))


def resize_bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(height, width) with Pillow's bilinear filter on uint8, as GroundingDINO's `T.RandomResize` (and
    Hugging Face's GroundingDINO processor) resize a photo: the same pixels NAVIG's detector sees."""
    height, width = size
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR))
