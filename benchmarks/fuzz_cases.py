"""Fuzz cases for the Geolocator: (kind, image bytes, options), reproducible from (seed, index).

Each kind says which statuses a correct server answers with its defaults (`max_image_bytes` 20 MiB,
`max_image_pixels` 40 M, `min_image_side` 28): invalid kinds only INVALID_ARGUMENT; mutations of valid
images either OK (they still decode) or INVALID_ARGUMENT. Never INTERNAL or UNKNOWN. Cases are made one
at a time from `random.Random`, so 10,000 of them (some 30 MiB) never sit in memory together.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from navig.orchestrator.api import geolocator_pb2 as pb

OK, INVALID = "OK", "INVALID_ARGUMENT"
MAX_NEW_TOKENS = 8  # a valid image runs the whole pipeline; a small budget keeps a fuzz run affordable
MIN_SIDE, MAX_PIXELS, MAX_BYTES = 28, 40_000_000, 20 * 2**20  # the server's defaults
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "RGBA", "L", "LA", "P"), "WEBP": ("RGB", "RGBA")}


@dataclass(frozen=True)
class Case:
    kind: str
    image: bytes
    options: pb.LocateOptions


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float  # share of a run, relative: ~9% of cases decode and run the whole pipeline
    expect: frozenset[str]  # the statuses a correct server answers
    make: Callable[[random.Random], bytes]


# --- images -------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def picture(rng: random.Random, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A gradient with noise: compresses like a photo, unlike pure noise."""
    pixels = np.random.default_rng(rng.getrandbits(32))
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), (x + y) % 256], axis=-1)
    noisy = base + pixels.integers(-24, 24, (height, width, 3))
    image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return image.convert(mode) if mode != "RGB" else image


def valid_image(rng: random.Random, width: int | None = None, height: int | None = None) -> bytes:
    """A small image the server accepts: JPEG, PNG or WEBP in any mode that format stores."""
    fmt = rng.choice(tuple(MODES))
    width = width or rng.randint(MIN_SIDE, 160)
    height = height or rng.randint(MIN_SIDE, 160)
    image = picture(rng, width, height, rng.choice(MODES[fmt]))
    if fmt == "PNG" and image.mode == "P" and rng.random() < 0.5:
        image.info["transparency"] = rng.randrange(256)
    params: dict[str, object] = {"quality": rng.randint(5, 95)} if fmt != "PNG" else {}
    if fmt == "WEBP" and rng.random() < 0.3:
        params = {"lossless": True}
    return encode(image, fmt, **params)


