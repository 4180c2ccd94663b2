"""`ingest cmmd` end to end on CMMD downloads in the real TCIA layout (generated pixels; real
metadata.csv and clinical-sheet rows when ../shared/data/cmmd is there)."""

from __future__ import annotations

import csv
import json
import tarfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import openpyxl
import pyarrow.parquet as pq
import pydicom
import xxhash
import pytest
import webdataset as wds

from ingest.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, main
from ingest.dicom_pixels import decode_dicom
from ingest.pipeline import run_job
from ingest.sample_data.cmmd import SHEET_NAME, make_cmmd_sample
from ingest.sources import cmmd
from shards import card as card_io
from shards import codecs, schema
from shards.verify import verify


def ingest(root: Path, out: Path, **kw):
    kw = {"test_fraction": 0.3, "val_fraction": 0.3, "shard_size": 7, "random_side": 96, "random_per_image": 2, **kw}
    return run_job(cmmd.build_job(root=root, out=out, progress=False, **kw)), out


def samples(out: Path) -> list[dict]:
    found = []
    for split in schema.SPLITS:
        urls = sorted(str(p) for p in (out / split).glob("shard-*.tar"))
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False) if urls else []:
            found.append({"folder": split, "meta": json.loads(sample["json"]),
                          "pixels": codecs.decode_pixels("png", sample["png"])})
    return found


def fingerprint(path: Path) -> str:
    """The source fingerprint the format promises (XXH3-128 of the file), computed here directly."""
    return xxhash.xxh3_128_hexdigest(path.read_bytes())


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): fingerprint(p) for p in sorted(out.glob("*/shard-*.tar"))}


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / schema.REJECTS_FILE).read_text().splitlines()]


def sheet_labels(path: Path) -> dict[tuple[str, str], dict]:
    """(ID1, LeftRight) -> the labels the sheet row says, read here with openpyxl directly."""
    rows = list(openpyxl.load_workbook(path, read_only=True).worksheets[0].iter_rows(values_only=True))
    header = rows[0]
    labels = {}
    for row in rows[1:]:
        cell = dict(zip(header, row))
        labels[(cell["ID1"], cell["LeftRight"])] = {
            "classification": cell["classification"].lower(), "subtype": cell["subtype"], "abnormality": cell["abnormality"]}
    return labels


def source_files(root: Path) -> dict[str, Path]:
    return {fingerprint(p): p for p in root.rglob("*.dcm")}


@pytest.fixture(scope="module")
def download(tmp_path_factory):
    return make_cmmd_sample(tmp_path_factory.mktemp("cmmd") / "dl", subjects=10, seed=2, bits_stored=16, with_defects=True)


@pytest.fixture(scope="module")
def random_crops(download, tmp_path_factory):
    return ingest(download.root, tmp_path_factory.mktemp("out") / "random")


def test_labels_are_the_sheet_row_of_the_image_breast(download, random_crops):
    _, out = random_crops
    expected = sheet_labels(download.root / SHEET_NAME)
    files = source_files(download.root)
    found = samples(out)
    for sample in found:
        meta = sample["meta"]
        header = pydicom.dcmread(files[meta["source_fingerprint"]], stop_before_pixels=True)
        assert meta["laterality"] == header.ImageLaterality and meta["view"] == header.ViewPosition
        assert meta["labels"] == expected[(header.PatientID, header.ImageLaterality)]
        assert meta["split"] == sample["folder"] and meta["crop_kind"] == "random"
        assert sample["pixels"].dtype == np.uint16 and sample["pixels"].shape == (224, 224)
    per_image = Counter(s["meta"]["source_fingerprint"] for s in found)
    # Every labelled image but the truncated one and the one without laterality; 2 crops each.
    assert len(per_image) == download.labelled_images - 2 and set(per_image.values()) == {2}
    assert {s["meta"]["labels"]["subtype"] for s in found if s["meta"]["labels"]["classification"] == "benign"} == {None}


def test_unusable_inputs_are_rejects_naming_file_and_reason(download, random_crops):
    summary, out = random_crops
    found = rejects(out)
    assert Counter(r["reason"].split(":")[0] for r in found) == {
        "no sheet row": download.unlabelled_images, "undecodable DICOM": 1, "no laterality": 1, "file not found": 1}
    by_path = {r["source_path"]: r["reason"].split(":")[0] for r in found}
    assert by_path[download.defects["corrupt_image"]] == "undecodable DICOM"
    assert by_path[download.defects["no_laterality"]] == "no laterality"
    assert by_path[download.defects["missing_series"]] == "file not found"
    assert summary.rejects == len(found)


