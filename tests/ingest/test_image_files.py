"""ingest.image_files: PNG/JPEG bytes -> one gray channel at the file's bit depth, checked against
Pillow (an independent decoder); broken files fail with a reason, never half-decoded."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from ingest.image_files import ImageFileError, decode_gray, file_format


def png(pixels: np.ndarray) -> bytes:
    """Encode with Pillow (RGB order in), so the files under test do not come from the code under test's library."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def gray_u8(h: int = 48, w: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def test_8bit_png_stays_uint8_and_exact():
    pixels = gray_u8()
    out = decode_gray(png(pixels))
    assert out.pixels.dtype == np.uint8 and out.converted_from is None
    assert np.array_equal(out.pixels, pixels)


def test_16bit_png_stays_uint16_and_exact():
    pixels = np.random.default_rng(1).integers(0, 65536, (32, 24), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", pixels)
    out = decode_gray(buf.tobytes())
    assert out.pixels.dtype == np.uint16 and out.pixels.max() > 255
    assert np.array_equal(out.pixels, pixels)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(buf.tobytes()))).astype(np.uint16), pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_gray_saved_as_colour_is_taken_unchanged(mode):
    """Some NIH PNGs are RGB/RGBA with three equal channels: one channel, no value changed."""
    gray = gray_u8(seed=2)
    planes = [gray, gray, gray] + ([np.full_like(gray, 255)] if mode == "RGBA" else [])
    out = decode_gray(png(np.dstack(planes)))
    assert out.converted_from == mode and out.pixels.dtype == np.uint8 and out.pixels.ndim == 2
    assert np.array_equal(out.pixels, gray)


def test_true_colour_becomes_bt601_luma():
    rgb = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = decode_gray(png(rgb))
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114  # ITU-R BT.601
    assert out.converted_from == "RGB"
    assert np.abs(out.pixels.astype(float) - luma).max() <= 1.0


def test_16bit_colour_keeps_16_bits():
    rgb = np.random.default_rng(4).integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    ok, buf = cv2.imencode(".png", rgb)
    out = decode_gray(buf.tobytes())
    assert out.pixels.dtype == np.uint16 and out.converted_from == "RGB" and out.pixels.max() > 255


def test_jpeg_decodes_like_pillow():
    buf = io.BytesIO()
    Image.fromarray(gray_u8(64, 48, seed=5)).save(buf, format="JPEG", quality=90)
    out = decode_gray(buf.getvalue())
    assert out.pixels.dtype == np.uint8 and out.converted_from is None
    assert np.array_equal(out.pixels, np.asarray(Image.open(io.BytesIO(buf.getvalue()))))


def test_real_nih_png_decodes_like_pillow(shared_data):
    path = shared_data / "nih-chestxray14" / "00000013_003.png"
    out = decode_gray(path.read_bytes(), name=path.name)
    assert out.pixels.shape == (1024, 1024) and out.pixels.dtype == np.uint8 and out.converted_from is None
    assert np.array_equal(out.pixels, np.asarray(Image.open(path)))


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


@pytest.mark.parametrize("damage, kind", [
    (lambda d: d[: len(d) // 2], "undecodable PNG"),
    (lambda d: d[:-12], "undecodable PNG"),  # no IEND chunk
    (lambda d: flip(d, len(d) // 2), "undecodable PNG"),  # IDAT CRC no longer matches
    (lambda d: b"hello, not an image", "not an image file"),
    (lambda d: b"", "not an image file"),
])
def test_broken_png_fails_with_its_reason(damage, kind):
    data = damage(png(gray_u8(128, 128, seed=6)))
    with pytest.raises(ImageFileError) as err:
        decode_gray(data, name="images_001/images/00000001_000.png")
    assert str(err.value).startswith(kind + ":") and "00000001_000.png" in str(err.value)


@pytest.mark.parametrize("cut", [200, -2, -1])
def test_truncated_jpeg_fails_instead_of_decoding_grey(cut):
    buf = io.BytesIO()
    Image.fromarray(gray_u8(128, 96, seed=7)).save(buf, format="JPEG")
    with pytest.raises(ImageFileError, match="^undecodable JPEG:"):
        decode_gray(buf.getvalue()[:cut])


def test_file_format_reads_magic_bytes():
    assert file_format(png(gray_u8())) == "PNG"
    assert file_format(b"\xff\xd8\xff\xe0rest") == "JPEG"
    assert file_format(b"GIF89a") is None
