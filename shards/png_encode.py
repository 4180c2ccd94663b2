"""Encoding pixels as PNG with numpy and ISA-L deflate: the writing half of shards.png_region.

Every row is filtered "up" (each byte minus the byte above it, mod 256) and the rows are deflated
by ISA-L at level 1, in one IDAT chunk. Measured on the 224 px 16-bit CBIS crops medshards writes,
against OpenCV (libpng, zlib level 1, the "up" filter and the run-length strategy): 0.39 ms a crop
against 1.59 ms, 71.9 KB against 72.0 KB, and the result inflates faster too (a whole decode
0.35 ms against 0.43 ms), since ISA-L finds matches at any distance where zlib's run-length
strategy looks one byte back only. On 8-bit images the sizes go both ways: NIH 224 px crops
+8 %, whole 1024 px NIH images -13 %, DRIVE RGB +9 %, binary masks +49 % (10.6 to 15.8 KB), for
encodes 2.8x to 4.6x as fast; ISA-L's levels 2 and 3 made none of them smaller by more than 1 %.
Any PNG reader decodes the result (libpng does, in the tests).
"""

from __future__ import annotations

import struct

import numpy as np
from isal import isal_zlib

from shards.png_region import SIGNATURE

_FILTER_UP = 2
_LEVEL = 1
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
    return (SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", isal_zlib.compress(filtered, _LEVEL))
            + _chunk(b"IEND", b""))
