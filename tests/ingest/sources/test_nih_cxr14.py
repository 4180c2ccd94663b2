"""`ingest nih-cxr14` end to end: the three real NIH PNGs with their real CSV rows (v2020 and the
older Kaggle file), the real box list, and generated trees in the download's layout."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import xxhash
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from ingest.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, main
from ingest.nih_tables import FINDINGS
from ingest.pipeline import run_job
from ingest.sample_data.nih_cxr14 import make_nih_sample
from ingest.sources import nih_cxr14
from shards import codecs, schema
from shards.card import read_card
from shards.verify import verify

REAL_PNGS = ("00000001_000.png", "00000002_000.png", "00000013_003.png")


def ingest(root: Path, out: Path, **kw):
    return run_job(nih_cxr14.build_job(root=root, out=out, progress=False, **kw)), out


def samples(out: Path) -> list[tuple[str, dict, np.ndarray]]:
    """(split folder, json, pixels) of every sample, read with plain webdataset."""
    found = []
    for split in schema.SPLITS:
        urls = sorted(str(p) for p in (out / split).glob("shard-*.tar"))
        if urls:
            for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
                found.append((split, json.loads(s["json"]), codecs.decode_pixels("png", s["png"])))
    return found


def csv_truth(path: Path) -> dict[str, tuple[set[str], int, str]]:
    """image -> (findings, follow-up, view), read by the real files' column positions."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return {r[0]: (set(r[1].split("|")), int(r[2]), r[6]) for r in rows}


def expected_labels(findings: set[str]) -> dict:
    return {**{f: f in findings for f in FINDINGS}, "no_finding": "No Finding" in findings}


def by_fingerprint(root: Path) -> dict[str, Path]:
    return {xxhash.xxh3_128_hexdigest(p.read_bytes()): p for p in root.rglob("*.png")}


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*/shard-*.tar"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_nih_sample(tmp_path_factory.mktemp("nih") / "download", patients=12, seed=3)


@pytest.fixture(scope="module")
def whole(tree, tmp_path_factory):
    """Whole crops at the source size (256): stored pixels must equal the files' exactly."""
    return ingest(tree.root, tmp_path_factory.mktemp("out") / "whole", size=256, shard_size=7, val_fraction=0.2)


def test_whole_images_round_trip_with_the_csv_labels(tree, whole):
    summary, out = whole
    assert summary.rejects == 0
    truth, files = csv_truth(tree.csv), by_fingerprint(tree.root)
    got = samples(out)
    assert len(got) == len(truth) == tree.rows
    for split, meta, pixels in got:
        name = files[meta["source_fingerprint"]].name
        findings, follow_up, view = truth[name]
        assert meta["split"] == split and meta["crop_kind"] == "whole" and meta["crop_box"] == [0, 0, 256, 256]
        assert meta["labels"] == {**expected_labels(findings), "box_finding": None}
        assert meta["view"] == view and meta["extra"]["follow_up"] == follow_up
        assert meta["extra"]["original_size"] == [2048, 2500]  # the CSV's (width, height) turned to (rows, cols)
        # 8-bit stays 8-bit, nothing stretched: the stored picture is the file's, read by Pillow.
        assert pixels.dtype == np.uint8 and meta["dtype"] == "uint8" and meta["channels"] == 1
        assert np.array_equal(pixels, np.asarray(Image.open(files[meta["source_fingerprint"]]).convert("L")))


def test_16bit_pngs_stay_16bit(tmp_path):
    made = make_nih_sample(tmp_path / "dl", patients=3, seed=7, colour=False)
    for path in made.root.rglob("*.png"):  # a re-export at 16 bits, as some mirrors ship
        wide = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.uint16) * 257 + 3
        cv2.imwrite(str(path), wide)
    _, out = ingest(made.root, tmp_path / "out", size=256)
    files = by_fingerprint(made.root)
    got = samples(out)
    assert len(got) == made.rows and read_card(out)["pixel_stats"]["dtype"] == "uint16"
    for _, meta, pixels in got:
        assert meta["dtype"] == "uint16" and pixels.dtype == np.uint16
        assert np.array_equal(pixels, cv2.imread(str(files[meta["source_fingerprint"]]), cv2.IMREAD_UNCHANGED))


