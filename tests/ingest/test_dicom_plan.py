"""ingest.dicom_plan: units carry the salted pseudonyms of their file's own patient, study and
series; the plan's rows go to disk as the walk goes, and no header's raw identifier is among them; runs
merged on disk give the same units as one run in memory."""

from __future__ import annotations

import errno
import gc

import pydicom
import pytest

from ingest import pseudonym, unit_table
from ingest.dicom_plan import plan_archive
from ingest.pipeline import IngestError
from ingest.sources import dicom_archive
from ingest.sample_data.dicom_archive import make_dicom_archive

SALT = "test-salt"


@pytest.fixture
def archive(tmp_path):
    return make_dicom_archive(tmp_path / "archive", images=24, patients=2, studies_per_patient=2, shape=(32, 32),
                              seed=4, quirks=False)


def _plan(root, **kw):
    return plan_archive(root, skip=None, salt=SALT, modalities=None, frames="middle", test_fraction=0.0,
                        val_fraction=0.0, seed=0, **kw)


def test_units_carry_the_pseudonyms_of_their_own_file(archive):
    plan = _plan(archive.root)
    assert len(plan.units) == 24
    assert isinstance(plan.units, unit_table.UnitTable)
    for unit in plan.units:
        image = unit.payload
        ds = pydicom.dcmread(image.path, stop_before_pixels=True)
        study = ds.StudyInstanceUID
        assert image.patient == pseudonym.pseudonym(SALT, f"dicom-patient:{ds.PatientID}")
        assert image.study == pseudonym.pseudonym(SALT, f"dicom-study:{study}")
        assert image.series == pseudonym.pseudonym(SALT, f"dicom-series:{study}/{ds.SeriesInstanceUID}")
        assert unit.unit_id == pseudonym.pseudonym(SALT, f"dicom-image:{unit.source_path}")
    ids = [u.unit_id for u in plan.units]
    assert ids == sorted(ids)
    assert (plan.notes["patients"], plan.notes["studies"], plan.notes["series"]) == (2, 4, 8)


def test_runs_on_disk_hold_no_raw_identifier_and_merge_to_the_same_units(archive, monkeypatch):
    in_memory = list(_plan(archive.root).units)
    raw = set()
    for path in archive.root.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        raw |= {ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
    written = []
    write = unit_table._write

    def recording(path, schema, rows, batch_rows=None):
        rows = list(rows)
        written.extend(rows)
        return write(path, schema, iter(rows), batch_rows)

    monkeypatch.setattr(unit_table, "_write", recording)
    monkeypatch.setattr(unit_table, "RUN_ROWS", 5)
    monkeypatch.setattr(unit_table, "MERGE_FAN", 2)
    plan = _plan(archive.root)
    assert list(plan.units) == in_memory
    assert len(written) > 2 * 24, "rows should have been spilled in runs and merged"
    for row in written:  # paths are the archive's own (this one names folders by MRN); the rest is ours
        assert row[2].decode() == str(archive.root / row[1].decode())
        for value in (v for v in row if not isinstance(v, bytes)):
            assert not any(identifier in str(value) for identifier in raw), f"a raw identifier on disk: {row}"


def test_the_plans_folder_goes_with_its_units(archive):
    plan = _plan(archive.root)
    folder = plan.units.folder.path
    assert folder.is_dir()
    del plan
    gc.collect()
    assert not folder.exists()


def test_a_plan_that_cannot_spill_is_a_clear_error(archive, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(unit_table, "_write", full)
    with pytest.raises(IngestError, match="No space left on device.*set TMPDIR to a folder with room"):
        dicom_archive.build_job(root=archive.root, out=tmp_path / "out", progress=False, id_salt=SALT)
