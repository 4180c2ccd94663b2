"""`ingest dicom` end to end: a generated archive tree with every quirk (always runs) and the real
pydicom / SIIM files of ../shared/data/dicom read as one mixed archive."""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pydicom
import xxhash
import pytest
import webdataset as wds

from ingest import pseudonym
from ingest.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, main
from ingest.dicom_pixels import decode_dicom
from ingest.pipeline import IngestError, run_job
from ingest.sample_data.dicom_archive import make_dicom_archive
from ingest.sources import dicom_archive
from shards import card as card_io
from shards import codecs, schema
from shards.verify import verify

BROKEN_REAL = {"JPEG-lossy.dcm", "RG2_JPLY.dcm"}  # broken on purpose (see shared/data/README.md)
TEST_SALT = "a-secret-of-this-test-module"


@pytest.fixture(scope="module", autouse=True)
def secret_salt():
    """`ingest dicom` refuses the public salt unless asked for by name: these tests give a secret."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(pseudonym.SALT_ENV, TEST_SALT)
        yield


def ingest(root: Path, out: Path, **kw):
    kw = {"test_fraction": 0.3, "val_fraction": 0.3, "shard_size": 5, **kw}
    return run_job(dicom_archive.build_job(root=root, out=out, progress=False, **kw)), out


def samples(out: Path) -> list[dict]:
    """Every sample read back through plain webdataset, with its split folder and decoded pixels."""
    found = []
    for split in schema.SPLITS:
        urls = sorted(str(p) for p in (out / split).glob("shard-*.tar"))
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False) if urls else []:
            meta = json.loads(sample["json"])
            found.append({"folder": split, "meta": meta, "pixels": codecs.decode_pixels("png", sample["png"]),
                          "png": sample["png"]})
    return found


def fingerprint(path: Path) -> str:
    """The source fingerprint the format promises (XXH3-128 of the file), computed here directly."""
    return xxhash.xxh3_128_hexdigest(path.read_bytes())


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): fingerprint(p) for p in sorted(out.glob("*/shard-*.tar"))}


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / schema.REJECTS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_dicom_archive(tmp_path_factory.mktemp("dicom") / "archive", images=10, patients=4, seed=1)


@pytest.fixture(scope="module")
def whole(archive, tmp_path_factory):
    return ingest(archive.root, tmp_path_factory.mktemp("out") / "whole")


def test_every_decodable_image_is_one_sample_and_everything_else_is_accounted_for(archive, whole):
    summary, out = whole
    found = samples(out)
    assert len(found) == archive.images
    for sample in found:
        assert sample["pixels"].dtype == np.uint16 and sample["pixels"].shape == (224, 224)
        assert sample["meta"]["split"] == sample["folder"] and sample["meta"]["crop_kind"] == "whole"
        assert (sample["meta"]["channels"], sample["meta"]["dtype"], sample["meta"]["source"]) == (1, "uint16", "dicom")
    assert [(r["source_path"], r["reason"].split(":")[0]) for r in rejects(out)] == [(archive.broken[0], "undecodable DICOM")]
    assert summary.rejects == 1
    card = json.loads((out / schema.CARD_FILE).read_text())
    notes = card["notes"]
    assert notes["non_dicom_files_skipped"] == archive.non_dicom
    assert notes["dicomdir_files_skipped"] == archive.dicomdirs
    assert notes["dicom_files_without_pixels_skipped"] == archive.non_image
    assert notes["bare_dicom_files_without_preamble"] == 1
    assert notes["files_without_patient_id"] == 1 and "StudyInstanceUID" in notes["patient_fallback"]
    assert notes["colour_frames_made_gray"] == 1
    modalities = Counter()
    for by_label in card["label_counts"].values():
        modalities.update(by_label["modality"])
    assert modalities == archive.modalities


def test_the_bare_file_is_found_and_decoded(archive, whole):
    """The preamble-less file is found by content, fingerprinted as it is on disk, and its sample
    holds the stored values pydicom reads from it with force (12 bits -> 16, padded, resized)."""
    _, out = whole
    path = archive.root / archive.preambleless
    sample = next(s for s in samples(out) if s["meta"]["source_fingerprint"] == fingerprint(path))
    ds = pydicom.dcmread(path, force=True)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian  # as the generator writes it
    stored = ds.pixel_array.astype(np.float32) * (65535 / 4095)
    expected = cv2.resize(np.pad(stored, ((0, 0), (32, 32))), (224, 224), interpolation=cv2.INTER_AREA)
    assert np.abs(sample["pixels"] - expected).max() <= 1
    assert sample["meta"]["labels"] == {"modality": "DX"}


def test_whole_image_is_padded_to_a_centred_square_then_resized(archive, whole):
    _, out = whole
    by_fingerprint = {s["meta"]["source_fingerprint"]: s for s in samples(out)}
    path = next(p for p in archive.root.rglob("IM0001"))
    sample = by_fingerprint[fingerprint(path)]
    source = decode_dicom(path).pixels  # (256, 192): 32 columns of air each side
    padded = np.pad(source, ((0, 0), (32, 32)))
    expected = cv2.resize(padded, (224, 224), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(sample["pixels"], expected)
    assert sample["meta"]["crop_box"] == [-32, 0, 224, 256] and sample["meta"]["source_size"] == [256, 192]


def test_splits_are_by_patient_and_identifiers_are_pseudonyms(archive, whole):
    _, out = whole
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    split_of: dict[str, str] = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"]
    assert len(split_of) == archive.patients
    assert Counter(split_of.values()) == {"test": 2, "val": 1, "train": 2}  # 5 patients: round(1.5), round(0.9)
    studies = {s["meta"]["extra"]["study"] for s in samples(out)}
    assert len(studies) == 4 * 2 + 1  # 4 patients x 2 studies, plus the study of the file without PatientID
    assert all(len(s) == 16 for s in studies)


def test_all_frames_gives_one_sample_per_frame_and_middle_is_frame_f_over_2(archive, whole, tmp_path):
    _, middle_out = whole
    summary, out = ingest(archive.root, tmp_path / "all", frames="all")
    found = samples(out)
    assert len(found) == archive.frames
    tomo_file = fingerprint(archive.root / archive.multi_frame)
    tomo = {s["meta"]["extra"]["frame"]: s for s in found if s["meta"]["source_fingerprint"] == tomo_file}
    assert sorted(tomo) == [0, 1, 2, 3, 4] and tomo[0]["meta"]["extra"]["frames"] == 5
    assert len({s["png"] for s in tomo.values()}) == 5  # frames differ
    middle = [s for s in samples(middle_out) if s["meta"]["source_fingerprint"] == tomo_file]
    assert [s["meta"]["extra"]["frame"] for s in middle] == [2] and middle[0]["png"] == tomo[2]["png"]


def test_modality_filter_counts_what_it_leaves_out(archive, tmp_path):
    _, out = ingest(archive.root, tmp_path / "mgcr", modalities=dicom_archive.parse_modalities("mg, CR"))
    modalities = Counter(s["meta"]["labels"]["modality"] for s in samples(out))
    assert modalities == {m: n for m, n in archive.modalities.items() if m in ("MG", "CR")}
    notes = json.loads((out / schema.CARD_FILE).read_text())["notes"]
    assert notes["filtered_out_by_modality"] == {m: n for m, n in archive.modalities.items() if m not in ("MG", "CR")}


def test_colour_rules_give_one_pixel_format_per_set(archive, tmp_path):
    _, out = ingest(archive.root, tmp_path / "reject", color="reject")
    assert len(samples(out)) == archive.images - 1
    assert {r["source_path"]: r["reason"].split(":")[0] for r in rejects(out)}[archive.colour] == "colour image"
    summary, out = ingest(archive.root, tmp_path / "rgb", color="rgb")
    (sample,) = samples(out)
    assert sample["pixels"].dtype == np.uint8 and sample["pixels"].shape == (224, 224, 3)
    assert sample["meta"]["channels"] == 3 and sample["meta"]["labels"] == {"modality": "US"}
    assert Counter(r["reason"].split(":")[0] for r in rejects(out)) == {"grayscale image": archive.images - 1,
                                                                         "undecodable DICOM": 1}
    assert verify(out, card_io.read_card(out), workers=1)[0] == []


def test_random_crops_lie_inside_the_body(archive, tmp_path):
    _, out = ingest(archive.root, tmp_path / "random", crops="random", random_side=96, random_per_image=3)
    found = samples(out)
    per_image = Counter(s["meta"]["source_fingerprint"] for s in found)
    assert len(per_image) == archive.images and max(per_image.values()) <= 3 and len(found) >= 2 * archive.images
    for sample in found:
        x0, y0, x1, y1 = sample["meta"]["crop_box"]
        height, width = sample["meta"]["source_size"]
        assert (x1 - x0, y1 - y0) == (96, 96) and 0 <= x0 and x1 <= width and 0 <= y0 and y1 <= height
        # Air decodes near 400 of 65535, the phantom's body above 4000.
        assert np.mean(sample["pixels"] > 4000) > 0.8, sample["meta"]["key"]


def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(archive, whole, tmp_path):
    _, first = whole
    _, second = ingest(archive.root, tmp_path / "two", workers=2)
    assert shard_digests(first) == shard_digests(second) and shard_digests(first)
    assert (first / schema.MANIFEST_FILE).read_bytes() == (second / schema.MANIFEST_FILE).read_bytes()


def test_verify_passes(whole):
    _, out = whole
    bad, shards, read = verify(out, card_io.read_card(out), workers=1)
    assert bad == [] and shards >= 2 and read == len(samples(out))


def test_no_phi_in_shards_manifest_card_or_stdout(archive, tmp_path, capsys):
    identifiers = set(archive.phi)
    for path in archive.root.rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
            identifiers |= {str(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
                            if ds.get(k)}
    out = tmp_path / "phi"
    assert main(["dicom", str(archive.root), "--out", str(out), "--workers", "1", "--no-progress"]) == EXIT_REJECTS
    captured = capsys.readouterr()
    blobs = [captured.out.encode(), captured.err.encode()]
    for path in out.rglob("*"):
        # rejects.jsonl is operator-only: it names source paths, and this archive's folders are PatientIDs.
        if path.is_file() and path.name != schema.REJECTS_FILE:
            blobs.append(path.read_bytes())
            if path.suffix == ".tar":
                with tarfile.open(path) as tar:
                    blobs.extend(tar.extractfile(m).read() for m in tar.getmembers())
    blobs += [json.dumps(row).encode() for row in pq.read_table(out / schema.MANIFEST_FILE).to_pylist()]
    everything = b"\n".join(blobs)
    for value in identifiers:
        assert value and value.encode() not in everything, f"identifier {value!r} leaked"


def test_planning_a_tree_counts_its_files_on_stderr_unless_told_not_to(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDSHARDS_PROGRESS_EVERY_S", "0")  # stderr is no terminal here: a line an update
    clean = make_dicom_archive(tmp_path / "clean", images=3, patients=1, studies_per_patient=1, shape=(64, 48),
                               quirks=False)
    assert main(["dicom", str(clean.root), "--out", str(tmp_path / "a"), "--workers", "1", "--dry-run"]) == EXIT_OK
    err = capsys.readouterr().err
    assert f"plan dicom {clean.root}:" in err and "3 images kept" in err
    assert main(["dicom", str(clean.root), "--out", str(tmp_path / "a"), "--no-progress", "--dry-run"]) == EXIT_OK
    assert "plan dicom" not in capsys.readouterr().err


def test_cli_exit_codes(tmp_path, capsys):
    clean = make_dicom_archive(tmp_path / "clean", images=3, patients=1, studies_per_patient=1, shape=(64, 48),
                               quirks=False)
    assert main(["dicom", str(clean.root), "--out", str(tmp_path / "a"), "--no-progress", "--workers", "1"]) == EXIT_OK
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here\n")
    assert main(["dicom", str(tmp_path / "empty"), "--out", str(tmp_path / "b"), "--no-progress"]) == EXIT_USAGE
    assert "no DICOM images" in capsys.readouterr().err
    assert main(["dicom", str(tmp_path / "absent"), "--out", str(tmp_path / "c"), "--no-progress"]) == EXIT_USAGE
    for bad in (["--test-fraction", "1.5"], ["--frames", "last"]):  # refused by the argument parser
        with pytest.raises(SystemExit) as info:
            main(["dicom", str(clean.root), "--out", str(tmp_path / "e"), *bad])
        assert info.value.code == EXIT_USAGE


def test_real_dicom_files_as_one_mixed_archive(shared_data, tmp_path, capsys):
    """Every real file but the two broken JPEGs becomes one sample; those two are rejects naming the
    file and the corrupt JPEG data. CR, CT, MR, NM, US, RT dose, 8- to 32-bit, colour and multi-frame."""
    root = shared_data / "dicom"
    out = tmp_path / "real"
    assert main(["dicom", str(root), "--out", str(out), "--workers", "2", "--no-progress"]) == EXIT_REJECTS
    stdout = capsys.readouterr().out
    names = sorted(p.name for p in root.iterdir() if p.is_file())
    assert {r["source_path"]: r["reason"] for r in rejects(out)}.keys() == BROKEN_REAL
    assert all(r["reason"].startswith("undecodable DICOM: the JPEG Extended") and "corrupt" in r["reason"]
               for r in rejects(out))
    found = samples(out)
    fingerprints = {fingerprint(root / n): n for n in names}
    assert sorted(fingerprints[s["meta"]["source_fingerprint"]] for s in found) == sorted(set(names) - BROKEN_REAL)
    assert all(s["pixels"].dtype == np.uint16 and s["pixels"].ndim == 2 for s in found)
    card = json.loads((out / schema.CARD_FILE).read_text())
    assert card["notes"]["colour_frames_made_gray"] == 3 and card["notes"]["files_sharing_a_sop_instance_uid"] == 10
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    text = "\n".join([stdout, json.dumps(card), json.dumps(rows)] + [json.dumps(s["meta"]) for s in found])
    for name in names:
        ds = pydicom.dcmread(root / name, stop_before_pixels=True)
        for value in (str(ds.get("PatientName") or ""), str(ds.get("PatientID") or ""),
                      str(ds.get("StudyInstanceUID") or ""), str(ds.get("SeriesInstanceUID") or "")):
            assert len(value) < 4 or value not in text, f"{name}: {value!r} leaked"


def test_file_names_need_not_be_utf8(archive, tmp_path):
    """Linux paths are bytes: a folder and a file whose names are not UTF-8 are still found."""
    root = tmp_path / "latin1"
    source = next(archive.root.rglob("IM0001")).read_bytes()
    folder = os.path.join(os.fsencode(root), b"Patient \xe9")
    os.makedirs(folder)
    for name in (b"IM\xff01", b"plain.dcm"):
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(source)
    summary, out = ingest(root, tmp_path / "out")
    assert summary.rejects == 0 and len(samples(out)) == 2
    assert len({s["meta"]["key"] for s in samples(out)}) == 2


def test_an_archive_in_an_object_store_gives_the_shards_the_same_tree_on_disk_gives(archive, whole, s3_endpoint,
                                                                                 tmp_path):
    uri = s3_endpoint.upload(archive.root, "archive")
    summary, out = ingest(uri, tmp_path / "from-bucket", workers=2)
    _, local = whole
    assert shard_digests(out) == shard_digests(local) and rejects(out) == rejects(local)
    assert pq.read_table(out / schema.MANIFEST_FILE).equals(pq.read_table(local / schema.MANIFEST_FILE))
    card, local_card = card_io.read_card(out), card_io.read_card(local)
    assert card["notes"] == local_card["notes"] and card["parameters"]["root"] == uri
    # a key a URI cannot spell as it is (space, '#', '%') is found and read
    one = next(p for p in sorted(archive.root.rglob("*")) if p.name == "IM0001")
    s3_endpoint.fs.create_dir(f"{s3_endpoint.bucket}/odd")
    with s3_endpoint.fs.open_output_stream(f"{s3_endpoint.bucket}/odd/scan #1 100%") as fh:
        fh.write(one.read_bytes())
    summary, out = ingest(s3_endpoint.uri("odd"), tmp_path / "odd")
    assert summary.rejects == 0 and sum(summary.samples.values()) == 1


def test_a_missing_bucket_or_empty_prefix_is_named_before_anything_is_written(s3_endpoint, tmp_path):
    with pytest.raises(IngestError, match=r"^s3://no-such-bucket/x\?\S*: cannot be listed \(.*NO_SUCH_BUCKET"):
        ingest(f"s3://no-such-bucket/x?{s3_endpoint.query}", tmp_path / "out")
    with pytest.raises(IngestError, match=r"^s3://medshards-test/nothing-here\?\S*: no such bucket, or no object"):
        ingest(s3_endpoint.uri("nothing-here"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_object_heads_come_in_order_with_a_missing_object_as_its_error(archive, s3_endpoint):
    from ingest import dicom_tree

    uri = s3_endpoint.upload(archive.root, "heads")
    listed = list(dicom_tree.walk_files(uri, skip=None, counts=Counter(), problems=[]))
    gone = ("gone.dcm", s3_endpoint.uri("heads/gone.dcm"))
    files = listed[:3] + [gone] + listed[3:]
    heads = list(dicom_tree.object_heads(files, requests=2))
    assert [(rel, path) for rel, path, _ in heads] == files
    for (rel, _), (_, _, head) in zip(files, heads):
        if rel == "gone.dcm":
            assert isinstance(head, FileNotFoundError) and "no such object" in str(head)
        else:
            assert head == (archive.root / rel).read_bytes()[:dicom_tree.OBJECT_HEAD]


def test_files_whose_pixels_identify_the_patient_are_rejected_unless_kept(tmp_path, dicom_dataset, write_dicom):
    """Burned In Annotation YES (an ultrasound with the patient's name drawn in) or Recognizable
    Visual Features YES (a face): pseudonymous headers do not hide what the pixels show."""
    root = tmp_path / "archive"
    root.mkdir()
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    said = {"burned.dcm": {"BurnedInAnnotation": "YES"}, "face.dcm": {"RecognizableVisualFeatures": "YES"},
            "clean.dcm": {"BurnedInAnnotation": "NO"}, "unsaid.dcm": {}}
    for i, (name, elements) in enumerate(said.items()):
        write_dicom(dicom_dataset(pixels, PatientID=f"P{i}", Modality="US", **elements), root / name)
    summary, out = ingest(root, tmp_path / "out", test_fraction=0.0, val_fraction=0.0)
    reasons = {r["source_path"]: r["reason"] for r in rejects(out)}
    assert sorted(reasons) == ["burned.dcm", "face.dcm"] and summary.rejects == 2
    assert reasons["burned.dcm"].startswith("identifying pixels: Burned In Annotation (0028,0301) YES")
    assert "Recognizable Visual Features (0028,0302) YES" in reasons["face.dcm"] and "--burned-in keep" in reasons["face.dcm"]
    card = card_io.read_card(out)
    assert card["parameters"]["burned_in"] == "reject" and len(samples(out)) == 2
    assert card["notes"]["files_not_saying_whether_text_is_burned_in"] == 1
    assert main(["dicom", str(root), "--out", str(tmp_path / "kept"), "--burned-in", "keep", "--no-progress",
                 "--test-fraction", "0", "--val-fraction", "0"]) == EXIT_OK
    assert len(samples(tmp_path / "kept")) == 4
