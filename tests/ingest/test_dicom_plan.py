"""ingest.dicom_plan: units carry the salted pseudonyms of their file's own patient, study and series,
one string object for each, however many files share it."""

from __future__ import annotations

from collections import defaultdict

import pydicom

from ingest import pseudonym
from ingest.dicom_plan import plan_archive
from ingest.sample_data.dicom_archive import make_dicom_archive

SALT = "test-salt"


def test_units_share_one_pseudonym_object_per_patient_study_and_series(tmp_path):
    archive = make_dicom_archive(tmp_path / "archive", images=24, patients=2, studies_per_patient=2, shape=(32, 32),
                                 seed=4, quirks=False)
    plan = plan_archive(archive.root, skip=None, salt=SALT, modalities=None, frames="middle", test_fraction=0.0,
                        val_fraction=0.0, seed=0)
    assert len(plan.units) == 24
    objects = defaultdict(set)
    for unit in plan.units:
        image = unit.payload
        ds = pydicom.dcmread(image.path, stop_before_pixels=True)
        study = ds.StudyInstanceUID
        assert image.patient == pseudonym.pseudonym(SALT, f"dicom-patient:{ds.PatientID}")
        assert image.study == pseudonym.pseudonym(SALT, f"dicom-study:{study}")
        assert image.series == pseudonym.pseudonym(SALT, f"dicom-series:{study}/{ds.SeriesInstanceUID}")
        for kind in ("patient", "study", "series"):
            objects[kind, getattr(image, kind)].add(id(getattr(image, kind)))
    assert {kind for kind, _ in objects} == {"patient", "study", "series"}
    assert len({name for kind, name in objects if kind == "series"}) == 8  # 2 patients x 2 studies x 2 series
    assert all(len(ids) == 1 for ids in objects.values()), "a pseudonym made more than once"
