"""PNG decoding with ISA-L and numpy: the same pixels as OpenCV for every region of what medshards
writes and of PNGs like it, OpenCV's turn for the rest, and damage named, never decoded."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from isal import isal_zlib

from shards import codecs, png_region
from shards.png_encode import encode_png
from shards.png_region import PngError, decode_region, read_header

# libpng with the "up" filter on every row, as medshards wrote PNGs before shards.png_encode
UP = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def opencv_rgb(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img


def encode(pixels: np.ndarray, params: list[int]) -> bytes:
    bgr = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, buf = cv2.imencode(".png", bgr, params)
    assert ok
    return buf.tobytes()


def radiograph(shape: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise over the whole range: every byte of a 16-bit pixel varies."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    ramp = np.add.outer(np.arange(shape[0]) * 7, np.arange(shape[1]) * 3).astype(np.int64)
    if len(shape) == 3:
        ramp = ramp[:, :, None] + np.arange(shape[2]) * 1000
    return ((ramp * 257 + rng.integers(0, top // 4, size=shape)) % (top + 1)).astype(dtype)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def handmade(rows: np.ndarray, filters: list[int], *, depth: int = 8, color: int = 0, stream: bytes | None = None,
             before_idat: bytes = b"") -> bytes:
    """A PNG of raw filtered rows (rows: (H, W * bytes per pixel) uint8, filter bytes given)."""
    height = rows.shape[0]
    width = rows.shape[1] // (depth // 8 * (3 if color == 2 else 1))
    raw = b"".join(bytes([f]) + row.tobytes() for f, row in zip(filters, rows))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (png_region.SIGNATURE + chunk(b"IHDR", ihdr) + before_idat
            + chunk(b"IDAT", zlib.compress(raw) if stream is None else stream) + chunk(b"IEND", b""))


def regions(height: int, width: int, rng: np.random.Generator, count: int = 40):
    yield 0, 0, height, width
    yield height - 1, width - 1, 1, 1
    yield 0, 0, 1, 1
    yield height - 1, 0, 1, width
    for _ in range(count):
        h, w = int(rng.integers(1, height + 1)), int(rng.integers(1, width + 1))
        yield int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


@pytest.mark.parametrize("shape,dtype", [((37, 29), np.uint16), ((37, 29), np.uint8), ((37, 29, 3), np.uint8),
                                         ((23, 31, 3), np.uint16), ((1, 1), np.uint16), ((1, 40), np.uint8)])
@pytest.mark.parametrize("params", [UP, [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]], ids=["up", "none"])
def test_every_region_matches_opencv(shape, dtype, params):
    pixels = radiograph(shape, dtype)
    data = encode(pixels, params)
    np.testing.assert_array_equal(opencv_rgb(data), pixels)
    for top, left, h, w in regions(*shape[:2], np.random.default_rng(1)):
        region = decode_region(data, top, left, h, w)
        assert region is not None, "the fast path must take what medshards writes"
        assert region.dtype == dtype and region.flags.c_contiguous
        np.testing.assert_array_equal(region, pixels[top:top + h, left:left + w])


def test_image_data_over_many_idat_chunks():
    pixels = radiograph((300, 280), np.uint16)
    data = encode(pixels, UP)
    assert data.count(b"IDAT") > 3  # libpng writes 8 KB chunks
    for top, left, h, w in regions(300, 280, np.random.default_rng(2), count=10):
        np.testing.assert_array_equal(decode_region(data, top, left, h, w), pixels[top:top + h, left:left + w])


def test_other_filters_are_left_to_opencv_and_codecs_stays_exact():
    pixels = radiograph((40, 50), np.uint16)
    data = encode(pixels, [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_PAETH])
    assert decode_region(data) is None
    np.testing.assert_array_equal(codecs.decode_pixels("png", data, (5, 6, 20, 30)), pixels[5:25, 6:36])
    # row 0 filtered "sub" is not "none": also OpenCV's
    rows = radiograph((4, 6), np.uint8)
    assert decode_region(handmade(rows, [1, 2, 2, 2])) is None
    assert decode_region(handmade(rows, [0, 2, 0, 2])) is None  # "none" among "up" rows


def test_trns_leaves_the_image_to_opencv():
    rows = radiograph((4, 6), np.uint8)
    plain = handmade(rows, [0] * 4)
    np.testing.assert_array_equal(decode_region(plain), rows)
    assert decode_region(handmade(rows, [0] * 4, before_idat=chunk(b"tRNS", b"\x00\x07"))) is None


def test_a_damaged_idat_chunk_is_named_by_its_crc():
    data = bytearray(encode(radiograph((300, 280), np.uint16), UP))
    second = data.index(b"IDAT", data.index(b"IDAT") + 4) - 4
    data[second + 100] ^= 0x40
    with pytest.raises(PngError, match=rf"IDAT chunk at byte {second} fails its CRC"):
        decode_region(bytes(data), 0, 0, 1, 1)  # every chunk is checked, even past the region
    with pytest.raises(codecs.DecodeError, match=rf"PNG member does not decode: IDAT chunk at byte {second}"):
        codecs.decode_pixels("png", bytes(data))


def test_cut_short_members_and_streams_are_truncated_not_decoded():
    data = encode(radiograph((60, 50), np.uint16), UP)
    with pytest.raises(PngError, match="runs past the end"):
        decode_region(data[:len(data) // 2])
    rows = radiograph((20, 8), np.uint8)
    stream = zlib.compress(b"".join(b"\x00" + r.tobytes() for r in rows))
    cut = handmade(rows, [0] * 20, stream=stream[:-30])  # valid chunk CRC, zlib stream cut short
    with pytest.raises(PngError, match="truncated"):
        decode_region(cut)
    np.testing.assert_array_equal(decode_region(cut, 0, 0, 2, 8), rows[:2])  # a region stops at its rows
    with pytest.raises(PngError, match="truncated"):
        decode_region(cut, 12, 0, 8, 8)  # a region whose last rows are past the cut
    no_end = handmade(rows, [0] * 20, stream=stream[:-4])  # every row, no Adler-32
    with pytest.raises(PngError, match="zlib stream has no end"):
        decode_region(no_end)


def test_a_filter_byte_past_paeth_is_damage():
    rows = radiograph((6, 5), np.uint8)
    with pytest.raises(PngError, match="row 3 has filter type 9"):
        decode_region(handmade(rows, [2, 2, 2, 9, 2, 2]))


def test_header_is_checked():
    data = encode(radiograph((9, 7), np.uint16), UP)
    assert read_header(data) == (7, 9, 16, 0, 0)
    with pytest.raises(PngError, match="not a PNG"):
        read_header(b"GIF89a" + data[6:])
    broken = bytearray(data)
    broken[20] ^= 1  # inside IHDR
    with pytest.raises(PngError, match="IHDR fails its CRC"):
        read_header(bytes(broken))
    with pytest.raises(ValueError, match=r"region rows 5\+5, columns 0\+7 is not inside the 9 x 7 image"):
        decode_region(data, 5, 0, 5, 7)


def test_a_region_inflates_only_the_stream_its_rows_need():
    """The compressed stream is fed a piece at a time, so a crop near the top leaves the rest of
    the stream unread; and a crop in rows that compress far worse than the average (tissue above
    flat air) still gets every row it needs: the first piece falls short, more follow."""
    pixels = radiograph((400, 96), np.uint16)
    pixels[100:] = 1000  # the last 300 rows take a few bytes of the stream
    data = encode_png(pixels)
    assert data.count(b"IDAT") == 1
    header = read_header(data)
    stride = 1 + header.width * 2
    stream = memoryview(data)[41:41 + struct.unpack_from(">I", data, 33)[0]]
    for rows in (1, 50):
        inflater = isal_zlib.decompressobj()
        out = png_region._inflate_prefix(inflater, stream, rows * stride, header.height * stride)
        assert len(out) >= rows * stride
        assert not inflater.eof  # stopped before the end
    for top, left, h, w in regions(400, 96, np.random.default_rng(3), count=30):
        np.testing.assert_array_equal(decode_region(data, top, left, h, w), pixels[top:top + h, left:left + w])
