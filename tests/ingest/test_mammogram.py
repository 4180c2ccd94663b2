"""Lesion and random tissue crops on a synthetic mammogram whose anatomy the test controls."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from ingest import mammogram
from ingest.crops import mask_bbox

H, W = 600, 400


def breast(lesion_box=(200, 250, 260, 300)) -> tuple[np.ndarray, np.ndarray]:
    """A half-disc of tissue against the left edge, air elsewhere, and a bright lesion."""
    yy, xx = np.mgrid[:H, :W]
    tissue = ((yy - H / 2) ** 2 / (H / 2.2) ** 2 + xx**2 / (W * 0.8) ** 2) < 1
    image = np.where(tissue, 30000, 500).astype(np.uint16)
    x0, y0, x1, y1 = lesion_box
    lesion = np.zeros((H, W), bool)
    lesion[y0:y1, x0:x1] = True
    image[lesion] = 50000
    return image, lesion


def write_dicom(path, pixels: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("mask_first", [True, False])
def test_roi_mask_is_found_by_content_not_by_order(tmp_path, mask_first):
    image, lesion = breast()
    write_dicom(tmp_path / "a.dcm", (lesion * 255).astype(np.uint8) if mask_first else image[240:320, 180:280].copy())
    write_dicom(tmp_path / "b.dcm", image[240:320, 180:280].copy() if mask_first else (lesion * 255).astype(np.uint8))
    mask, bbox, resized = mammogram.find_roi_mask([tmp_path / "a.dcm", tmp_path / "b.dcm"], image.shape, tmp_path)
    assert not resized and np.array_equal(mask != 0, lesion) and bbox == mask_bbox(lesion)


def test_mask_of_another_size_is_resized_to_its_mammogram(tmp_path):
    image, lesion = breast()
    write_dicom(tmp_path / "m.dcm", (lesion[:-6, :-4] * 255).astype(np.uint8))
    mask, bbox, resized = mammogram.find_roi_mask([tmp_path / "m.dcm"], image.shape, tmp_path)
    assert resized and mask.shape == image.shape and mask.any() and bbox == mask_bbox(mask)


def test_empty_mask_is_an_error_naming_the_file(tmp_path):
    write_dicom(tmp_path / "empty.dcm", np.zeros((H, W), np.uint8))
    with pytest.raises(mammogram.RoiMaskError, match=r"empty ROI mask: empty\.dcm"):
        mammogram.find_roi_mask([tmp_path / "empty.dcm"], (H, W), tmp_path)


def test_lesion_crop_is_square_with_margin_and_centred():
    image, lesion = breast(lesion_box=(200, 250, 300, 290))  # 100 x 40 ROI
    params = mammogram.CropParams(size=64, margin=0.25)
    pixels, mask, box = mammogram.lesion_crop(image, lesion, params)
    x0, y0, x1, y1 = box
    assert x1 - x0 == y1 - y0 == 150  # longer side 100 plus 25 % each side
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (250, 270)
    assert pixels.shape == mask.shape == (64, 64) and pixels.dtype == np.uint16
    bx0, by0, bx1, by1 = mask_bbox(mask)
    assert abs((bx0 + bx1) / 2 - 32) <= 1 and abs((by0 + by1) / 2 - 32) <= 1


def test_random_crops_lie_in_tissue_away_from_lesions_and_repeat_with_the_seed():
    image, lesion = breast()
    params = mammogram.CropParams(size=32, random_per_image=6, random_side=80, lesion_clearance=10)
    roi = [mammogram.RoiMask(lesion, mask_bbox(lesion), False)]
    first = mammogram.random_tissue_crops(image, roi, params, random.Random(7))
    again = mammogram.random_tissue_crops(image, roi, params, random.Random(7))
    other = mammogram.random_tissue_crops(image, roi, params, random.Random(8))
    assert len(first) == 6
    assert [box for _, box in first] == [box for _, box in again] != [box for _, box in other]
    for pixels, (x0, y0, x1, y1) in first:
        assert pixels.shape == (32, 32)
        assert not lesion[max(y0 - 10, 0):y1 + 10, max(x0 - 10, 0):x1 + 10].any()
        assert (image[y0:y1, x0:x1] == 30000).mean() >= params.min_tissue
