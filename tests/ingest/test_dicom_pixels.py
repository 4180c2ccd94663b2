"""ingest.dicom_pixels: real pydicom test files, plus small DICOMs written here that always run
(the display chain; files that cannot decode are in test_dicom_pixels_errors.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_modality_lut

from ingest.dicom_pixels import DicomDecodeError, decode_dicom, read_header

# ../shared/data beside the checkout, overridable like tests/conftest.py.
SHARED_DATA = Path(os.environ.get("MEDSHARDS_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
DICOM_DIR = SHARED_DATA / "dicom"
REAL_FILES = sorted(p.name for p in DICOM_DIR.iterdir() if p.is_file()) if DICOM_DIR.is_dir() else []
BROKEN = ["JPEG-lossy.dcm", "RG2_JPLY.dcm"]  # broken on purpose (see shared/data/README.md)
real = pytest.mark.skipif(not DICOM_DIR.is_dir(), reason=f"real DICOM samples not found at {DICOM_DIR}")


def raw_stored(name: str) -> np.ndarray:
    """pydicom's stored values, before any LUT: the reference the chain is checked against."""
    return pydicom.dcmread(DICOM_DIR / name).pixel_array


# --- real files -------------------------------------------------------------------------------


@real
@pytest.mark.parametrize("name", [n for n in REAL_FILES if n not in BROKEN])
def test_real_file_decodes_to_the_shape_its_header_describes(name):
    header = read_header(DICOM_DIR / name)
    image = decode_dicom(DICOM_DIR / name)
    frames = int(header.get("NumberOfFrames") or 1)
    colour = header.SamplesPerPixel == 3
    expected_shape = (frames,) * (frames > 1) + (header.Rows, header.Columns) + (3,) * colour
    assert image.pixels.shape == expected_shape
    assert image.pixels.dtype == (np.uint8 if colour else np.uint16)
    assert (image.frames, image.bits_stored, image.photometric) == (frames, header.BitsStored, header.PhotometricInterpretation)
    if header.get("VOILUTSequence"):
        assert image.voi == "voi_lut"
    elif header.get("WindowCenter") is not None:
        assert image.voi == "window"
    else:
        assert image.voi == "none"


@real
@pytest.mark.parametrize("name", BROKEN)
def test_broken_jpeg_raises_naming_the_file(name, assert_decode_error):
    read_header(DICOM_DIR / name)  # the header itself is fine
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(DICOM_DIR / name)
    assert_decode_error(info.value, DICOM_DIR / name, r"JPEG Extended .* pixel data is corrupt .*libjpeg error")


@real
@pytest.mark.parametrize(
    "original, copy",
    [("MR_small.dcm", c) for c in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm")]
    + [("emri_small.dcm", c) for c in ("emri_small_RLE.dcm", "emri_small_big_endian.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm")]
    + [("RG2_JPLL.dcm", "RG2_JLSL.dcm")],
)
def test_lossless_and_big_endian_copies_decode_equal_to_the_original(original, copy):
    a, b = decode_dicom(DICOM_DIR / original, apply_voi=False), decode_dicom(DICOM_DIR / copy, apply_voi=False)
    assert a.pixels.dtype == b.pixels.dtype == np.uint16
    np.testing.assert_array_equal(a.pixels, b.pixels)


@real
def test_fixed_lossy_jpeg_is_close_to_its_lossless_original():
    lossy = decode_dicom(DICOM_DIR / "RG2_JPLY_fixed.dcm", apply_voi=False).pixels.astype(np.float64)
    lossless = decode_dicom(DICOM_DIR / "RG2_JPLL.dcm", apply_voi=False).pixels.astype(np.float64)
    assert np.corrcoef(lossy.ravel(), lossless.ravel())[0, 1] > 0.999
    assert np.abs(lossy - lossless).mean() < 0.01 * 65535


@real
@pytest.mark.parametrize("apply_voi", [False, True])
@pytest.mark.parametrize("name", ["CR_MONOCHROME1_16x16_CR1.dcm", "RG1_J2KI.dcm", "RG1_JLSN.dcm", "RG3_J2KR.dcm"])
def test_monochrome1_comes_out_inverted_relative_to_stored_values(name, apply_voi):
    image = decode_dicom(DICOM_DIR / name, apply_voi=apply_voi)
    assert image.photometric == "MONOCHROME1"
    r = np.corrcoef(image.pixels.ravel().astype(np.float64), raw_stored(name).ravel().astype(np.float64))[0, 1]
    assert r < -0.99


@real
def test_monochrome2_keeps_the_stored_orientation():
    pixels = decode_dicom(DICOM_DIR / "RG2_JPLL.dcm").pixels
    assert np.corrcoef(pixels.ravel().astype(np.float64), raw_stored("RG2_JPLL.dcm").ravel().astype(np.float64))[0, 1] > 0.99


@real
@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "RG2_JPLL.dcm", "MR2_J2KR.dcm", "JLSL_16_15_1_1F.dcm"])
def test_high_bit_depth_image_keeps_every_distinct_stored_value(name):
    stored_levels = np.unique(raw_stored(name)).size
    assert stored_levels > 256
    assert np.unique(decode_dicom(DICOM_DIR / name, apply_voi=False).pixels).size == stored_levels
    assert np.unique(decode_dicom(DICOM_DIR / name).pixels).size > 256