def test_colour_pngs_are_reduced_to_gray_and_counted(tree, whole):
    _, out = whole
    card = read_card(out)
    assert card["notes"]["converted_rgb_to_gray"] == 1 and card["notes"]["converted_rgba_to_gray"] == 1
    colour_files = {p.name for p in tree.root.rglob("*.png") if p.name in tree.colour.values()}
    assert colour_files == set(tree.colour.values())
    assert all(Image.open(p).mode in ("RGB", "RGBA") for p in tree.root.rglob("*.png") if p.name in colour_files)


def test_seeded_split_is_by_patient_and_said_so(whole):
    _, out = whole
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    split_of: dict[str, str] = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["official_split"] is None for r in rows)
    card = read_card(out)
    assert card["notes"]["split"].startswith("seeded by patient") and card["parameters"]["split"] == "seeded"


def test_official_lists_are_honoured(tmp_path):
    made = make_nih_sample(tmp_path / "dl", patients=12, seed=4, official_lists=True, layout="flat")
    test_list = set((made.root / "test_list.txt").read_text().split())
    _, out = ingest(made.root, tmp_path / "out", val_fraction=0.3, size=32)
    files = by_fingerprint(made.root)
    got = samples(out)
    assert len(got) == made.rows
    for split, meta, _ in got:
        in_test = files[meta["source_fingerprint"]].name in test_list
        assert (split == "test") == in_test
        assert meta["official_split"] == ("test" if in_test else "train_val")
    assert {s for s, _, _ in got} == {"train", "val", "test"}
    assert read_card(out)["notes"]["split"].startswith("official")


def test_a_patient_in_both_official_lists_goes_wholly_to_test(tmp_path):
    made = make_nih_sample(tmp_path / "dl", patients=12, seed=4, official_lists=True, layout="flat")
    train_val = (made.root / "train_val_list.txt").read_text().split()
    prefixes = [name.split("_")[0] for name in train_val]
    moved = next(name for name in train_val if prefixes.count(name.split("_")[0]) > 1)
    (made.root / "train_val_list.txt").write_text("".join(f"{n}\n" for n in train_val if n != moved))
    (made.root / "test_list.txt").write_text((made.root / "test_list.txt").read_text() + moved + "\n")
    job = nih_cxr14.build_job(root=made.root, out=tmp_path / "out", val_fraction=0.3, progress=False)
    assert job.notes["patients_in_both_official_lists"] == 1
    crossing = [u.payload for u in job.units if Path(u.source_path).name.split("_")[0] == moved.split("_")[0]]
    assert len(crossing) > 1 and {p.split for p in crossing} == {"test"}
    assert {p.official_split for p in crossing} == {"train_val", "test"}  # as published, per image


def test_random_crops_avoid_the_black_frame_and_follow_the_seed(tree, tmp_path):
    _, a = ingest(tree.root, tmp_path / "a", crops="random", random_per_image=3, random_side=96, size=48)
    _, b = ingest(tree.root, tmp_path / "b", crops="random", random_per_image=3, random_side=96, size=48, seed=1)
    got = samples(a)
    assert len(got) == 3 * tree.rows
    files = by_fingerprint(tree.root)
    band = 256 // 40  # the generator's black band on the left of every third image
    framed = 0
    for _, meta, pixels in got:
        x0, y0, x1, y1 = meta["crop_box"]
        assert x0 >= 0 and y0 >= 0 and x1 <= 256 and y1 <= 256 and x1 - x0 == y1 - y0 == 96
        if not np.asarray(Image.open(files[meta["source_fingerprint"]]).convert("L"))[:, :band].any():
            framed += 1
            assert x0 >= band
        assert pixels.shape == (48, 48) and pixels.dtype == np.uint8 and meta["crop_kind"] == "random"
    assert framed >= 3
    boxes_a = sorted(m["crop_box"] for _, m, _ in got)
    assert boxes_a != sorted(m["crop_box"] for _, m, _ in samples(b))


