"""`decode_image` cannot crash: whatever the bytes, it returns an upright RGB uint8 array the models can
take (both sides >= min_side) or raises `ImageRejected` with a message; never anything else.

Properties over mutated, random and crafted inputs (hypothesis, derandomized: the same examples on every
run), the fuzz runner's own case kinds, and the inputs a fuzz run of the server once turned into INTERNAL.
"""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from benchmarks import fuzz_cases
from benchmarks.fuzz_cases import INVALID, MAX_BYTES, MAX_PIXELS, MIN_SIDE, OK, encode, picture
from navig.model_repository.contract import MAX_ASPECT_RATIO
from navig.orchestrator.images import ImageRejected, decode_image, downscale

# Pillow warns on damaged files ("Corrupt EXIF data", ...): expected here, thousands of times.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROPERTY = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# (format, mode written, lossless): every mode each format stores, the rejected 1-bit and 16-bit gray
WRITABLE = [("JPEG", m) for m in ("RGB", "L", "CMYK")]
WRITABLE += [("PNG", m) for m in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16")]
WRITABLE += [("WEBP", m) for m in ("RGB", "RGBA")]
ORIENTATIONS = [None, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 65535]


def outcome(data: bytes) -> np.ndarray | ImageRejected:
    """The property itself: any other exception fails the test."""
    try:
        pixels = decode_image(data, MAX_BYTES, MAX_PIXELS, MIN_SIDE)
    except ImageRejected as exc:
        message = str(exc)
        assert message and len(message) < 400 and "\n" not in message, message
        return exc
    assert isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8
    assert pixels.ndim == 3 and pixels.shape[2] == 3 and min(pixels.shape[:2]) >= MIN_SIDE, pixels.shape
    return pixels


def _image(fmt: str, mode: str, width: int, height: int, seed: int) -> Image.Image:
    if mode == "I;16":
        gray = np.asarray(picture(random.Random(seed), width, height, "L"), dtype=np.uint16)
        return Image.fromarray(gray * 257)
    return picture(random.Random(seed), width, height, mode)


@st.composite
def small_images(draw: st.DrawFn) -> tuple[bytes, dict]:
    """A small image as a camera or an editor would write it, and what it is."""
    fmt, mode = draw(st.sampled_from(WRITABLE))
    width, height = draw(st.integers(1, 72)), draw(st.integers(1, 72))
    image = _image(fmt, mode, width, height, draw(st.integers(0, 255)))
    params: dict = {}
    orientation = draw(st.sampled_from(ORIENTATIONS))
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    frames = draw(st.integers(1, 3)) if fmt != "JPEG" and mode in ("RGB", "RGBA") else 1
    if frames > 1:
        params |= {"save_all": True, "append_images": [image.rotate(90 * i) for i in range(1, frames)]}
    if fmt == "WEBP":
        params["lossless"] = draw(st.booleans())
    facts = {"mode": mode, "size": (width, height), "orientation": orientation, "frames": frames}
    return encode(image, fmt, **params), facts


@given(small_images())
@settings(PROPERTY, max_examples=300)
def test_valid_images_decode_upright_unless_too_small_or_bilevel(case: tuple[bytes, dict]):
    data, facts = case
    result = outcome(data)
    width, height = facts["size"]
    served = min(width, height) >= MIN_SIDE and facts["mode"] != "1"
    assert isinstance(result, np.ndarray) == served, result
    if served:
        turned = facts["orientation"] in (5, 6, 7, 8)
        assert result.shape[:2] == ((width, height) if turned else (height, width))


MUTATIONS = ["truncate", "flip_header", "flip_body", "overwrite", "insert", "delete", "repeat"]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image damaged the ways storage and networks damage files."""
    data, _ = draw(small_images())
    header = fuzz_cases.header_length(data)
    at = draw(st.integers(0, len(data) - 1))
    match draw(st.sampled_from(MUTATIONS)):
        case "truncate":
            return data[:at]
        case "flip_header" | "flip_body" as where:
            out = bytearray(data)
            lo, hi = (0, header) if where == "flip_header" else (min(header, len(data) - 1), len(data))
            flips = st.lists(st.tuples(st.integers(lo, hi - 1), st.integers(0, 7)), min_size=1)
            for spot, bit in draw(flips):
                out[spot] ^= 1 << bit
            return bytes(out)
        case "overwrite":
            return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at + 16 :]
        case "insert":
            return data[:at] + draw(st.binary(min_size=1, max_size=256)) + data[at:]
        case "delete":
            return data[:at] + data[at + draw(st.integers(1, 256)) :]
        case _:
            return data[:at] + data[at : at + draw(st.integers(1, 64))] * 3 + data[at:]


@given(mutated_images())
@settings(PROPERTY, max_examples=1000)
def test_damaged_images_decode_or_are_rejected(data: bytes):
    outcome(data)


MAGIC = [b"", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb", fuzz_cases.PNG_SIGNATURE, b"RIFF\0\1\0\0WEBPVP8 "]


@given(st.sampled_from(MAGIC), st.binary(max_size=2048))
@settings(PROPERTY, max_examples=300)
def test_random_bytes_are_rejected(magic: bytes, data: bytes):
    assert isinstance(outcome(magic + data), ImageRejected)


PNG_TYPES = [(0, 8), (2, 8), (6, 8), (0, 16)]  # (color type, bit depth): gray, RGB, RGBA, 16-bit gray


@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1), st.sampled_from(PNG_TYPES))
@settings(PROPERTY, max_examples=200)
def test_declared_dimensions_alone_cannot_allocate(width: int, height: int, png_type: tuple[int, int]):
    """Any IHDR with a token IDAT: served only if small enough and then complete; never decoded when large."""
    result = outcome(fuzz_cases.png(width, height, *png_type, zlib.compress(bytes(64))))
    if width * height > MAX_PIXELS:
        assert isinstance(result, ImageRejected) and ("pixels" in str(result) or "bomb" in str(result))


@given(st.sampled_from(list(fuzz_cases.KINDS)), st.integers(0, 2**32 - 1))
@settings(PROPERTY, max_examples=600)
def test_fuzz_runner_cases_meet_their_expectation(kind: str, seed: int):
    """The server-side fuzz cases, decoded here: invalid kinds rejected, valid kinds served."""
    expect = fuzz_cases.KINDS[kind].expect
    result = outcome(fuzz_cases.KINDS[kind].make(random.Random(seed)))
    if kind == "bad_options":  # a valid image; the options are what the server refuses
        expect = frozenset({OK})
    assert (OK if isinstance(result, np.ndarray) else INVALID) in expect, (kind, seed, result)


# --- regressions and documented choices --------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return picture(random.Random(0), 64, 48)


@pytest.mark.parametrize(("fmt", "cut"), [("JPEG", 6), ("JPEG", 30), ("PNG", 16), ("PNG", 20), ("WEBP", 16)])
def test_headers_cut_short_are_rejected_not_internal(photo: Image.Image, fmt: str, cut: int):
    """Image.open itself raised OSError("Truncated File Read"), ValueError or "could not create decoder
    object" on these: 6 INTERNAL in a fuzz run of 1,100 images."""
    with pytest.raises(ImageRejected, match="corrupt or truncated"):
        decode_image(encode(photo, fmt)[:cut], MAX_BYTES, MAX_PIXELS, MIN_SIDE)


def test_png_header_chunk_with_a_wrong_length_is_rejected(photo: Image.Image):
    data = bytearray(encode(photo, "PNG"))
    data[8:12] = struct.pack(">I", 5)  # IHDR says 5 bytes instead of 13: "Truncated IHDR chunk"
    with pytest.raises(ImageRejected):
        decode_image(bytes(data), MAX_BYTES, MAX_PIXELS, MIN_SIDE)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_unparseable_exif_is_rejected_with_a_message(photo: Image.Image, fmt: str):
    with pytest.raises(ImageRejected, match=f"{fmt} image has corrupt EXIF metadata: not a TIFF file"):
        decode_image(encode(photo, fmt, exif=b"garbage, not TIFF"), MAX_BYTES, MAX_PIXELS, MIN_SIDE)


@pytest.mark.parametrize(("orientation", "turned"), [(0, 0), (1, 0), (3, 0), (6, 1), (9, 0), (65535, 0)])
def test_exif_orientation_is_applied_and_out_of_range_values_ignored(
    photo: Image.Image, orientation: int, turned: int
):
    exif = Image.Exif()
    exif[0x0112] = orientation
    pixels = decode_image(encode(photo, "JPEG", exif=exif.tobytes()), MAX_BYTES, MAX_PIXELS, MIN_SIDE)
    assert pixels.shape == ((64, 48, 3) if turned else (48, 64, 3))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "MPO"])