@real
def test_signed_16_bit_maps_by_its_header_range_not_its_content():
    # NM image storing 0..278 in a signed 16-bit range: shifted by 32768, never stretched to fill.
    pixels = decode_dicom(DICOM_DIR / "JPEG-LL.dcm").pixels
    np.testing.assert_array_equal(pixels, raw_stored("JPEG-LL.dcm").astype(np.int64) + 32768)


@real
def test_modality_lut_file_goes_through_its_lut():
    ds = pydicom.dcmread(DICOM_DIR / "mlut_18.dcm")
    entries, first, bits = ds.ModalityLUTSequence[0].LUTDescriptor
    table = np.asarray(ds.ModalityLUTSequence[0].LUTData)
    expected = table[np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)]
    assert bits == 16  # 16-bit LUT output spans the uint16 range as it is
    image = decode_dicom(DICOM_DIR / "mlut_18.dcm")
    assert image.voi == "none"
    np.testing.assert_array_equal(image.pixels, expected)
    np.testing.assert_array_equal(image.pixels, apply_modality_lut(ds.pixel_array, ds))


@real
def test_voi_lut_file_goes_through_its_lut_only_when_asked():
    ds = pydicom.dcmread(DICOM_DIR / "vlut_04.dcm")
    entries, first, bits = ds.VOILUTSequence[0].LUTDescriptor
    table = np.asarray(ds.VOILUTSequence[0].LUTData)
    expected = table[np.clip(ds.pixel_array.astype(np.int64) - first, 0, entries - 1)]
    assert bits == 16
    image = decode_dicom(DICOM_DIR / "vlut_04.dcm")
    assert image.voi == "voi_lut"
    np.testing.assert_array_equal(image.pixels, expected)
    skipped = decode_dicom(DICOM_DIR / "vlut_04.dcm", apply_voi=False)
    assert skipped.voi == "none"
    np.testing.assert_array_equal(skipped.pixels, ds.pixel_array.astype(np.uint16) * 257)  # 8 bits -> 16


@real
@pytest.mark.parametrize(
    "name, shape, dtype",
    [
        ("emri_small.dcm", (10, 64, 64), np.uint16),
        ("rtdose.dcm", (15, 10, 10), np.uint16),
        ("examples_ybr_color.dcm", (30, 240, 320, 3), np.uint8),
        ("SC_rgb_rle_16bit_2frame.dcm", (2, 100, 100, 3), np.uint8),
    ],
)
def test_multiframe_keeps_every_frame_on_a_leading_axis(name, shape, dtype):
    image = decode_dicom(DICOM_DIR / name)
    assert (image.pixels.shape, image.pixels.dtype, image.frames) == (shape, dtype, shape[0])