def test_lesion_crops_follow_the_box_list(tree, tmp_path):
    summary, out = ingest(tree.root, tmp_path / "lesion", crops="lesion", size=64)
    assert summary.rejects == 0
    files = by_fingerprint(tree.root)
    got = samples(out)
    assert len(got) == sum(len(b) for b in tree.boxes.values())
    card = read_card(out)
    assert card["notes"]["images_without_box"] == tree.rows - len(tree.boxes)
    assert card["notes"]["images_with_boxes_rescaled"] == len(tree.boxes)  # 256-pixel files, 1024-pixel boxes
    for _, meta, pixels in got:
        name = files[meta["source_fingerprint"]].name
        finding, (x, y, w, h) = tree.boxes[name][int(meta["key"].rsplit("lesion", 1)[1])]
        assert meta["labels"]["box_finding"] == {"Infiltrate": "Infiltration"}.get(finding, finding)
        lx0, ly0, lx1, ly1 = meta["extra"]["lesion_box"]
        assert (lx0, ly0) == (int(x / 4), int(y / 4)) and abs(lx1 - (x + w) / 4) < 1 and abs(ly1 - (y + h) / 4) < 1
        cx0, cy0, cx1, cy1 = meta["crop_box"]
        assert cx0 <= lx0 and cy0 <= ly0 and cx1 >= lx1 and cy1 >= ly1 and cx1 - cx0 == cy1 - cy0 >= 64
        # The generator paints a bright disc at the box centre: it sits in the crop's middle.
        ys, xs = np.nonzero(pixels >= 235)
        assert ys.size and abs(ys.mean() - 32) < 6 and abs(xs.mean() - 32) < 6


def test_bad_inputs_are_rejected_with_reasons(tmp_path, capsys):
    made = make_nih_sample(tmp_path / "bad", patients=8, seed=5, with_defects=True)
    code = main(["nih-cxr14", str(made.root), "--out", str(tmp_path / "out"), "--size", "32", "--workers", "2", "--no-progress"])
    assert code == EXIT_REJECTS
    rejects = [json.loads(line) for line in (tmp_path / "out" / schema.REJECTS_FILE).read_text().splitlines()]
    by_kind = {r["reason"].split(":")[0]: r["source_path"] for r in rejects}
    assert by_kind["file not found"] == made.defects["missing_file"]
    assert by_kind["no labels"].endswith(made.defects["unlabeled_png"])
    assert by_kind["undecodable PNG"].endswith(made.defects["corrupt_png"])
    assert len(rejects) == 3 and "REJECTED 3 inputs" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out" / schema.MANIFEST_FILE).num_rows == made.rows - 2


def test_no_raw_patient_id_reaches_the_shards_manifest_or_card(tree, whole):
    """The file-name prefix is NIH's patient ID: not in keys, json members, manifest or card."""
    _, out = whole
    raw = {name.split("_")[0] for name in csv_truth(tree.csv)}
    manifest = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    blobs = [(out / schema.CARD_FILE).read_bytes(), json.dumps(manifest).encode()]
    for shard in out.glob("*/shard-*.tar"):
        with tarfile.open(shard) as tar:
            blobs += [m.name.encode() for m in tar.getmembers()]
            blobs += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".json")]
    everything = b"\n".join(blobs)
    assert raw and not [pid for pid in raw if pid.encode() in everything]
    assert not {row["patient"] for row in manifest} & (raw | {str(int(pid)) for pid in raw})


def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(tree, whole, tmp_path):
    _, first = whole
    _, second = ingest(tree.root, tmp_path / "again", size=256, shard_size=7, val_fraction=0.2, workers=2)
    assert shard_digests(first) == shard_digests(second) and len(shard_digests(first)) >= 3
    assert (first / schema.MANIFEST_FILE).read_bytes() == (second / schema.MANIFEST_FILE).read_bytes()


def test_shards_verify_passes(whole):
    _, out = whole
    problems, shards, count = verify(out, read_card(out), workers=1)
    assert problems == [] and shards >= 3 and count == len(samples(out))


def test_kaggle_header_gzipped_csv_and_flat_folder_give_the_same_labels(tmp_path):
    made = make_nih_sample(tmp_path / "kaggle", patients=5, seed=6, layout="flat", csv_style="kaggle", gzip_csv=True)
    assert made.csv.name == "Data_Entry_2017.csv.gz"
    assert gzip.open(made.csv, "rt").readline().rstrip("\n").endswith("[x,y],")  # the trailing comma
    summary, out = ingest(made.root, tmp_path / "out", size=32)
    truth, files = csv_truth(made.csv), by_fingerprint(made.root)
    got = samples(out)
    assert summary.rejects == 0 and len(got) == made.rows
    for _, meta, _ in got:
        assert meta["labels"] == {**expected_labels(truth[files[meta["source_fingerprint"]].name][0]), "box_finding": None}


def test_the_generator_is_deterministic(tmp_path):
    trees = [make_nih_sample(tmp_path / name, patients=4, seed=9, with_defects=True, official_lists=True).root
             for name in ("a", "b")]
    files = [{str(p.relative_to(t)): p.read_bytes() for p in sorted(t.rglob("*")) if p.is_file()} for t in trees]
    assert files[0] == files[1] and len(files[0]) > 8


