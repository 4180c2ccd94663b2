"""PNGs written with zlib-ng: libpng (OpenCV) reads back the exact pixels, so does medshards' own
decoder on its fast path, and what a PNG cannot hold is refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shards.png_encode import encode_png
from shards.png_region import decode_region, read_header


@pytest.mark.parametrize("shape,dtype", [((37, 29), np.uint16), ((37, 29), np.uint8), ((37, 29, 3), np.uint8),
                                         ((23, 31, 3), np.uint16), ((1, 1), np.uint16), ((300, 1), np.uint8),
                                         ((12, 9, 1), np.uint16)])
def test_libpng_and_the_fast_path_read_back_the_pixels(shape, dtype):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)
    pixels[: shape[0] // 2] = np.iinfo(dtype).max  # runs and extremes beside noise
    data = encode_png(pixels)
    expected = pixels[:, :, 0] if pixels.ndim == 3 and shape[2] == 1 else pixels
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if opencv.ndim == 3:
        opencv = cv2.cvtColor(opencv, cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(opencv, expected)
    assert opencv.dtype == dtype
    np.testing.assert_array_equal(decode_region(data), expected)
    assert read_header(data)[:3] == (shape[1], shape[0], 8 * np.dtype(dtype).itemsize)


def test_runs_compress_and_strided_input_is_taken():
    flat = np.full((256, 256), 1234, np.uint16)
    assert len(encode_png(flat)) < 2000  # 128 KB of one value
    wide = np.arange(64 * 128, dtype=np.uint16).reshape(64, 128)
    np.testing.assert_array_equal(decode_region(encode_png(wide[:, ::2])), wide[:, ::2])


@pytest.mark.parametrize("pixels,reason", [(np.zeros((4, 4), np.float32), "uint8 or uint16"),
                                           (np.zeros((4, 4, 2), np.uint8), "grey or"),
                                           (np.zeros((0, 4), np.uint8), "grey or"),
                                           (np.zeros(4, np.uint8), "grey or")])
def test_what_a_png_cannot_hold_is_refused(pixels, reason):
    with pytest.raises(ValueError, match=reason):
        encode_png(pixels)