@real
def test_16_bit_colour_is_scaled_to_8_bits():
    pixels = decode_dicom(DICOM_DIR / "SC_rgb_rle_16bit_2frame.dcm").pixels
    np.testing.assert_array_equal(pixels, np.rint(raw_stored("SC_rgb_rle_16bit_2frame.dcm") / 257).astype(np.uint8))


@real
def test_ybr_jpeg_comes_out_as_the_rgb_pillow_decodes():
    ds = pydicom.dcmread(DICOM_DIR / "examples_ybr_color.dcm")
    first_frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    reference = np.asarray(Image.open(io.BytesIO(first_frame)).convert("RGB"), dtype=np.int64)
    difference = np.abs(decode_dicom(DICOM_DIR / "examples_ybr_color.dcm").pixels[0] - reference)
    assert difference.max() <= 4 and difference.mean() < 0.5  # two JPEG decoders, rounding apart


@real
@pytest.mark.parametrize(
    "name, modality, laterality, view, spacing",
    [
        ("RG3_J2KR.dcm", "CR", "R", "AP", None),
        ("CR_MONOCHROME1_16x16_CR1.dcm", "CR", None, "LL", (0.1, 0.1)),  # ImagerPixelSpacing only
        ("RG1_J2KI.dcm", "CR", None, "PA", None),  # PixelSpacing 0\0 counts as absent
        ("CT_small.dcm", "CT", None, None, (0.661468, 0.661468)),
    ],
)
def test_header_fields(name, modality, laterality, view, spacing):
    image = decode_dicom(DICOM_DIR / name)
    assert (image.modality, image.laterality, image.view, image.pixel_spacing_mm) == (modality, laterality, view, spacing)


@real
def test_bytes_decode_like_the_path_and_errors_use_the_given_name(assert_decode_error):
    data = (DICOM_DIR / "MR_small_RLE.dcm").read_bytes()
    np.testing.assert_array_equal(decode_dicom(data).pixels, decode_dicom(DICOM_DIR / "MR_small_RLE.dcm").pixels)
    broken = (DICOM_DIR / "RG2_JPLY.dcm").read_bytes()
    with pytest.raises(DicomDecodeError) as info:
        decode_dicom(broken, name="cases/RG2_JPLY.dcm")
    assert_decode_error(info.value, Path("cases/RG2_JPLY.dcm"), "corrupt")


# --- generated files --------------------------------------------------------------------------


STORED_8 = np.array([[0, 50, 75], [90, 100, 125], [128, 254, 255]], dtype=np.uint8)
# Slope 2, intercept -100 -> values 2v - 100 in [-100, 410]. LINEAR window (PS3.3 C.11.2.1.2.1), c=100, w=101:
# x <= 49.5 -> 0; x > 149.5 -> 65535; else ((x - 99.5) / 100 + 0.5) * 65535, e.g. v=75: x=50 -> 0.005 * 65535 = 327.7.
WINDOWED_8 = [[0, 0, 328], [19988, 33095, 65535], [65535, 65535, 65535]]
WINDOW = {"RescaleSlope": 2, "RescaleIntercept": -100, "WindowCenter": 100, "WindowWidth": 101}