def test_cli_exit_codes(tree, tmp_path, capsys):
    assert main(["nih-cxr14", str(tree.root), "--out", str(tmp_path / "ok"), "--size", "32", "--no-progress"]) == EXIT_OK
    assert main(["nih-cxr14", str(tree.root), "--out", str(tmp_path / "ok"), "--no-progress"]) == EXIT_USAGE  # finished set
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["nih-cxr14", str(empty), "--out", str(tmp_path / "x"), "--no-progress"]) == EXIT_USAGE
    assert "Data_Entry_2017_v2020.csv" in capsys.readouterr().err
    shutil.copy(tree.csv, empty / tree.csv.name)
    assert main(["nih-cxr14", str(empty), "--crops", "lesion", "--out", str(tmp_path / "y"), "--no-progress"]) == EXIT_USAGE
    assert "BBox_List_2017.csv" in capsys.readouterr().err


# --- the real files -----------------------------------------------------------------------------


@pytest.fixture()
def real_root(shared_data, tmp_path) -> Path:
    """The three real PNGs in the download's layout, with their own rows of the real v2020 CSV."""
    nih = shared_data / "nih-chestxray14"
    root = tmp_path / "nih"
    (root / "images_001" / "images").mkdir(parents=True)
    for name in REAL_PNGS:
        shutil.copy(nih / name, root / "images_001" / "images" / name)
    with gzip.open(nih / "Data_Entry_2017_v2020.csv.gz", "rt", newline="") as fh:
        lines = fh.read().splitlines()
    rows = [line for line in lines[1:] if line.split(",", 1)[0] in REAL_PNGS]
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return root


def test_real_pngs_with_their_real_rows(real_root, tmp_path):
    summary, out = ingest(real_root, tmp_path / "out", size=1024)
    assert summary.rejects == 0
    truth = csv_truth(real_root / "Data_Entry_2017_v2020.csv")
    files = by_fingerprint(real_root)
    got = samples(out)
    assert len(got) == 3
    named = {files[m["source_fingerprint"]].name: (m, px) for _, m, px in got}
    assert named["00000001_000.png"][0]["labels"]["Cardiomegaly"] and named["00000013_003.png"][0]["labels"]["Pleural_Thickening"]
    assert named["00000002_000.png"][0]["labels"]["no_finding"]
    for name, (meta, pixels) in named.items():
        findings, follow_up, view = truth[name]
        assert meta["labels"] == {**expected_labels(findings), "box_finding": None}
        assert (meta["view"], meta["extra"]["follow_up"]) == (view, follow_up)
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, np.asarray(Image.open(files[meta["source_fingerprint"]])))
    assert named["00000013_003.png"][0]["extra"]["original_pixel_spacing_mm"] == [0.139, 0.139]
    patients = {m["patient"] for m, _ in named.values()}
    assert len(patients) == 3 and not patients & {"00000001", "00000002", "00000013", "1", "2", "13"}


def test_real_framed_film_gives_random_crops_off_its_frame(real_root, tmp_path):
    _, out = ingest(real_root, tmp_path / "out", crops="random", random_per_image=8, size=32)
    files = by_fingerprint(real_root)
    framed = [m for _, m, _ in samples(out) if files[m["source_fingerprint"]].name == "00000013_003.png"]
    assert len(framed) == 8 and all(m["crop_box"][0] >= 20 for m in framed)


def test_real_pngs_have_no_boxes_so_lesion_crops_count_them(real_root, shared_data, tmp_path):
    shutil.copy(shared_data / "nih-chestxray14" / "BBox_List_2017.csv", real_root)
    job = nih_cxr14.build_job(root=real_root, out=tmp_path / "out", crops="lesion", progress=False)
    assert job.units == [] and job.notes["images_without_box"] == 3 and job.planning_rejects == []


def test_full_real_csv_lists_every_image(shared_data, real_root, tmp_path):
    """The whole v2020 CSV against a partial download: each listed PNG that is not here is a
    'file not found' reject, and nothing else is."""
    csv_path = shared_data / "nih-chestxray14" / "Data_Entry_2017_v2020.csv.gz"
    listed, entries, rejects = nih_cxr14.read_entries(csv_path, set(REAL_PNGS))
    assert len(listed) == 112120 and len(set(listed.values())) == 30805 and rejects == []
    assert sorted(e.image for e in entries) == list(REAL_PNGS)
    (real_root / "Data_Entry_2017_v2020.csv").unlink()
    job = nih_cxr14.build_job(root=real_root, out=tmp_path / "out", csv_path=csv_path, progress=False)
    assert len(job.units) == 3 and len(job.planning_rejects) == 112117
    assert {r.reason_kind for r in job.planning_rejects} == {"file not found"}


