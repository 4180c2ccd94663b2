"""Plain image files (PNG, JPEG) decoded to one grayscale channel, for radiograph sources.

Chest X-ray archives ship radiographs as ordinary image files: NIH ChestX-ray14 as 8-bit PNGs (a
few of them saved as RGB or RGBA although the picture is gray), CheXpert as 8-bit JPEGs, other
sets as 16-bit PNGs. Every one becomes a (H, W) uint8 or uint16 array with its bit depth kept: an
8-bit file is never stretched to fake 16 bits. A colour file is reduced to one channel and the
caller is told (`converted_from`), so the job notes can count it.

A file that cannot be used raises ImageFileError, whose str() is "reason kind: detail" ready for a
Reject. OpenCV (5.x, as installed) returns None for a cut-short PNG or JPEG and libpng checks
every chunk's CRC, so a truncated file or a PNG with a flipped byte never decodes to a half-grey
picture (tests/ingest/test_image_files.py holds OpenCV to that). A JPEG has no checksum: a flipped
byte inside its entropy-coded data decodes, as it would in any viewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"


class ImageFileError(ValueError):
    """An image file that cannot be decoded to a grayscale radiograph; str() is 'reason kind: detail'."""


@dataclass(frozen=True)
class GrayImage:
    """pixels: (H, W) uint8 or uint16, as stored (no rescaling). converted_from: None when the file
    was already one channel, else the colour layout it was reduced from ("RGB", "RGBA")."""

    pixels: np.ndarray
    converted_from: str | None


def file_format(data: bytes) -> str | None:
    """'PNG' or 'JPEG' from the file's magic bytes, else None."""
    head = bytes(data[: len(PNG_SIGNATURE)])
    if head.startswith(PNG_SIGNATURE):
        return "PNG"
    if head.startswith(JPEG_SOI):
        return "JPEG"
    return None


def decode_gray(data: bytes, *, name: str = "image") -> GrayImage:
    """PNG or JPEG bytes -> GrayImage. Raises ImageFileError naming `name` and the problem.

    Colour files are reduced to gray: when all colour channels are equal (a gray picture saved as
    RGB/RGBA, as some NIH PNGs are) one channel is taken as is, so no value changes; otherwise the
    ITU-R BT.601 luma that OpenCV computes (alpha is dropped, radiographs have no transparency).
    """
    kind = file_format(data)
    if kind is None:
        raise ImageFileError(f"not an image file: {name} is neither PNG nor JPEG ({len(data)} bytes)")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageFileError(f"undecodable {kind}: {name} is truncated or corrupt ({len(data)} bytes)")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageFileError(f"unsupported pixels: {name} decodes to {pixels.dtype}, expected 8 or 16 bits")
    if pixels.ndim == 2:
        return GrayImage(pixels, None)
    channels = pixels.shape[2]
    if channels == 1:
        return GrayImage(pixels[:, :, 0], None)
    if channels not in (3, 4):
        raise ImageFileError(f"unsupported pixels: {name} has {channels} channels")
    layout = "RGB" if channels == 3 else "RGBA"
    colour = pixels[:, :, :3]
    first = colour[:, :, 0]
    if np.array_equal(first, colour[:, :, 1]) and np.array_equal(first, colour[:, :, 2]):
        return GrayImage(np.ascontiguousarray(first), layout)
    code = cv2.COLOR_BGR2GRAY if channels == 3 else cv2.COLOR_BGRA2GRAY
    return GrayImage(cv2.cvtColor(pixels, code), layout)

