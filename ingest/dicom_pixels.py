"""Shared DICOM decoding for every DICOM source: one file -> pixels on one fixed scale.

Monochrome images come out as uint16 over the full range [0, 65535] with bright = dense, after the
display chain the standard prescribes (PS3.4 N.2): stored values -> Modality LUT or rescale ->
VOI LUT or window -> MONOCHROME1 inversion. Colour images come out as uint8 RGB.

Every failure is a `DicomDecodeError` naming the file and the reason. Error text never carries
header values (patient name, birth date, ID): only the path and what went wrong.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_windowing, get_decoder
from pydicom.pixels.utils import get_expected_length

from ingest.dicom_native import native_stored_values
from ingest.mapped_files import BufferReader, read_source

UINT16_MAX = 65535
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Colour interpretations that reach us as RGB: pydicom converts YBR_FULL(_422) to RGB and the
# JPEG 2000 decoders undo YBR_ICT / YBR_RCT themselves.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
REQUIRED_PIXEL_ELEMENTS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation")


class DicomDecodeError(ValueError):
    """A file that cannot become pixels; str(err) == f"{path}: {reason}"."""

    def __init__(self, path: str, reason: str):
        # Both go to args so the error pickles (Ray ships exceptions between processes).
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class DicomImage:
    """Decoded pixels and the header fields sources need.

    pixels: monochrome (H, W) uint16, colour (H, W, 3) uint8 RGB; multi-frame files keep every frame
    on a leading axis, (F, H, W) or (F, H, W, 3), unless one frame was asked for. frames is the
    file's frame count either way. pixel_spacing_mm is (row spacing, column spacing),
    i.e. (dy, dx), from PixelSpacing, else ImagerPixelSpacing, else None.
    """

    pixels: np.ndarray
    photometric: str
    frames: int
    bits_stored: int
    modality: str | None
    laterality: str | None
    view: str | None
    pixel_spacing_mm: tuple[float, float] | None
    voi: str


def read_header(source: str | Path | bytes, name: str | None = None) -> pydicom.Dataset:
    """The header of a DICOM file or its bytes, without reading the pixel data."""
    return _read(source, _display_name(source, name), stop_before_pixels=True)


def decode_dicom(source: str | Path | bytes, *, apply_voi: bool = True, name: str | None = None,
                 frame: int | None = None) -> DicomImage:
    """Decode one DICOM file (path or bytes; `name` is the path used in errors for bytes).

    apply_voi: apply the first VOI LUT, else the first Window Center/Width, when the file has one.
    frame: decode only this frame (0-based) -> pixels (H, W[, 3]); pydicom then decodes that frame
    alone, so taking one frame of a large multi-frame file costs one frame's time and memory.

    Uncompressed pixels that need no rescaling (16-bit stored in 16 bits, MONOCHROME2, no LUT) come
    back as a read-only view of the file's bytes (ingest.dicom_native): crop or copy, never write.
    """
    path = _display_name(source, name)
    ds, stored = _read_pixels(source, path, frame)
    return _displayed(ds, stored, path, apply_voi)


def decode_mask_values(source: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
    """A segmentation mask's pixels for telling which are set: (H, W[, ...]) values that are
    non-zero exactly where decode_dicom's would be, with as many distinct non-zero levels. For a
    plain MONOCHROME2 file without rescale or LUT these are the stored values themselves (in place
    for uncompressed data: an 8-bit 30 MP mask is not widened to 16 bits only to be compared with
    zero); any other file goes through the whole chain, from the same read."""
    path = _display_name(source, name)
    ds, stored = _read_pixels(source, path, None)
    plain = (str(ds.PhotometricInterpretation).strip() == "MONOCHROME2" and stored.dtype.kind == "u"
             and not any(k in ds for k in ("ModalityLUTSequence", "RescaleSlope", "RescaleIntercept",
                                           "VOILUTSequence", "WindowCenter", "WindowWidth")))
    return stored if plain else _displayed(ds, stored, path, apply_voi=True).pixels


def _displayed(ds: pydicom.Dataset, stored: np.ndarray, path: str, apply_voi: bool) -> DicomImage:
    """Stored values through the display chain, with the header fields sources need."""
    photometric = str(ds.PhotometricInterpretation).strip()
    try:
        if photometric in MONOCHROME:
            pixels, voi = _monochrome_uint16(stored, ds, photometric, apply_voi)
        else:
            pixels, voi = _colour_uint8(stored, ds, photometric), "none"
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise DicomDecodeError(path, f"its LUT or window cannot be applied ({err})") from err
    return DicomImage(
        pixels=pixels,
        photometric=photometric,
        frames=int(ds.get("NumberOfFrames") or 1),
        bits_stored=int(ds.BitsStored),
        modality=_text(ds, "Modality"),
        laterality=_laterality(ds),
        view=_text(ds, "ViewPosition"),
        pixel_spacing_mm=_pixel_spacing_mm(ds),
        voi=voi,
    )


def _read_pixels(source: str | Path | bytes, path: str, frame: int | None) -> tuple[pydicom.Dataset, np.ndarray]:
    """(dataset, stored values): uncompressed data viewed in place where dicom_native allows,
    everything else decoded by pydicom. The dataset has every element but the pixel data in the
    first case, all of them in the second."""
    data = source if isinstance(source, (bytes, bytearray, memoryview)) else _read_file(source, path)
    fp = _file_over(data)
    header = _read(fp, path, stop_before_pixels=True)
    stored = None
    if frame is None or 0 <= frame < int(header.get("NumberOfFrames") or 1):
        stored = native_stored_values(data, header, fp.tell(), frame)
    if stored is not None:
        _check_pixel_module(header, path, pixel_length=None)
        return header, stored
    ds = _read(_file_over(data), path, stop_before_pixels=False)
    _check_pixel_module(ds, path, pixel_length=len(ds.PixelData) if "PixelData" in ds else 0)
    if frame is not None:
        frames = int(ds.get("NumberOfFrames") or 1)
        if not 0 <= frame < frames:
            raise DicomDecodeError(path, f"frame {frame} asked of a file with {frames} frame(s)")
        ds.pixel_array_options(index=frame)
    return ds, _stored_values(ds, path)


def _file_over(data: bytes | bytearray | memoryview) -> io.BufferedIOBase:
    """A file reading `data` without copying it: BytesIO shares bytes; anything else (a mapping)
    through BufferReader, buffered, since pydicom reads a header a few bytes at a time."""
    if isinstance(data, bytes):
        return io.BytesIO(data)
    return io.BufferedReader(BufferReader(data), buffer_size=1 << 16)


def _read_file(source: str | Path, path: str) -> bytes | memoryview:
    try:
        return read_source(source)
    except OSError as err:
        raise DicomDecodeError(path, f"cannot be read ({err.strerror or type(err).__name__})") from err


def _display_name(source: str | Path | bytes, name: str | None) -> str:
    if name is not None:
        return name
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)


def _read(source: str | Path | bytes | io.IOBase, path: str, *, stop_before_pixels: bool) -> pydicom.Dataset:
    """Parse the file. pydicom's read warnings are recorded, never shown: they can quote header
    values (PHI). The one that matters, end of file inside an element, becomes an error: pydicom
    would otherwise drop the truncated pixel data and the file would read as having none."""
    fp = _file_over(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as err:
        raise DicomDecodeError(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from err
    except OSError as err:
        raise DicomDecodeError(path, f"cannot be read ({err.strerror or type(err).__name__})") from err
    except Exception as err:
        raise DicomDecodeError(path, f"its DICOM header cannot be parsed ({type(err).__name__})") from err
    if any("End of file reached" in str(w.message) for w in caught):
        raise DicomDecodeError(path, "the file is truncated: it ends inside an element (usually the pixel data)")
    return ds


def _check_pixel_module(ds: pydicom.Dataset, path: str, *, pixel_length: int | None) -> str:
    """Refuse, before decoding, what cannot decode: returns the PhotometricInterpretation.
    pixel_length: bytes of the parsed Pixel Data; None where dicom_native has checked it already."""
    if pixel_length is not None and "PixelData" not in ds:
        floats = "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
        raise DicomDecodeError(path, "only float pixel data, which is not supported" if floats else "no pixel data")
    missing = [k for k in REQUIRED_PIXEL_ELEMENTS if ds.get(k) is None]
    if missing:
        raise DicomDecodeError(path, f"the image description lacks {', '.join(missing)}")
    photometric = str(ds.get("PhotometricInterpretation") or "").strip()
    samples = int(ds.get("SamplesPerPixel") or 1)
    samples_needed = 1 if photometric in MONOCHROME + ("PALETTE COLOR",) else 3
    if photometric not in MONOCHROME + COLOUR or samples != samples_needed:
        raise DicomDecodeError(path, f"photometric interpretation {photometric!r} with {samples} sample(s) per pixel is not supported")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise DicomDecodeError(path, "the file meta header has no Transfer Syntax UID, so the pixel encoding is unknown")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise DicomDecodeError(path, f"transfer syntax {syntax.name} ({syntax}) is not supported: pydicom has no decoder for it") from err
    if not decoder.is_available:
        raise DicomDecodeError(
            path, f"no decoder installed for transfer syntax {syntax.name} ({syntax}); install one of: {'; '.join(decoder.missing_dependencies)}"
        )
    if pixel_length is not None and not syntax.is_encapsulated:
        expected, actual = get_expected_length(ds, "bytes"), pixel_length
        # One trailing byte pads odd lengths to even (PS3.5 7.1.1).
        if actual not in (expected, expected + expected % 2):
            raise DicomDecodeError(
                path,
                f"pixel data has {actual} bytes but the header describes {expected} "
                f"({ds.Rows} x {ds.Columns} x {ds.get('NumberOfFrames') or 1} frame(s) x {samples} sample(s) x {ds.BitsAllocated} bits)",
            )
    return photometric


def _stored_values(ds: pydicom.Dataset, path: str) -> np.ndarray:
    """Stored values as pydicom decodes them: (H, W[, 3]) or (F, H, W[, 3]), YBR already RGB."""
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        return ds.pixel_array
    except BaseException as err:
        # pylibjpeg-rle is Rust: corrupt RLE data can panic, and pyo3's PanicException derives
        # from BaseException, not Exception (PyO3/pyo3#2783). Anything else non-Exception propagates.
        if not isinstance(err, Exception) and type(err).__name__ != "PanicException":
            raise
        # pydicom's RuntimeError lists one line per plugin; the first plugin is the preferred one.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
        raise DicomDecodeError(path, f"the {syntax.name} pixel data is corrupt and cannot be decoded ({detail})") from err


def _monochrome_uint16(stored: np.ndarray, ds: pydicom.Dataset, photometric: str, apply_voi: bool) -> tuple[np.ndarray, str]:
    """(…, H, W) stored values -> (…, H, W) uint16, and which VOI step ran.

    The chain's *theoretical* output range [low, high] -- from BitsStored and PixelRepresentation,
    the rescale, or the LUT's bits per entry; a window maps onto its input's range -- is stretched
    linearly onto [0, 65535], rounded and clipped. Why this range and not the image's min/max:
    - one scale for every file: a 10-, 12- or 16-bit radiograph and an 8-bit screen capture all
      span 0..65535, and the mapping depends on the header only, never on image content;
    - 16-bit data is never squashed to 8 bits, and any integer chain whose range spans at most
      65536 values maps one-to-one (the stretch factor is >= 1), so it stays lossless;
    - MONOCHROME1 (bright = air) is inverted as 65535 - x, so bright = dense in every output.
    """
    values, (low, high) = _modality_values(stored, ds)
    voi = "none"
    voi_luts = ds.get("VOILUTSequence") or []
    if apply_voi and voi_luts and "LUTDescriptor" in voi_luts[0] and "LUTData" in voi_luts[0]:
        values, (low, high) = _lut_lookup(values, voi_luts[0], ds)
        voi = "voi_lut"
    elif apply_voi and ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        # pydicom maps the first window onto the same range its input could span, so [low, high] holds.
        values = apply_windowing(values, ds)
        voi = "window"
    if high <= low:
        raise ValueError(f"the header gives an empty value range [{low}, {high}]")
    if values is stored and low == 0 and stored.dtype.kind == "u" and high <= UINT16_MAX:
        pixels = _stretch_unsigned(stored, int(high))
        return (UINT16_MAX - pixels if photometric == "MONOCHROME1" else pixels), voi
    scaled = np.rint((np.asarray(values, dtype=np.float64) - low) * (UINT16_MAX / (high - low)))
    pixels = np.clip(scaled, 0, UINT16_MAX).astype(np.uint16)
    if photometric == "MONOCHROME1":
        pixels = UINT16_MAX - pixels
    return pixels, voi


def _stretch_unsigned(stored: np.ndarray, high: int) -> np.ndarray:
    """Unsigned stored values in [0, high] -> round(x * 65535 / high), as the float path computes it,
    through a (high + 1)-entry integer table: no float64 copy of a 30-megapixel mammogram, and no
    copy at all for 16-bit data, the common case. (high is 2**bits - 1, odd, so no .5 ties.)"""
    if high == UINT16_MAX and stored.dtype == np.uint16:
        return stored
    if UINT16_MAX % high == 0 and stored.dtype.itemsize * 8 <= high.bit_length():
        return np.multiply(stored, UINT16_MAX // high, dtype=np.uint16)  # 8-bit: x * 257, exact
    table = ((np.arange(high + 1, dtype=np.uint64) * UINT16_MAX + high // 2) // high).astype(np.uint16)
    index = stored if stored.dtype.itemsize * 8 <= high.bit_length() else np.minimum(stored, high)
    return table[index]


def _modality_values(stored: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """Stored values -> modality values (HU, optical density, ...) and the range the header allows."""
    modality_luts = ds.get("ModalityLUTSequence") or []
    if modality_luts:
        return _lut_lookup(stored, modality_luts[0], ds)
    bits = int(ds.BitsStored)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation == 1 else (0, 2**bits - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None:
        return stored, (low, high)
    slope, intercept = float(slope), float(intercept)
    low, high = sorted((low * slope + intercept, high * slope + intercept))
    return stored.astype(np.float64) * slope + intercept, (low, high)


def _lut_lookup(values: np.ndarray, item: pydicom.Dataset, ds: pydicom.Dataset) -> tuple[np.ndarray, tuple[float, float]]:
    """Map values through a Modality or VOI LUT item -> (entries, their range [0, 2**bits - 1]).

    LUT Descriptor = (entries, first mapped input, bits per entry), 0 entries meaning 65536
    (PS3.3 C.11.1.1). Inputs below the first mapped value take the first entry, inputs past the
    end the last. Own lookup rather than pydicom's apply_voi: that one indexes through a table
    typed by the LUT's depth, so an 8-bit VOI LUT wraps inputs above 255.
    """
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):  # VR OW: raw 16-bit words in the file's byte order
        data = np.frombuffer(data, dtype="<u2" if ds.original_encoding[1] is not False else ">u2")
    table = np.atleast_1d(np.asarray(data, dtype=np.int64))
    if table.size < entries:
        raise ValueError(f"the LUT holds {table.size} entries but its descriptor declares {entries}")
    index = np.clip(np.rint(np.asarray(values, dtype=np.float64)).astype(np.int64) - first, 0, entries - 1)
    return table[index], (0, 2**bits - 1)


def _colour_uint8(stored: np.ndarray, ds: pydicom.Dataset, photometric: str) -> np.ndarray:
    """(…, H, W, 3) RGB of any depth -> uint8 RGB.

    Colour images (photographs, ultrasound, screen captures) are 8-bit in their sources and in the
    models that read them, so 16-bit colour is scaled from [0, 2**bits - 1] onto [0, 255] and
    rounded; 8-bit colour passes unchanged. Palette colour goes through its palette first.
    """
    if photometric == "PALETTE COLOR":
        rgb, bits = apply_color_lut(stored, ds), int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        rgb, bits = stored, int(ds.BitsStored)
    scaled = np.rint(rgb.astype(np.float64) * (255 / (2**bits - 1)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return (str(value).strip() or None) if value is not None else None


def _laterality(ds: pydicom.Dataset) -> str | None:
    """'L' or 'R' from ImageLaterality, else Laterality; 'B', 'U' or absent -> None."""
    side = _text(ds, "ImageLaterality") or _text(ds, "Laterality")
    return side.upper() if side and side.upper() in ("L", "R") else None


def _pixel_spacing_mm(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(dy, dx) in mm. Zero, negative or malformed spacings count as absent: some CR files carry 0\\0."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            row, column = (float(v) for v in ds.get(keyword))
        except (TypeError, ValueError):
            continue
        if row > 0 and column > 0:
            return row, column
    return None