def test_animations_serve_their_first_frame(fmt: str):
    red, blue = Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (40, 30), (0, 0, 255))
    data = encode(red, fmt, save_all=True, append_images=[blue], duration=100, lossless=True)
    pixels = decode_image(data, MAX_BYTES, MAX_PIXELS, MIN_SIDE)
    assert pixels.shape == (30, 40, 3) and pixels[15, 20, 0] > 200 and pixels[15, 20, 2] < 50


def test_sixteen_bit_gray_is_served_as_its_high_byte():
    gray = np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50
    pixels = decode_image(encode(Image.fromarray(gray), "PNG"), MAX_BYTES, MAX_PIXELS, MIN_SIDE)
    assert (pixels[..., 0] == gray >> 8).all() and (pixels[..., 0] == pixels[..., 2]).all()


def test_cmyk_jpeg_is_converted_to_rgb(photo: Image.Image):
    pixels = decode_image(encode(photo.convert("CMYK"), "JPEG", quality=95), MAX_BYTES, MAX_PIXELS, MIN_SIDE)
    assert pixels.shape == (48, 64, 3)
    assert np.abs(pixels.astype(int) - np.asarray(photo, dtype=int)).mean() < 12


def test_a_real_png_bomb_is_rejected_from_its_header_alone():
    bomb = fuzz_cases.zero_png(8000, 6000)  # 48 M pixels in ~50 KB
    with pytest.raises(ImageRejected, match="8000x6000 = 48,000,000 pixels; limit 40,000,000"):
        decode_image(bomb, MAX_BYTES, MAX_PIXELS, MIN_SIDE)
    for side in (10_000, 20_000):  # beyond Pillow's warning limit (ours counts), and its error limit
        with pytest.raises(ImageRejected, match=r"pixels; limit|decompression bomb"):
            decode_image(fuzz_cases.zero_png(side, side), MAX_BYTES, MAX_PIXELS, MIN_SIDE)


