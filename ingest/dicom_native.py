"""Uncompressed little-endian pixel data read in place: stored values as a numpy view of the file's
bytes, without pydicom's two copies (the element value read out of the buffer, then the array).

Mammograms are 20-60 MB of native 16-bit pixels (CBIS-DDSM, most hospital MG exports), and a lesion
crop needs a few hundred kilobytes of them: the copies, not the arithmetic, were most of decoding,
and being memory-bound they did not scale with worker processes. This path takes one sample per
pixel in 8 or 16 allocated bits with a length that matches the header; everything else --
compressed, big endian, deflated or packed data, truncated files -- is decoded by pydicom.

BitsStored below BitsAllocated (12 or 14 of 16 bits: most CR, DX and hospital MG exports) gives
what pydicom gives, in one pass instead of three copies: unsigned values with the bits above
BitsStored cleared (whatever an overlay or a modality left there), signed values sign-extended
from bit BitsStored - 1. Those are a new array; full-width values are a view of the file.
"""

from __future__ import annotations

import struct

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
UNDEFINED_LENGTH = 0xFFFFFFFF
# Explicit VR elements with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def pixel_value_span(data: bytes, offset: int, explicit_vr: bool) -> tuple[int, int] | None:
    """(start, length) of the Pixel Data value whose element starts at `offset`, or None when the
    bytes there are not a defined-length Pixel Data element."""
    if data[offset : offset + 4] != PIXEL_DATA_TAG:
        return None
    if explicit_vr:
        vr = data[offset + 4 : offset + 6]
        if vr in LONG_VRS:
            if offset + 12 > len(data):
                return None
            start, length = offset + 12, _U32.unpack_from(data, offset + 8)[0]
        else:
            if offset + 8 > len(data):
                return None
            start, length = offset + 8, _U16.unpack_from(data, offset + 6)[0]
    else:
        if offset + 8 > len(data):
            return None
        start, length = offset + 8, _U32.unpack_from(data, offset + 4)[0]
    if length == UNDEFINED_LENGTH:
        return None  # encapsulated: compressed fragments
    return start, length


def native_stored_values(data: bytes, header: pydicom.Dataset, offset: int, frame: int | None) -> np.ndarray | None:
    """Stored values viewed in `data` (read-only, no copy): (H, W), or (F, H, W) for several frames
    and no `frame`; None where this path does not apply and pydicom must decode. `header` is the
    dataset read up to the pixel data and `offset` where that element starts."""
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None
    try:
        rows, columns = int(header.Rows), int(header.Columns)
        allocated, stored = int(header.BitsAllocated), int(header.BitsStored)
        signed = int(header.PixelRepresentation) == 1
        samples = int(header.get("SamplesPerPixel") or 1)
        frames = int(header.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    high_bit = header.get("HighBit")
    if samples != 1 or allocated not in (8, 16) or not 1 <= stored <= allocated or rows < 1 or columns < 1 \
            or frames < 1 or (high_bit is not None and int(high_bit) != stored - 1):
        return None
    span = pixel_value_span(data, offset, explicit_vr=syntax == ExplicitVRLittleEndian)
    if span is None:
        return None
    start, length = span
    itemsize = allocated // 8
    expected = rows * columns * frames * itemsize
    if length not in (expected, expected + expected % 2) or start + length > len(data):
        return None  # a length the header does not describe, or a truncated file: pydicom reports it
    dtype = np.dtype(("<i" if signed else "<u") + str(itemsize))
    values = np.frombuffer(data, dtype=dtype, count=rows * columns * frames, offset=start)
    values = values.reshape(frames, rows, columns)
    if frame is not None:
        values = values[frame]
    elif frames == 1:
        values = values[0]
    return values if stored == allocated else _stored_bits(values, allocated - stored, signed)


def _stored_bits(values: np.ndarray, unused: int, signed: bool) -> np.ndarray:
    """Values of BitsAllocated - `unused` stored bits, as pydicom returns them (PS3.5 8.1.1)."""
    if not signed:
        return values & np.array((1 << (values.dtype.itemsize * 8 - unused)) - 1, values.dtype)
    unsigned = values.view(values.dtype.str.replace("i", "u"))
    shifted = np.left_shift(unsigned, unused)  # the stored sign bit becomes the top bit
    return np.right_shift(shifted.view(values.dtype), unused, out=shifted.view(values.dtype))
