"""Lossless pixel codecs for shard members (see schema.py for which member holds what).

PNG is written by shards.png_encode and read by shards.png_region (OpenCV reads the PNGs its
fast path leaves alone); .npy through numpy with allow_pickle=False. Nothing here ever unpickles.
"""

from __future__ import annotations

import functools
import io
from typing import NamedTuple

import cv2
import numpy as np

from shards import png_region, schema
from shards.png_encode import encode_png


class DecodeError(ValueError):
    """A member whose bytes do not decode to the pixels its extension promises."""


def encode_pixels(pixels: np.ndarray) -> tuple[str, bytes]:
    """(H, W) or (H, W, C) array -> (member extension, bytes), lossless.

    uint16 (H, W) and uint8 (H, W) / (H, W, 3) become PNG (RGB order in, standard PNG out);
    anything else with C channels becomes .npy of dtype uint8/uint16.
    """
    if pixels.dtype not in (np.uint8, np.uint16):
        raise schema.SchemaError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    member = schema.pixel_member(channels, str(pixels.dtype))
    if member == schema.PIXELS_PNG:
        return member, encode_png(pixels)
    arr = np.ascontiguousarray(pixels if pixels.ndim == 3 else pixels[:, :, None])
    return member, b"".join((_npy_header_bytes(arr.shape, np.lib.format.dtype_to_descr(arr.dtype)),
                             memoryview(arr).cast("B")))


@functools.lru_cache(maxsize=256)
def _npy_header_bytes(shape: tuple[int, ...], descr: str) -> bytes:
    """The .npy (format 1.0) header np.save writes for a C-ordered array of this shape and dtype,
    made once per shape: np.save builds it anew for every array and copies the pixels twice
    (into a BytesIO, then out of it). A 128 px 7-channel cell crop (a strided view, as ingest
    cuts it) took 27 us that way and 17 us with the cached header and one copy, with ingest's
    heap settings (shards.heap). The bytes are np.save's (tests/shards/test_codecs.py)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


Region = tuple[int, int, int, int]  # top, left, height, width


class PixelHeader(NamedTuple):
    """What a pixel member's header says, plus what decode_pixels would otherwise parse again."""

    height: int
    width: int
    channels: int
    png: png_region.PngHeader | None = None
    npy: tuple | None = None  # _npy_header's (shape, dtype, fortran, data offset)
    whole: np.ndarray | None = None  # a PNG off png_region's fast path, decoded by OpenCV for its shape


def read_pixel_header(member: str, data: bytes) -> PixelHeader:
    """The member's height, width and channels from its header alone (a palette or alpha PNG,
    which OpenCV decides how to decode, is decoded whole, once)."""
    if member == schema.PIXELS_PNG:
        try:
            header = png_region.read_header(data)
        except png_region.PngError as exc:
            raise DecodeError(f"PNG member does not decode: {exc}") from exc
        if header.channels is None:
            img = _opencv_png(data)
            return PixelHeader(*img.shape[:2], 1 if img.ndim == 2 else img.shape[2], whole=img)
        return PixelHeader(header.height, header.width, header.channels, png=header)
    if member == schema.PIXELS_NPY:
        npy = _npy_header(data)
        return PixelHeader(*npy[0], npy=npy)
    raise DecodeError(f"{member!r} is not a pixel member")


def pixel_shape(member: str, data: bytes) -> tuple[int, int, int]:
    """(height, width, channels) of a pixel member, from its header alone."""
    return read_pixel_header(member, data)[:3]


def decode_pixels(member: str, data: bytes, region: Region | None = None,
                  header: PixelHeader | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Inverse of encode_pixels: PNG -> (H, W) or (H, W, 3) RGB; npy -> (H, W, C). With `region`
    (top, left, height, width), only those rows and columns: for a PNG that is all the decoding
    done (shards.png_region), for .npy a slice. `header`: read_pixel_header's for these bytes,
    when the caller has it already. `out`: an array of the result's shape (any strides, a dtype
    the pixels fit) to decode into and return, in place of a new array."""
    if header is None:
        header = read_pixel_header(member, data)
    if member == schema.PIXELS_PNG and header.whole is None:
        try:
            img = png_region.decode_region(data, *(region or ()), header=header.png, out=out)
        except png_region.PngError as exc:
            raise DecodeError(f"PNG member does not decode: {exc}") from exc
        if img is not None:
            return img
    if header.whole is not None:
        img = header.whole
    elif member == schema.PIXELS_PNG:
        img = _opencv_png(data)
    else:
        img = _npy_array(data, header.npy)
    fresh = member == schema.PIXELS_PNG and header.whole is None  # OpenCV's own array, just made
    if region is not None:
        png_region.check_region(region, *img.shape[:2])
        top, left, height, width = region
        img, fresh = img[top:top + height, left:left + width], False
    if out is None:  # an .npy's pixels are a view of `data`, header.whole is shared: copied
        return img if fresh else np.array(img)
    if out.shape != img.shape:
        raise ValueError(f"out is {out.shape}, the pixels {img.shape}")
    np.copyto(out, img, casting="safe")
    return out


def _opencv_png(data: bytes) -> np.ndarray:
    """Any PNG OpenCV reads (the fallback for what shards.png_region leaves to it), RGB order."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DecodeError("PNG member does not decode")
    if img.ndim == 3:
        if img.shape[2] != 3:
            raise DecodeError(f"PNG member has {img.shape[2]} channels, expected 1 or 3")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def _npy_header(data: bytes) -> tuple[tuple[int, int, int], np.dtype, bool, int]:
    """The (H, W, C) shape, dtype, Fortran order and data offset an .npy member declares, checked;
    never unpickles (the header is a literal, and only uint8/uint16 pass)."""
    try:
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(stream)
    except (ValueError, EOFError) as exc:  # EOFError: an empty or cut-short member
        raise DecodeError(f"npy member does not decode: {exc}") from exc
    if len(shape) != 3 or dtype not in (np.uint8, np.uint16):
        raise DecodeError(f"npy member has shape {shape} dtype {dtype}, expected (H, W, C) uint8/16")
    return shape, dtype, fortran, stream.tell()


def _npy_array(data: bytes, npy: tuple) -> np.ndarray:
    """The array of an .npy member, a read-only view of its bytes; npy: its _npy_header."""
    shape, dtype, fortran, offset = npy
    count = shape[0] * shape[1] * shape[2]
    if len(data) - offset < count * dtype.itemsize:  # np.load, too, ignores bytes past the array
        raise DecodeError(f"npy member does not decode: {len(data) - offset} data bytes for shape {shape} {dtype}")
    values = np.frombuffer(data, dtype, count=count, offset=offset)
    return values.reshape(shape[::-1]).transpose() if fortran else values.reshape(shape)


def encode_mask(mask: np.ndarray) -> bytes:
    """(H, W) uint8/bool mask -> PNG bytes (0 background)."""
    if mask.ndim != 2:
        raise schema.SchemaError(f"mask must be (H, W), got {mask.shape}")
    return encode_png(mask.astype(np.uint8, copy=False))


def decode_mask(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 2 or img.dtype != np.uint8:
        raise DecodeError("mask member is not an 8-bit single-channel PNG")
    return img