def png(width: int, height: int, color_type: int, bit_depth: int, deflated: bytes) -> bytes:
    """A PNG written by hand (`deflated`: the zlib stream of the filtered rows): any header, even one
    Pillow would not write."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", deflated) + chunk(b"IEND", b"")


@functools.cache
def zero_png(width: int, height: int) -> bytes:
    """A real decompression bomb: width x height 8-bit gray, all zeros, deflated ~1000:1 (streamed)."""
    squeeze, row = zlib.compressobj(9), bytes(width + 1)  # a row: filter byte + pixels
    deflated = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()
    return png(width, height, 0, 8, deflated)


def header_length(data: bytes) -> int:
    """Where the pixel data starts: bit flips before it hit the header, after it the body."""
    if data.startswith(b"\xff\xd8"):
        sos = data.find(b"\xff\xda")
        return sos + 2 if sos > 0 else min(len(data), 64)
    if data.startswith(PNG_SIGNATURE):
        idat = data.find(b"IDAT")
        return idat + 4 if idat > 0 else min(len(data), 64)
    return min(len(data), 30)  # RIFF, WEBP and the VP8/VP8L header with the dimensions


# --- kinds --------------------------------------------------------------------------------------


def truncated(rng: random.Random) -> bytes:
    data = valid_image(rng)
    return data[: rng.randrange(len(data) - 16)]  # at least 16 bytes short: inside the pixel data


def _flip(data: bytes, rng: random.Random, lo: int, hi: int) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(lo, max(hi, lo + 1))
        out[at] = out[at] ^ (1 << rng.randrange(8)) if rng.random() < 0.6 else rng.randrange(256)
    return bytes(out)


def bitflip_header(rng: random.Random) -> bytes:
    data = valid_image(rng)
    return _flip(data, rng, 0, header_length(data))


def bitflip_body(rng: random.Random) -> bytes:
    data = valid_image(rng)
    return _flip(data, rng, min(header_length(data), len(data) - 1), len(data))


def splice(rng: random.Random) -> bytes:
    """A chunk of the file inserted, deleted or repeated."""
    data = valid_image(rng)
    at, size = rng.randrange(len(data)), rng.randint(1, 512)
    match rng.randrange(3):
        case 0:
            return data[:at] + rng.randbytes(size) + data[at:]
        case 1:
            return data[:at] + data[at + size :]
        case _:
            return data[:at] + data[at : at + size] * rng.randint(2, 4) + data[at:]


def random_bytes(rng: random.Random) -> bytes:
    magic = rng.choice([b"", b"\xff\xd8\xff\xe0", PNG_SIGNATURE, b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"<svg>"])
    return magic + rng.randbytes(rng.choice([0, 1, 7, 64, 1024, 8192]))


def png_bomb(rng: random.Random) -> bytes:
    """A zlib bomb (declared and really deflated), or a header declaring up to 2^31 - 1 pixels a side."""
    if rng.random() < 0.5:
        return zero_png(*rng.choice([(8000, 6000), (10_000, 10_000), (20_000, 20_000)]))
    width = rng.randint(6400, 2**31 - 1)
    height = rng.randint(MAX_PIXELS // width + 1, 2**31 - 1)
    return png(width, height, rng.choice([0, 2, 6]), 8, zlib.compress(bytes(64)))


def huge_dims(rng: random.Random) -> bytes:
    """A valid JPEG or WEBP whose header claims more than `max_image_pixels` (the pixels are not there)."""
    width, height = rng.randint(6400, 16383), rng.randint(6400, 16383)
    if rng.random() < 0.5:
        data = bytearray(encode(picture(rng, 64, 48), "JPEG"))
        sof = data.find(b"\xff\xc0")  # baseline SOF: length(2) precision(1) height(2) width(2)
        data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
        return bytes(data)
    data = bytearray(encode(picture(rng, 64, 48), "WEBP", quality=50))  # simple lossy: RIFF .. "VP8 "
    data[26:30] = struct.pack("<HH", width, height)  # 14-bit width and height after the start code
    return bytes(data)


def tiny(rng: random.Random) -> bytes:
    small, other = rng.randint(1, MIN_SIDE - 1), rng.randint(1, 200)
    return valid_image(rng, *((small, other) if rng.random() < 0.5 else (other, small)))


def thin(rng: random.Random) -> bytes:
    """Long, thin photos (aspect 20..200): the VLMs' downscaled view must keep a short side of 28 px."""
    short = rng.randint(MIN_SIDE, 40)
    long = short * rng.randint(20, 200)
    return encode(picture(rng, *((short, long) if rng.random() < 0.5 else (long, short))), "PNG")


def too_thin(rng: random.Random) -> bytes:
    """Aspect ratio above 200, which Qwen2-VL's image processor refuses."""
    short = rng.randint(MIN_SIDE, 32)
    long = short * 200 + rng.randint(1, 400)
    return encode(picture(rng, *((short, long) if rng.random() < 0.5 else (long, short))), "PNG")


def other_format(rng: random.Random) -> bytes:
    fmt = rng.choice(["GIF", "BMP", "TIFF", "ICO", "PPM", "TGA"])
    image = picture(rng, rng.randint(MIN_SIDE, 96), rng.randint(MIN_SIDE, 96))
    return encode(image, fmt)


def bilevel(rng: random.Random) -> bytes:
    return encode(picture(rng, rng.randint(MIN_SIDE, 96), rng.randint(MIN_SIDE, 96), "1"), "PNG")


def oversize(rng: random.Random) -> bytes:
    """30 MiB: a valid JPEG padded with zeros (decoders ignore trailing bytes; the size limit does not)."""
    data = valid_image(rng)
    return data + bytes(30 * 2**20 - len(data))


def multi_frame(rng: random.Random) -> bytes:
    """Animated WEBP, APNG or multi-picture JPEG (MPO): the server reads the first frame."""
    width, height = rng.randint(MIN_SIDE, 96), rng.randint(MIN_SIDE, 96)
    frames = [picture(rng, width, height) for _ in range(rng.randint(2, 4))]
    fmt = rng.choice(["WEBP", "PNG", "MPO"])
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def cmyk(rng: random.Random) -> bytes:
    image = picture(rng, rng.randint(MIN_SIDE, 96), rng.randint(MIN_SIDE, 96), "CMYK")
    return encode(image, "JPEG", quality=rng.randint(30, 95))


