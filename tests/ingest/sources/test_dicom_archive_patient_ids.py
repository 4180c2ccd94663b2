"""`ingest dicom` and patient IDs: the secret salt their pseudonyms need, and an archive whose
studies all carry one PatientID."""

from __future__ import annotations

import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ingest import dicom_plan, pseudonym
from ingest.cli import EXIT_OK, EXIT_USAGE, main
from ingest.sample_data.dicom_archive import make_dicom_archive
from shards import card as card_io
from shards import schema


def test_studies_that_all_share_one_patient_id_are_said_to_leave_nothing_to_split(tmp_path, monkeypatch):
    """An anonymiser that writes one constant PatientID makes the archive one patient: all train."""
    monkeypatch.setenv(pseudonym.SALT_ENV, "a-secret-of-this-test")
    one = make_dicom_archive(tmp_path / "one", images=6, patients=1, studies_per_patient=3, shape=(64, 48),
                             quirks=False)
    args = ["dicom", str(one.root), "--no-progress", "--workers", "0"]
    with pytest.warns(dicom_plan.OnePatientArchive, match="^every one of the 3 studies has the same PatientID, "
                                                             "so all 6 images are one patient and all go to train"):
        assert main([*args, "--out", str(tmp_path / "a")]) == EXIT_OK
    card = card_io.read_card(tmp_path / "a")
    assert card["notes"]["one_patient_id_for_every_study"] is True and set(card["splits"]) == {"train"}
    two = make_dicom_archive(tmp_path / "two", images=6, patients=2, shape=(64, 48), quirks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", dicom_plan.OnePatientArchive)
        # no split asked for, so nothing is lost; and two patients split as asked
        assert main([*args, "--out", str(tmp_path / "b"), "--test-fraction", "0", "--val-fraction", "0"]) == EXIT_OK
        assert main(["dicom", str(two.root), "--no-progress", "--workers", "0", "--out", str(tmp_path / "c")]) == EXIT_OK
    assert "one_patient_id_for_every_study" not in card_io.read_card(tmp_path / "c")["notes"]


def test_an_archive_needs_a_secret_salt_or_the_public_one_by_name(tmp_path, capsys, monkeypatch):
    """With the public default, hashing every possible patient ID reverses the pseudonyms: refused
    before anything is written. A secret (flag or environment) or `--id-salt public` is taken."""
    clean = make_dicom_archive(tmp_path / "clean", images=3, patients=1, studies_per_patient=1, shape=(64, 48),
                               quirks=False)
    monkeypatch.delenv(pseudonym.SALT_ENV, raising=False)
    args = ["dicom", str(clean.root), "--no-progress", "--workers", "0"]
    assert main([*args, "--out", str(tmp_path / "none")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "ingest dicom: error: an archive's patient IDs need a secret salt" in err  # said once
    assert pseudonym.SALT_ENV in err and "--id-salt public" in err
    assert not (tmp_path / "none").exists()

    def patients(out: Path) -> set[str]:
        return set(pq.read_table(out / schema.MANIFEST_FILE).column("patient").to_pylist())

    assert main([*args, "--out", str(tmp_path / "public"), "--id-salt", "public"]) == EXIT_OK
    assert main([*args, "--out", str(tmp_path / "flag"), "--id-salt", "s3cret"]) == EXIT_OK
    monkeypatch.setenv(pseudonym.SALT_ENV, "s3cret")
    assert main([*args, "--out", str(tmp_path / "env")]) == EXIT_OK
    assert len(patients(tmp_path / "public")) == 1
    assert patients(tmp_path / "flag") == patients(tmp_path / "env") != patients(tmp_path / "public")
    fingerprints = {name: card_io.read_card(tmp_path / name)["parameters"]["id_salt_fingerprint"]
                    for name in ("public", "flag", "env")}
    assert fingerprints["public"] == pseudonym.salt_fingerprint(pseudonym.DEFAULT_SALT)
    assert fingerprints["flag"] == fingerprints["env"] == pseudonym.salt_fingerprint("s3cret")
