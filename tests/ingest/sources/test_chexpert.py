"""`ingest chexpert` end to end on generated CheXpert trees in the real layout (real header, real
Path prefix, the real first train.csv row; no CheXpert image can be had, so the JPEGs are made up)."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import xxhash
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from ingest.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, main
from ingest.pipeline import run_job
from ingest.sample_data.chexpert import make_chexpert_sample
from ingest.sources import chexpert
from shards import codecs, schema
from shards.card import read_card
from shards.verify import verify


def ingest(root: Path, out: Path, **kw):
    return run_job(chexpert.build_job(root=root, out=out, progress=False, **kw)), out


def samples(out: Path) -> list[tuple[str, dict, np.ndarray]]:
    found = []
    for split in schema.SPLITS:
        urls = sorted(str(p) for p in (out / split).glob("shard-*.tar"))
        if urls:
            for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
                found.append((split, json.loads(s["json"]), codecs.decode_pixels("png", s["png"])))
    return found


def csv_rows(root: Path) -> dict[str, dict[str, str]]:
    """Path cell -> row, from both CSVs, plus which CSV it came from."""
    rows = {}
    for name in ("train.csv", "valid.csv"):
        with open(root / name, newline="") as fh:
            rows.update({r["Path"]: {**r, "csv": name} for r in csv.DictReader(fh)})
    return rows


def expected(row: dict[str, str], uncertain: str) -> dict:
    """The labels a row should get, by the CheXpert conventions, computed here independently."""
    minus_one = {"zeros": False, "ones": True, "ignore": None}[uncertain]
    key = {name: "no_finding" if name == "No Finding" else name.replace(" ", "_") for name in chexpert.OBSERVATIONS}
    return {key[n]: {"1.0": True, "0.0": False, "": False, "-1.0": minus_one}[row[n]] for n in chexpert.OBSERVATIONS}


def by_fingerprint(parent: Path) -> dict[str, Path]:
    return {xxhash.xxh3_128_hexdigest(p.read_bytes()): p for p in parent.rglob("*.jpg")}


def cell_of(path: Path, parent: Path) -> str:
    return str(path.relative_to(parent))


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*/shard-*.tar"))}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_chexpert_sample(tmp_path_factory.mktemp("chexpert"), train_patients=10, valid_patients=3, seed=2)


@pytest.fixture(scope="module")
def whole(tree, tmp_path_factory):
    """Frontal views, whole, at the films' longer side (390): no resize, so pixels can be compared."""
    return ingest(tree.root, tmp_path_factory.mktemp("out") / "whole", size=390, shard_size=5, val_fraction=0.2,
                  uncertain="ignore")


def test_frontal_views_round_trip_with_labels_by_policy(tree, whole):
    summary, out = whole
    assert summary.rejects == 0
    rows, files = csv_rows(tree.root), by_fingerprint(tree.root.parent)
    got = samples(out)
    assert len(got) == tree.frontal
    assert any(None in m["labels"].values() for _, m, _ in got)  # uncertain cells became None
    for split, meta, pixels in got:
        row = rows[cell_of(files[meta["source_fingerprint"]], tree.root.parent)]
        assert meta["labels"] == expected(row, "ignore")
        assert meta["view"] == row["AP/PA"] and meta["crop_kind"] == "whole"
        assert (split == "test") == (row["csv"] == "valid.csv")
        assert meta["official_split"] == ("valid" if row["csv"] == "valid.csv" else "train")
        # 8-bit JPEG -> 1-channel uint8 PNG of the decoded pixels, letterboxed, not stretched.
        assert pixels.dtype == np.uint8 and pixels.shape == (390, 390) and meta["source_size"] == [390, 320]
        assert meta["crop_box"] == [-35, 0, 355, 390]
        decoded = np.asarray(Image.open(files[meta["source_fingerprint"]]).convert("L"))
        assert np.array_equal(pixels[:, 35:355], decoded) and not pixels[:, :35].any()
    card = read_card(out)
    assert card["parameters"]["uncertain"] == "ignore" and card["parameters"]["blank"] == "negative"
    assert card["notes"]["views_filtered_out"] == tree.lateral
    assert card["notes"]["converted_rgb_to_gray"] == 1  # the one 3-channel JPEG


def test_the_real_first_row_is_labelled_as_published(whole, tree):
    """train.csv row 1: No Finding 1.0, Pneumothorax 0.0, Support Devices 1.0, the rest blank."""
    _, out = whole
    files = by_fingerprint(tree.root.parent)
    first = [m for _, m, _ in samples(out)
             if cell_of(files[m["source_fingerprint"]], tree.root.parent).endswith("patient00001/study1/view1_frontal.jpg")]
    assert len(first) == 1
    labels = first[0]["labels"]
    assert labels["no_finding"] and labels["Support_Devices"] and labels["Pneumothorax"] is False
    assert sum(v is True for v in labels.values()) == 2 and first[0]["view"] == "AP"


@pytest.mark.parametrize("policy", ["zeros", "ones"])
def test_uncertain_policies(tree, policy, tmp_path):
    job = chexpert.build_job(root=tree.root, out=tmp_path / "o", uncertain=policy, progress=False)
    rows = csv_rows(tree.root)
    assert job.parameters["uncertain"] == policy
    assert any("-1.0" in r.values() for r in rows.values())
    for unit in job.units:
        assert unit.payload.labels == expected(rows[unit.source_path], policy)