@pytest.mark.parametrize(
    "stored, photometric, elements, apply_voi, expected, voi",
    [
        pytest.param(np.array([[0, 1], [1000, 65535]], np.uint16), "MONOCHROME2", {}, True, [[0, 1], [1000, 65535]], "none", id="16-bit-identity"),
        pytest.param(np.array([[-32768, -1], [0, 32767]], np.int16), "MONOCHROME2", {}, True, [[0, 32767], [32768, 65535]], "none", id="16-bit-signed"),
        pytest.param(np.array([[0, 1], [128, 255]], np.uint8), "MONOCHROME2", {}, True, [[0, 257], [32896, 65535]], "none", id="8-bit-times-257"),
        # 12 bits: v * 65535 / 4095, from the header's range although the image spans only 1..4094.
        pytest.param(np.array([[100, 2048], [4094, 1]], np.uint16), "MONOCHROME2", {"BitsStored": 12, "HighBit": 11}, True, [[1600, 32776], [65519, 16]], "none", id="12-bit-partial-range"),
        pytest.param(np.array([[0, 1], [128, 255]], np.uint8), "MONOCHROME1", {}, True, [[65535, 65278], [32639, 0]], "none", id="monochrome1-inverted"),
        # The theoretical range moves with the rescale, so a rescale alone changes nothing.
        pytest.param(np.array([[0, 1], [128, 255]], np.uint8), "MONOCHROME2", {"RescaleSlope": 2, "RescaleIntercept": -100}, True, [[0, 257], [32896, 65535]], "none", id="rescale"),
        pytest.param(STORED_8, "MONOCHROME2", WINDOW, True, WINDOWED_8, "window", id="rescale-then-window"),
        pytest.param(STORED_8, "MONOCHROME1", WINDOW, True, 65535 - np.array(WINDOWED_8), "window", id="window-then-invert"),
        pytest.param(STORED_8, "MONOCHROME2", WINDOW, False, STORED_8.astype(np.int64) * 257, "none", id="window-skipped"),
    ],
)
def test_monochrome_chain_matches_a_hand_computation(tmp_path, stored, photometric, elements, apply_voi, expected, voi, dicom_dataset, write_dicom):
    image = decode_dicom(write_dicom(dicom_dataset(stored, photometric, **elements), tmp_path / "x.dcm"), apply_voi=apply_voi)
    assert (image.pixels.dtype, image.voi) == (np.uint16, voi)
    np.testing.assert_array_equal(image.pixels, np.asarray(expected))


def test_voi_lut_with_8_bit_entries_and_an_offset(tmp_path, dicom_dataset, write_dicom):
    # LUT Descriptor (2048 entries, first input 1000, 8 bits); entry i = i // 8. Inputs below 1000
    # take entry 0, inputs past 3047 the last; 8-bit entries then scale by 257.
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [2048, 1000, 8])
    item.add_new("LUTData", "OW", (np.arange(2048) // 8).astype("<u2").tobytes())
    stored = np.array([[0, 1300], [4095, 2000]], np.uint16)
    ds = dicom_dataset(stored, BitsStored=12, HighBit=11, VOILUTSequence=[item])
    image = decode_dicom(write_dicom(ds, tmp_path / "x.dcm"))
    assert image.voi == "voi_lut"
    np.testing.assert_array_equal(image.pixels, [[0, 37 * 257], [65535, 125 * 257]])


def test_12_bit_data_is_stretched_losslessly(tmp_path, dicom_dataset, write_dicom):
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    pixels = decode_dicom(write_dicom(dicom_dataset(stored, bits_stored=12), tmp_path / "x.dcm")).pixels.ravel()
    assert pixels[0] == 0 and pixels[-1] == 65535
    assert np.all(np.diff(pixels.astype(np.int64)) >= 16)  # 4096 levels, every one kept


def test_palette_colour_goes_through_its_palette(tmp_path, dicom_dataset, write_dicom):
    ds = dicom_dataset(np.array([[0, 1], [2, 3]], np.uint8), "PALETTE COLOR")
    for colour, entries in (("Red", [0, 65535, 0, 32896]), ("Green", [0, 0, 65535, 32896]), ("Blue", [0, 0, 0, 65535])):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.array(entries, "<u2").tobytes())
    image = decode_dicom(write_dicom(ds, tmp_path / "x.dcm"))
    np.testing.assert_array_equal(image.pixels, [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [128, 128, 255]]])


@real
@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm", "examples_ybr_color.dcm", "CT_small.dcm"])
def test_one_frame_decodes_as_that_frame_of_the_whole_file(name):
    whole = decode_dicom(DICOM_DIR / name)
    for index in sorted({0, whole.frames // 2, whole.frames - 1}):
        one = decode_dicom(DICOM_DIR / name, frame=index)
        expected = whole.pixels[index] if whole.frames > 1 else whole.pixels
        assert one.frames == whole.frames
        np.testing.assert_array_equal(one.pixels, expected)