def test_memory_error_is_not_turned_into_a_rejection(photo: Image.Image, monkeypatch: pytest.MonkeyPatch):
    """Out of memory is the server's problem: it must surface (INTERNAL), not blame the client's image."""

    def no_memory(self: ImageFile.ImageFile) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_memory)
    with pytest.raises(MemoryError):
        decode_image(encode(photo, "PNG"), MAX_BYTES, MAX_PIXELS, MIN_SIDE)


@pytest.mark.parametrize("size", [(28, 1400), (5600, 28), (640, 31)])
def test_the_vlm_view_of_a_thin_photo_keeps_a_servable_short_side(size: tuple[int, int]):
    """Found by the fuzz runner: a 28x1400 photo downscaled to 640 px became 13 px thin, which the
    REASONER refused (INTERNAL). The view keeps a short side of at least 28 px."""
    pixels = decode_image(encode(picture(random.Random(0), *size), "PNG"), MAX_BYTES, MAX_PIXELS, MIN_SIDE)
    view = downscale(pixels, 640, MIN_SIDE)
    assert min(view.shape[:2]) >= MIN_SIDE and view.shape[2] == 3


def test_aspect_ratios_beyond_the_vlms_limit_are_rejected():
    too_thin = encode(picture(random.Random(0), 28, 28 * MAX_ASPECT_RATIO + 1), "PNG")
    with pytest.raises(ImageRejected, match="aspect ratio may be at most 200"):
        decode_image(too_thin, MAX_BYTES, MAX_PIXELS, MIN_SIDE)