def sixteen_bit(rng: random.Random) -> bytes:
    """16-bit PNG: gray (Pillow's mode I;16), RGB, gray+alpha or RGBA."""
    width, height = rng.randint(MIN_SIDE, 96), rng.randint(MIN_SIDE, 96)
    color_type = rng.choice([0, 2, 4, 6])
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    values = np.random.default_rng(rng.getrandbits(32)).integers(0, 2**16, (height, width * channels))
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    return png(width, height, color_type, 16, zlib.compress(rows))


def exif_orientation(rng: random.Random) -> bytes:
    """A valid image with EXIF orientation in or out of 1..8, sometimes with a large EXIF block."""
    fmt = rng.choice(["JPEG", "PNG", "WEBP"])
    exif = Image.Exif()
    exif[0x0112] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 65535])
    if rng.random() < 0.3:  # ImageDescription: JPEG's APP1 holds < 64 KiB, PNG and WEBP much more
        exif[0x010E] = "x" * (rng.randint(1, 60_000) if fmt == "JPEG" else rng.randint(1, 2**20))
    image = picture(rng, rng.randint(MIN_SIDE, 96), rng.randint(MIN_SIDE, 96))
    return encode(image, fmt, exif=exif.tobytes())


def exif_garbage(rng: random.Random) -> bytes:
    """EXIF that is not EXIF: random, a TIFF header with a random directory, or a valid block cut short."""
    valid = Image.Exif()
    valid[0x0112] = 6
    match rng.randrange(3):
        case 0:
            garbage = rng.randbytes(rng.randint(1, 4096))
        case 1:
            garbage = rng.choice([b"II*\x00\x08\x00\x00\x00", b"MM\x00*\x00\x00\x00\x08"]) + rng.randbytes(64)
        case _:
            block = valid.tobytes()
            garbage = block[: rng.randint(1, len(block) - 1)]
    image = picture(rng, rng.randint(MIN_SIDE, 96), rng.randint(MIN_SIDE, 96))
    return encode(image, rng.choice(["JPEG", "PNG", "WEBP"]), exif=garbage)


EITHER = frozenset({OK, INVALID})
KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("truncated", 16, frozenset({INVALID}), truncated),
        Kind("bitflip_header", 8, EITHER, bitflip_header),
        Kind("bitflip_body", 2, EITHER, bitflip_body),
        Kind("splice", 3, EITHER, splice),
        Kind("random_bytes", 14, frozenset({INVALID}), random_bytes),
        Kind("png_bomb", 5, frozenset({INVALID}), png_bomb),
        Kind("huge_dims", 5, frozenset({INVALID}), huge_dims),
        Kind("tiny", 10, frozenset({INVALID}), tiny),
        Kind("too_thin", 2, frozenset({INVALID}), too_thin),
        Kind("thin", 0.8, frozenset({OK}), thin),
        Kind("other_format", 12, frozenset({INVALID}), other_format),
        Kind("bilevel", 3, frozenset({INVALID}), bilevel),
        Kind("oversize", 1, frozenset({INVALID}), oversize),
        Kind("bad_options", 6, frozenset({INVALID}), valid_image),
        Kind("exif_garbage", 1.5, EITHER, exif_garbage),
        Kind("valid", 1.2, frozenset({OK}), valid_image),
        Kind("multi_frame", 0.8, frozenset({OK}), multi_frame),
        Kind("cmyk", 0.8, frozenset({OK}), cmyk),
        Kind("sixteen_bit", 0.8, frozenset({OK}), sixteen_bit),
        Kind("exif_orientation", 0.8, frozenset({OK}), exif_orientation),
    ]
}
BAD_MAX_NEW_TOKENS = (0, 4097, 5000, 2**32 - 1)


def case(seed: int, index: int, weights: dict[str, float] | None = None) -> Case:
    """Case `index` of the run with `seed`: the same bytes every time, whatever ran before it."""
    rng = random.Random(f"{seed}:{index}")
    weights = weights or {name: kind.weight for name, kind in KINDS.items()}
    name = rng.choices(list(weights), list(weights.values()))[0]
    kind = KINDS[name]
    tokens = rng.choice(BAD_MAX_NEW_TOKENS) if name == "bad_options" else MAX_NEW_TOKENS
    return Case(name, kind.make(rng), pb.LocateOptions(max_new_tokens=tokens))