def test_splits_are_by_subject(download, random_crops):
    _, out = random_crops
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    split_of: dict[str, str] = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"]
    assert set(split_of.values()) == {"train", "val", "test"}
    card = json.loads((out / schema.CARD_FILE).read_text())
    assert card["notes"]["subjects"] == download.subjects and "no official split" in card["notes"]["split"]


def test_bit_depth_is_kept(tmp_path):
    """No resize (crop side = output size): an 8-bit download's pixels are exact multiples of 257
    (decode_dicom's 8 -> 16 bit scale), a 16-bit one keeps levels in between."""
    for bits in (8, 16):
        root = make_cmmd_sample(tmp_path / f"dl{bits}", subjects=2, bits_stored=bits).root
        _, out = ingest(root, tmp_path / f"out{bits}", size=128, random_side=128, random_per_image=1)
        pixels = np.concatenate([s["pixels"].ravel() for s in samples(out)])
        assert pixels.dtype == np.uint16
        assert np.all(pixels % 257 == 0) == (bits == 8)
        assert np.unique(pixels).size > 256 if bits == 16 else np.unique(pixels).size <= 256


def test_whole_mammogram_is_padded_to_a_centred_square(download, tmp_path):
    _, out = ingest(download.root, tmp_path / "whole", crops="whole")
    files = source_files(download.root)
    found = samples(out)
    assert len(found) == download.labelled_images - 2
    for sample in found[:3]:
        source = decode_dicom(files[sample["meta"]["source_fingerprint"]]).pixels  # (256, 192)
        expected = cv2.resize(np.pad(source, ((0, 0), (32, 32))), (224, 224), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(sample["pixels"], expected)
        assert sample["meta"]["crop_box"] == [-32, 0, 224, 256] and sample["meta"]["crop_kind"] == "whole"


def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(download, random_crops, tmp_path):
    _, first = random_crops
    _, second = ingest(download.root, tmp_path / "two", workers=2)
    assert shard_digests(first) == shard_digests(second) and shard_digests(first)
    assert (first / schema.MANIFEST_FILE).read_bytes() == (second / schema.MANIFEST_FILE).read_bytes()


def test_sample_download_is_deterministic(download, tmp_path):
    again = make_cmmd_sample(tmp_path / "again", subjects=10, seed=2, bits_stored=16, with_defects=True)
    digests = [{p.relative_to(root).as_posix(): fingerprint(p) for p in sorted(root.rglob("*")) if p.is_file()}
               for root in (download.root, again.root)]
    assert digests[0] == digests[1]


def test_verify_passes(random_crops):
    _, out = random_crops
    bad, shards, read = verify(out, card_io.read_card(out), workers=1)
    assert bad == [] and shards >= 3 and read == len(samples(out))


def test_no_phi_in_shards_manifest_card_or_stdout(download, tmp_path, capsys):
    identifiers = set(download.phi)
    with open(download.root / "metadata.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            identifiers |= {row["Subject ID"], row["Study UID"], row["Series UID"]}
    out = tmp_path / "phi"
    assert main(["cmmd", str(download.root), "--out", str(out), "--workers", "1", "--no-progress",
                 "--random-side", "96"]) == EXIT_REJECTS
    captured = capsys.readouterr()
    blobs = [captured.out.encode(), captured.err.encode()]
    blobs += [r["reason"].encode() for r in rejects(out)]  # reasons are shown; source paths are operator-only
    for path in out.rglob("*"):
        if path.is_file() and path.name != schema.REJECTS_FILE:
            blobs.append(path.read_bytes())
            if path.suffix == ".tar":
                with tarfile.open(path) as tar:
                    blobs.extend(tar.extractfile(m).read() for m in tar.getmembers())
    blobs += [json.dumps(row).encode() for row in pq.read_table(out / schema.MANIFEST_FILE).to_pylist()]
    everything = b"\n".join(blobs)
    for value in identifiers:
        assert value and value.encode() not in everything, f"identifier {value!r} leaked"


def test_cli_exit_codes_and_sheet_rows_that_cannot_be_read(tmp_path, capsys):
    clean = make_cmmd_sample(tmp_path / "clean", subjects=1).root  # one 2-image subject, one sheet row
    small = ["--random-side", "96", "--no-progress", "--workers", "1"]  # the generated images are 256 x 192
    assert main(["cmmd", str(clean), "--out", str(tmp_path / "a"), *small]) == EXIT_OK
    workbook = openpyxl.load_workbook(clean / SHEET_NAME)
    workbook.active.append(("D1-0001", "X", 50, 2, "mass", "Benign", None))
    workbook.active.append(("D1-0002", "L", 50, 2, "mass", "Unknown", None))
    workbook.save(clean / SHEET_NAME)
    assert main(["cmmd", str(clean), "--out", str(tmp_path / "b"), *small]) == EXIT_REJECTS
    assert [(r["source_path"], r["reason"]) for r in rejects(tmp_path / "b")] == [
        (f"{SHEET_NAME}:3", "unreadable sheet row: LeftRight is 'X', not L or R"),
        (f"{SHEET_NAME}:4", "unreadable sheet row: classification 'Unknown' is not Benign or Malignant")]
    (clean / "metadata.csv").unlink()
    assert main(["cmmd", str(clean), "--out", str(tmp_path / "c"), "--no-progress"]) == EXIT_USAGE
    assert "no metadata.csv" in capsys.readouterr().err
    other = make_cmmd_sample(tmp_path / "nosheet", subjects=1).root
    (other / SHEET_NAME).unlink()
    assert main(["cmmd", str(other), "--out", str(tmp_path / "d"), "--no-progress"]) == EXIT_USAGE
    assert SHEET_NAME in capsys.readouterr().err


def test_real_metadata_and_sheet_rows(shared_data, tmp_path):
    """Real subjects' metadata.csv and sheet rows (UIDs, folder names, 2- and 4-image series, one or
    two rows), generated pixels: every image of a breast with a row is labelled as the real sheet
    says, every other one is a 'no sheet row' reject."""
    made = make_cmmd_sample(tmp_path / "real", subjects=10, seed=0, real_dir=shared_data / "cmmd")
    summary, out = ingest(made.root, tmp_path / "out")
    real = sheet_labels(shared_data / "cmmd" / SHEET_NAME)
    with open(shared_data / "cmmd" / "metadata.csv", newline="", encoding="utf-8-sig") as fh:
        images = {row["Subject ID"]: int(row["Number of Images"]) for row in csv.DictReader(fh)}
    with open(made.root / "metadata.csv", newline="") as fh:
        subjects = [row["Subject ID"] for row in csv.DictReader(fh)]
    rows_of = Counter(subject for subject, _ in real)
    assert {images[s] for s in subjects} == {2, 4} and {rows_of[s] for s in subjects} == {1, 2}
    unlabelled = sum(2 for s in subjects if images[s] == 4 and rows_of[s] == 1)
    assert Counter(r["reason"].split(":")[0] for r in rejects(out)) == ({"no sheet row": unlabelled} if unlabelled else {})
    files = source_files(made.root)
    found = samples(out)
    assert len({s["meta"]["source_fingerprint"] for s in found}) == sum(images[s] for s in subjects) - unlabelled
    for sample in found:
        header = pydicom.dcmread(files[sample["meta"]["source_fingerprint"]], stop_before_pixels=True)
        assert sample["meta"]["labels"] == real[(header.PatientID, header.ImageLaterality)]


def test_unlabeled_keep_turns_no_sheet_row_rejects_into_samples_with_null_labels(download, random_crops, tmp_path):
    _, rejected = random_crops
    summary, out = ingest(download.root, tmp_path / "keep", unlabeled="keep")
    reasons = Counter(r["reason"].split(":")[0] for r in rejects(out))
    assert "no sheet row" not in reasons and summary.rejects == len(rejects(rejected)) - download.unlabelled_images
    unlabeled = [s for s in samples(out) if s["meta"]["labels"]["classification"] is None]
    assert unlabeled and all(set(s["meta"]["labels"].values()) == {None} for s in unlabeled)
    assert len({s["meta"]["source_fingerprint"] for s in unlabeled}) == download.unlabelled_images
