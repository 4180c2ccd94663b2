"""The opening of every source's per-image work: bytes counted, fingerprint = XXH3-128 of the file,
an undecodable file becomes one reject naming it and the reason."""

from __future__ import annotations

import cv2
import numpy as np
import xxhash

from ingest.pipeline import UnitOutput
from ingest.unit_inputs import decode_unit_dicom, read_unit_image


def test_image_is_decoded_counted_and_fingerprinted(tmp_path):
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), np.arange(64, dtype=np.uint8).reshape(8, 8))
    out = UnitOutput()
    gray, fingerprint = read_unit_image(str(path), "x.png", out)
    assert gray.pixels.dtype == np.uint8 and gray.pixels.shape == (8, 8)
    assert fingerprint.result() == xxhash.xxh3_128_hexdigest(path.read_bytes())
    assert out.notes["input_bytes"] == path.stat().st_size and not out.rejects


def test_undecodable_inputs_become_rejects(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = UnitOutput()
    assert read_unit_image(str(path), "broken.png", out) is None
    assert decode_unit_dicom(b"not a dicom file at all", "a/b.dcm", out) is None
    assert [r.source_path for r in out.rejects] == ["broken.png", "a/b.dcm"]
    assert out.rejects[1].reason.startswith("undecodable DICOM: ")