def test_lesion_job_on_a_partial_download_rejects_only_missing_boxed_images(shared_data, real_root, tmp_path):
    """Lesion crops want the boxed images only: a listed image that is neither here nor boxed is
    counted in the notes, not rejected; a boxed one that is not here is a 'file not found'."""
    csv_path = shared_data / "nih-chestxray14" / "Data_Entry_2017_v2020.csv.gz"
    bbox_csv = shared_data / "nih-chestxray14" / "BBox_List_2017.csv"
    boxed, box_rejects = nih_cxr14.read_boxes(bbox_csv)
    assert box_rejects == [] and not set(boxed) & set(REAL_PNGS)
    (real_root / "Data_Entry_2017_v2020.csv").unlink()
    job = nih_cxr14.build_job(root=real_root, out=tmp_path / "out", csv_path=csv_path, bbox_csv=bbox_csv,
                              crops="lesion", progress=False)
    assert job.units == [] and sorted(r.source_path for r in job.planning_rejects) == sorted(boxed)
    assert {r.reason_kind for r in job.planning_rejects} == {"file not found"}
    assert job.notes["images_without_box"] == 3
    assert job.notes["images_without_box_not_on_disk"] == 112120 - 3 - len(boxed)
    summary = run_job(job)  # the closing summary says why nothing was written
    assert summary.rejects == len(boxed) and not summary.samples
    assert summary.counts == {"images_without_box": 3, "images_without_box_not_on_disk": 112120 - 3 - len(boxed)}
    assert f"counted: images_without_box 3, images_without_box_not_on_disk {112120 - 3 - len(boxed)}" in summary.describe()


def test_real_kaggle_csv_header(shared_data, real_root, tmp_path):
    """The older Data_Entry_2017.csv: trailing comma in the header, other ages; 00000013_003 is
    not among its first 20 rows."""
    (real_root / "Data_Entry_2017_v2020.csv").unlink()
    shutil.copy(shared_data / "nih-chestxray14" / "Data_Entry_2017.head20.csv", real_root / "Data_Entry_2017.csv")
    summary, out = ingest(real_root, tmp_path / "out", size=32)
    assert summary.rejects_by_reason == {"file not found": 18, "no labels": 1}
    truth = csv_truth(real_root / "Data_Entry_2017.csv")
    files = by_fingerprint(real_root)
    got = samples(out)
    assert sorted(files[m["source_fingerprint"]].name for _, m, _ in got) == ["00000001_000.png", "00000002_000.png"]
    for _, meta, _ in got:
        assert meta["labels"] == {**expected_labels(truth[files[meta["source_fingerprint"]].name][0]), "box_finding": None}


def test_real_box_list_reads_whole(shared_data):
    boxes, rejects = nih_cxr14.read_boxes(shared_data / "nih-chestxray14" / "BBox_List_2017.csv")
    assert rejects == [] and sum(len(b) for b in boxes.values()) == 984
    findings = [f for b in boxes.values() for f, _ in b]
    assert findings.count("Infiltration") == 123 and "Infiltrate" not in findings
    assert all(w > 0 and h > 0 and 0 <= x < 1024 and 0 <= y < 1024 for b in boxes.values() for _, (x, y, w, h) in b)


def test_real_rows_and_real_boxes_in_a_generated_tree(shared_data, tmp_path):
    """Real CSV lines and real box rows for the patients the generator picks, pixels made up:
    one lesion crop per real box, labelled as the real rows say."""
    made = make_nih_sample(tmp_path / "dl", patients=6, seed=0, real_csv_dir=shared_data / "nih-chestxray14")
    summary, out = ingest(made.root, tmp_path / "out", crops="lesion", size=64)
    assert summary.rejects == 0 and made.boxes
    truth, files = csv_truth(made.csv), by_fingerprint(made.root)
    got = samples(out)
    assert len(got) == sum(len(b) for b in made.boxes.values())
    for _, meta, _ in got:
        name = files[meta["source_fingerprint"]].name
        assert {k: v for k, v in meta["labels"].items() if k != "box_finding"} == expected_labels(truth[name][0])
        real_findings = {{"Infiltrate": "Infiltration"}.get(f, f) for f, _ in made.boxes[name]}
        assert meta["labels"]["box_finding"] in real_findings
