"""`ingest ... --splits-from SET`: patients of a set made before keep their split there (a
hospital archive ingested batch by batch, a collection ingested again for other crops)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingest import pseudonym
from ingest.cli import EXIT_OK, EXIT_USAGE, main
from ingest.sample_data.dicom_archive import make_dicom_archive
from shards import card as card_io
from shards import schema

SALT = "a-secret-of-this-test"


def _splits(out: Path) -> dict[str, str]:
    table = pq.read_table(out / schema.MANIFEST_FILE, columns=["patient", "split"])
    return dict(zip(table["patient"].to_pylist(), table["split"].to_pylist()))


@pytest.fixture
def archive(archive_exports) -> tuple[Path, Path]:
    """(first export, whole archive): tests/conftest.py."""
    return archive_exports


def _ingest(root: Path, out: Path, *extra: str) -> int:
    return main(["dicom", str(root), "--out", str(out), "--no-progress", "--workers", "0", "--id-salt", SALT,
                 "--test-fraction", "0.25", "--val-fraction", "0.25", *extra])


def test_a_growing_archive_keeps_its_first_batch_patients_in_their_splits(archive, tmp_path):
    first, whole = archive
    assert _ingest(first, tmp_path / "first") == EXIT_OK
    before = _splits(tmp_path / "first")
    assert len(before) == 8 and set(before.values()) == {"train", "val", "test"}
    assert _ingest(whole, tmp_path / "afresh") == EXIT_OK
    afresh = _splits(tmp_path / "afresh")
    assert any(afresh[p] != split for p, split in before.items())  # the leak --splits-from prevents

    assert _ingest(whole, tmp_path / "kept", "--splits-from", str(tmp_path / "first")) == EXIT_OK
    kept = _splits(tmp_path / "kept")
    assert len(kept) == 20 and all(kept[p] == split for p, split in before.items())
    new = [split for p, split in kept.items() if p not in before]
    assert sorted(new) == ["test"] * 3 + ["train"] * 7 + ["val"] * 2  # 0.25 of the 12 new, then of the 9 left
    card = card_io.read_card(tmp_path / "kept")
    (record,) = card["parameters"]["splits_from"]
    assert record == {"root": str(tmp_path / "first"), "patients": 8,
                      "card_digest": card_io.card_digest(card_io.read_card(tmp_path / "first"))}
    assert card["notes"]["patients_split_as_in_splits_from"] == 8
    # the same command again gives the same set, byte for byte
    assert _ingest(whole, tmp_path / "again", "--splits-from", str(tmp_path / "first")) == EXIT_OK
    for shard in card_io.shard_records(card):
        assert (tmp_path / "again" / shard["path"]).read_bytes() == (tmp_path / "kept" / shard["path"]).read_bytes()


def test_an_earlier_set_in_a_bucket_gives_its_splits_as_on_disk(archive, tmp_path, s3_endpoint):
    first, whole = archive
    assert _ingest(first, tmp_path / "first") == EXIT_OK
    uri = s3_endpoint.upload(tmp_path / "first", "sets/first")
    assert _ingest(whole, tmp_path / "from-bucket", "--splits-from", uri) == EXIT_OK
    assert _ingest(whole, tmp_path / "from-disk", "--splits-from", str(tmp_path / "first")) == EXIT_OK
    assert _splits(tmp_path / "from-bucket") == _splits(tmp_path / "from-disk")
    (record,) = card_io.read_card(tmp_path / "from-bucket")["parameters"]["splits_from"]
    assert record["root"] == uri and record["patients"] == 8


def test_a_set_made_under_another_salt_is_refused_before_anything_is_written(archive, tmp_path, capsys):
    first, whole = archive
    assert _ingest(first, tmp_path / "first") == EXIT_OK
    args = ["dicom", str(whole), "--out", str(tmp_path / "other"), "--no-progress", "--workers", "0",
            "--splits-from", str(tmp_path / "first")]
    assert main([*args, "--id-salt", "another-secret"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"--splits-from {tmp_path / 'first'}: made under another patient-ID salt" in err
    assert pseudonym.salt_fingerprint(SALT) in err and "another-secret" not in err  # fingerprints only
    assert not (tmp_path / "other").exists()
    assert main(["dicom", str(whole), "--out", str(tmp_path / "other"), "--id-salt", SALT,
                 "--splits-from", str(tmp_path / "missing")]) == EXIT_USAGE
    assert "no dataset card" in capsys.readouterr().err


def test_earlier_sets_that_disagree_on_a_patient_are_refused(archive, tmp_path, capsys):
    """Each set is split on its own: the same first batch under two seeds puts some patient in two splits."""
    first, whole = archive
    assert _ingest(first, tmp_path / "a") == EXIT_OK
    seed = next(s for s in range(1, 20)
                if _ingest(first, tmp_path / f"s{s}", "--seed", str(s)) == EXIT_OK
                and _splits(tmp_path / f"s{s}") != _splits(tmp_path / "a"))
    assert _ingest(whole, tmp_path / "both", "--splits-from", str(tmp_path / "a"),
                   "--splits-from", str(tmp_path / f"s{seed}")) == EXIT_USAGE
    assert "those sets disagree" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


def test_no_shared_patient_is_warned_of(archive, tmp_path):
    first, whole = archive
    other = make_dicom_archive(tmp_path / "elsewhere", images=4, patients=2, shape=(64, 48), seed=7,
                               quirks=False).root
    assert _ingest(other, tmp_path / "elsewhere-set") == EXIT_OK
    with pytest.warns(UserWarning, match="no patient of the --splits-from sets is in this job"):
        assert _ingest(first, tmp_path / "first", "--splits-from", str(tmp_path / "elsewhere-set")) == EXIT_OK
    assert card_io.read_card(tmp_path / "first")["notes"]["patients_split_as_in_splits_from"] == 0


@pytest.mark.parametrize("kind", ["cbis", "nih-cxr14", "chexpert", "cmmd", "drive", "if"])
def test_every_source_ingested_again_under_another_seed_keeps_the_first_sets_splits(kind, tmp_path, capsys):
    """The collection ingested again (other crops, another seed): with --splits-from the first set,
    every patient is where it was, as the card's notes count."""
    assert main(["sample-data", kind, str(tmp_path / "data")]) == EXIT_OK
    root = capsys.readouterr().out.split(f"ingest {kind} ", 1)[1].split(" --out", 1)[0]
    args = [kind, root, "--no-progress", "--workers", "0", "--val-fraction", "0.3"]
    assert main([*args, "--out", str(tmp_path / "first")]) in (EXIT_OK, 3)
    assert main([*args, "--out", str(tmp_path / "again"), "--seed", "5",
                 "--splits-from", str(tmp_path / "first")]) in (EXIT_OK, 3)
    before, again = _splits(tmp_path / "first"), _splits(tmp_path / "again")
    assert before and again == before
    notes = card_io.read_card(tmp_path / "again")["notes"]
    assert notes["patients_split_as_in_splits_from"] == len(before)