def test_splits_are_by_patient(whole):
    _, out = whole
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    split_of: dict[str, str] = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"]
    assert {r["split"] for r in rows} == {"train", "val", "test"}


@pytest.mark.parametrize("views", ["both", "lateral"])
def test_view_filter(tree, views, tmp_path):
    summary, out = ingest(tree.root, tmp_path / views, views=views, size=32)
    got = samples(out)
    lateral = [m for _, m, _ in got if m["view"] == "LATERAL"]
    assert len(lateral) == tree.lateral and tree.lateral > 0
    assert len(got) == (tree.frontal + tree.lateral if views == "both" else tree.lateral)
    assert read_card(out)["notes"]["views_filtered_out"] == (0 if views == "both" else tree.frontal)


def test_root_may_be_the_folder_its_parent_or_a_renamed_folder(tree, whole, tmp_path):
    """Path cells start with CheXpert-v1.0-small/: every placement gives the same shards."""
    _, reference = whole
    renamed = tmp_path / "my-chexpert"
    shutil.copytree(tree.root, renamed)
    for root in (tree.root.parent, renamed):
        _, out = ingest(root, tmp_path / f"out-{root.name}", size=390, shard_size=5, val_fraction=0.2, uncertain="ignore")
        assert shard_digests(out) == shard_digests(reference)


def test_random_crops_clamp_to_the_small_films(tree, tmp_path):
    _, out = ingest(tree.root, tmp_path / "random", crops="random", random_per_image=2, size=64)
    got = samples(out)
    assert len(got) == 2 * tree.frontal
    for _, meta, pixels in got:
        x0, y0, x1, y1 = meta["crop_box"]
        assert 0 <= x0 and 0 <= y0 and x1 <= 320 and y1 <= 390 and x1 - x0 == y1 - y0 <= 320
        assert pixels.shape == (64, 64) and pixels.dtype == np.uint8
    assert read_card(out)["notes"]["random_side_clamped"] == tree.frontal  # 512 does not fit a 320-wide film


def test_bad_inputs_are_rejected_with_reasons(tmp_path, capsys):
    made = make_chexpert_sample(tmp_path / "bad", train_patients=4, valid_patients=1, seed=3, with_defects=True)
    code = main(["chexpert", str(made.root), "--out", str(tmp_path / "out"), "--size", "32", "--workers", "2", "--no-progress"])
    assert code == EXIT_REJECTS
    rejects = [json.loads(line) for line in (tmp_path / "out" / schema.REJECTS_FILE).read_text().splitlines()]
    by_kind = {r["reason"].split(":")[0]: r["source_path"] for r in rejects}
    assert by_kind["file not found"] == made.defects["missing_file"]
    assert by_kind["undecodable JPEG"] == made.defects["corrupt_jpeg"]
    assert by_kind["path outside root"] == made.defects["outside_root"]
    assert by_kind["unreadable CSV row"] == "train.csv:" + str(made.train_rows + 1)  # the last row, header is line 1
    assert len(rejects) == 4 and "REJECTED 4 inputs" in capsys.readouterr().out
    assert pq.read_table(tmp_path / "out" / schema.MANIFEST_FILE).num_rows == made.frontal - 4


def test_no_raw_patient_id_sex_or_age_in_outputs(tree, whole):
    _, out = whole
    manifest = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    blobs = [(out / schema.CARD_FILE).read_bytes(), json.dumps(manifest).encode()]
    for shard in out.glob("*/shard-*.tar"):
        with tarfile.open(shard) as tar:
            blobs += [m.name.encode() for m in tar.getmembers()]
            blobs += [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".json")]
    everything = b"\n".join(blobs)
    for needle in (b"patient0", b"patient6", b"Female", b"Male", b'"Age"', b'"Sex"'):
        assert needle not in everything


def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(tree, whole, tmp_path):
    _, first = whole
    _, second = ingest(tree.root, tmp_path / "again", size=390, shard_size=5, val_fraction=0.2, uncertain="ignore", workers=2)
    assert shard_digests(first) == shard_digests(second) and len(shard_digests(first)) >= 3
    assert (first / schema.MANIFEST_FILE).read_bytes() == (second / schema.MANIFEST_FILE).read_bytes()


def test_shards_verify_passes(whole):
    _, out = whole
    problems, shards, count = verify(out, read_card(out), workers=1)
    assert problems == [] and count == len(samples(out))


def test_the_generator_is_deterministic(tmp_path):
    trees = [make_chexpert_sample(tmp_path / name, train_patients=3, valid_patients=1, seed=9, with_defects=True).root
             for name in ("a", "b")]
    files = [{str(p.relative_to(t)): p.read_bytes() for p in sorted(t.rglob("*")) if p.is_file()} for t in trees]
    assert files[0] == files[1] and len(files[0]) > 6


def test_cli_exit_codes(tree, tmp_path, capsys):
    assert main(["chexpert", str(tree.root.parent), "--out", str(tmp_path / "ok"), "--size", "32",
                 "--uncertain", "ones", "--no-progress"]) == EXIT_OK
    assert read_card(tmp_path / "ok")["parameters"]["uncertain"] == "ones"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["chexpert", str(empty), "--out", str(tmp_path / "x"), "--no-progress"]) == EXIT_USAGE
    assert "train.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["chexpert", str(tree.root), "--out", str(tmp_path / "y"), "--uncertain", "maybe"])
    assert exit_info.value.code == EXIT_USAGE
