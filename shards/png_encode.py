"""Encoding pixels as PNG with numpy and zlib-ng: the writing half of shards.png_region.

Every row is filtered "up" (each byte minus the byte above it, mod 256) and the rows are deflated
by zlib-ng with the run-length strategy (matches at distance 1 only: after the up filter, a run is
a stretch where the image repeats the row above), in one IDAT chunk. Any PNG reader decodes the
result (libpng does, in the tests).

The same pixels always give the same bytes, which the shard format promises. ISA-L, used here
before, did not keep that promise at scale: the same rows deflated to different bytes in another
run of a large job (48 of 30,000 PNG members differed between two runs of one 30,000-image `ingest
dicom`, none with address-space randomisation turned off, none at 10,000 images; pixels always
equal), so a resumed or repeated job could end with other shard checksums. zlib-ng's run-length
search compares bytes only, so it cannot depend on memory state: two such runs, 0 of 30,000.
Measured on 224 px 16-bit crops (one run): 0.32 ms an encode against ISA-L's 0.12 ms and the
standard library zlib's 0.79 ms with the same strategy; 76.4 KB against ISA-L's 76.3; a whole
decode (shards.png_region, ISA-L inflate) 0.225 ms against 0.204. Whole 8-bit radiographs cost
more: real NIH 1024 px images 2.0 ms against 1.05 and ~15% larger (253 KB against 216).
"""

from __future__ import annotations

import struct

import numpy as np
from isal import isal_zlib
from zlib_ng import zlib_ng

from shards.png_region import SIGNATURE

_FILTER_UP = 2
_LEVEL = 1  # with the run-length strategy the level only sizes zlib-ng's buffers
_COLOR_TYPES = {1: 0, 3: 2}  # channels -> PNG colour type: grey, RGB


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", isal_zlib.crc32(body, isal_zlib.crc32(kind)))


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W) or (H, W, 1) grey, or (H, W, 3) RGB, uint8 or uint16 -> PNG bytes, lossless."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG pixels must be uint8 or uint16, got {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    channels = {2: 1, 3: pixels.shape[-1]}.get(pixels.ndim)
    if channels not in _COLOR_TYPES or 0 in pixels.shape:
        raise ValueError(f"PNG pixels must be (H, W) grey or (H, W, 3) RGB, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    stored = pixels.astype(">u2", copy=False) if pixels.dtype == np.uint16 else pixels  # PNG is big-endian
    rows = np.ascontiguousarray(stored).view(np.uint8).reshape(height, -1)
    filtered = np.empty((height, 1 + rows.shape[1]), np.uint8)
    filtered[:, 0] = _FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8: mod 256, as the filter is defined
    header = struct.pack(">IIBBBBB", width, height, pixels.dtype.itemsize * 8, _COLOR_TYPES[channels], 0, 0, 0)
    deflate = zlib_ng.compressobj(_LEVEL, zlib_ng.DEFLATED, zlib_ng.MAX_WBITS, 8, zlib_ng.Z_RLE)
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", deflate.compress(filtered) + deflate.flush())
            + _chunk(b"IEND", b""))