def test_an_official_split_stands_where_an_earlier_set_placed_a_patient_otherwise(tmp_path, capsys):
    """CBIS keeps its official test set: a patient an earlier set (made from the train CSVs alone)
    has in train, and whose images are also in the official test CSVs, goes to test here (the
    default --overlap test), and the job says so."""
    assert main(["sample-data", "cbis", str(tmp_path / "data")]) == EXIT_OK
    capsys.readouterr()
    root = tmp_path / "data"
    train_csvs = [str(root / f"{kind}_case_description_train_set.csv") for kind in ("mass", "calc")]
    args = ["cbis", str(root), "--no-progress", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "train-only"), "--csv", *train_csvs]) == EXIT_OK
    before = _splits(tmp_path / "train-only")
    with pytest.warns(UserWarning, match=r"^1 patient\(s\) of the --splits-from sets are in another split here: "
                                         "cbis-ddsm's official split places them"):
        assert main([*args, "--out", str(tmp_path / "all"), "--splits-from", str(tmp_path / "train-only")]) == EXIT_OK
    after = _splits(tmp_path / "all")
    moved = {p for p in before if after[p] != before[p]}
    assert len(moved) == 1 and after[moved.pop()] == "test"
    notes = card_io.read_card(tmp_path / "all")["notes"]
    assert notes["patients_placed_otherwise_than_splits_from"] == 1
    assert notes["patients_split_as_in_splits_from"] == len(before) - 1
