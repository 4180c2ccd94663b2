"""Pixel members round trip losslessly; their shape is read from the header alone; a region is
exactly that slice of the whole image, for PNG and .npy; .npy members are never unpickled."""

from __future__ import annotations

import io

import numpy as np
import pytest

from shards import codecs


@pytest.mark.parametrize("shape,dtype,member", [((30, 20), np.uint16, "png"), ((30, 20, 3), np.uint8, "png"),
                                                ((30, 20, 7), np.uint16, "npy"), ((30, 20, 3), np.uint16, "npy")])
def test_round_trip_shape_from_header_and_regions(shape, dtype, member):
    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    ext, data = codecs.encode_pixels(pixels)
    assert ext == member
    np.testing.assert_array_equal(codecs.decode_pixels(ext, data), pixels)
    assert codecs.pixel_shape(ext, data) == (30, 20, 1 if len(shape) == 2 else shape[2])
    for region in [(0, 0, 30, 20), (29, 19, 1, 1), (4, 3, 17, 9)]:
        top, left, h, w = region
        np.testing.assert_array_equal(codecs.decode_pixels(ext, data, region), pixels[top:top + h, left:left + w])
    with pytest.raises(ValueError, match="not inside the 30 x 20 image"):
        codecs.decode_pixels(ext, data, (25, 0, 6, 20))


def test_npy_headers_are_checked_and_pickles_refused():
    with pytest.raises(codecs.DecodeError, match="npy member does not decode"):
        codecs.pixel_shape("npy", b"")
    flat = io.BytesIO()
    np.save(flat, np.zeros((4, 4), np.uint16))
    with pytest.raises(codecs.DecodeError, match=r"npy member has shape \(4, 4\) dtype uint16, expected \(H, W, C\)"):
        codecs.decode_pixels("npy", flat.getvalue())
    objects = io.BytesIO()
    np.save(objects, np.array([[[{"a": 1}]]], dtype=object), allow_pickle=True)
    with pytest.raises(codecs.DecodeError, match="dtype object"):
        codecs.decode_pixels("npy", objects.getvalue())


@pytest.mark.parametrize(("shape", "dtype"), [((128, 128, 7), np.uint16), ((5, 3, 2), np.uint8), ((64, 48, 22), np.uint16)])
def test_npy_members_are_the_bytes_np_save_writes(shape, dtype):
    """The header is made once per shape and dtype (codecs._npy_header_bytes); the member must
    still be byte for byte np.save's, for a strided view as for a contiguous array."""
    rng = np.random.default_rng(0)
    whole = rng.integers(0, np.iinfo(dtype).max, size=(shape[0] * 2, shape[1], shape[2]), dtype=dtype)
    for pixels in (whole[: shape[0]], whole[::2]):
        expected = io.BytesIO()
        np.save(expected, np.ascontiguousarray(pixels), allow_pickle=False)
        member, data = codecs.encode_pixels(pixels)
        assert member == "npy" and isinstance(data, bytes) and data == expected.getvalue()
        np.testing.assert_array_equal(codecs.decode_pixels(member, data), pixels)
