"""The CBIS-DDSM sample generator writes the real on-disk shapes, quirks included, reproducibly."""

from __future__ import annotations

import csv
import re
from pathlib import Path, PureWindowsPath

import cv2
import numpy as np
import pydicom
import pytest

from ingest.sample_data.cbis_ddsm import DEFECT_KINDS, main, make_cbis_sample
from ingest.sample_data.cbis_ddsm_cases import CSV_NAMES, PATH_COLUMNS, REAL_METADATA_NAME

REAL_CBIS = Path(__file__).resolve().parents[4] / "shared" / "data" / "cbis-ddsm"  # /work/shared/data/cbis-ddsm
SHAPE = (512, 320)


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def csv_rows(root: Path) -> dict[str, list[dict[str, str]]]:
    rows = {}
    for name in CSV_NAMES:
        with open(root / name, newline="", encoding="utf-8") as fh:
            rows[name] = list(csv.DictReader(fh))
    return rows


def all_rows(root: Path) -> list[tuple[str, dict[str, str]]]:
    return [(name, row) for name, rows in csv_rows(root).items() for row in rows]


def series_uid(cell: str) -> str:
    return cell.strip().split("/")[-2]


def tcia_index(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        return {row["Series_UID"]: row for row in csv.DictReader(fh)}


def series_folder(root: Path, meta_row: dict[str, str]) -> Path:
    return root.joinpath(*[p for p in PureWindowsPath(meta_row["File_Location"]).parts if p != "."])


def read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path)


def roles_in_series(folder: Path) -> dict[str, Path]:
    """Tell mask from crop by content, as a reader of a TCIA download must: the mask is 8-bit."""
    roles = {}
    for path in sorted(folder.glob("*.dcm")):
        roles["mask" if read(path).BitsAllocated == 8 else "crop"] = path
    return roles


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cbis")
    return {layout: make_cbis_sample(base / layout, patients=8, seed=0, layout=layout).root
            for layout in ("tcia", "uid")}


def test_same_arguments_give_the_same_bytes_and_another_seed_does_not(tmp_path):
    kwargs = dict(patients=8, seed=0, layout="tcia", with_defects=True)
    first = make_cbis_sample(tmp_path / "a", **kwargs)
    second = make_cbis_sample(tmp_path / "b", **kwargs)
    assert first.defects == second.defects and set(first.defects) == set(DEFECT_KINDS)
    assert files_of(first.root) == files_of(second.root)
    other = make_cbis_sample(tmp_path / "c", **{**kwargs, "seed": 1})
    assert files_of(other.root) != files_of(first.root)


def test_csvs_carry_the_real_quirks(samples):
    root = samples["uid"]
    for name in CSV_NAMES:
        raw = (root / name).read_bytes()
        header = raw.split(b"\r\n", 1)[0].decode()
        density = "breast_density" if name.startswith("mass") else "breast density"
        assert header.split(",")[1] == density
        assert ("mass shape,mass margins" if name.startswith("mass") else "calc type,calc distribution") in header
    rows = all_rows(root)
    kinds = {(name.split("_")[0], "train" if "train" in name else "test") for name, _ in rows}
    assert {k for k, _ in kinds} == {"mass", "calc"} and {s for _, s in kinds} == {"train", "test"}
    split_series = 0
    for name, row in rows:
        newline_column = "ROI mask file path" if name.startswith("mass") else "cropped image file path"
        assert [c for c in PATH_COLUMNS if row[c].endswith("\n")] == [newline_column]
        crop, mask = row["cropped image file path"].strip(), row["ROI mask file path"].strip()
        assert re.fullmatch(r"(Mass|Calc)-(Training|Test)_P_\d{5}_(LEFT|RIGHT)_(CC|MLO)/[\d.]+/[\d.]+/000000\.dcm",
                            row["image file path"])
        assert crop.split("/")[0] == f"{row['image file path'].split('/')[0]}_{row['abnormality id']}"
        if series_uid(crop) != series_uid(mask):
            assert name.startswith("mass") and crop.endswith("000000.dcm") and mask.endswith("000000.dcm")
            split_series += 1
        elif name.startswith("mass"):
            assert crop.endswith("000000.dcm") and mask.endswith("000001.dcm")
        else:
            assert crop.endswith("000001.dcm") and mask.endswith("000000.dcm")
    assert split_series >= 1
    ids_per_image: dict[str, list[int]] = {}
    for _, row in rows:
        ids_per_image.setdefault(row["image file path"], []).append(int(row["abnormality id"]))
    assert all(sorted(ids) == list(range(1, len(ids) + 1)) for ids in ids_per_image.values())
    assert max(map(len, ids_per_image.values())) >= 2
    train = {row["patient_id"] for name, row in rows if "train" in name}
    test = {row["patient_id"] for name, row in rows if "test" in name}
    assert train & test


def test_uid_layout_puts_every_file_at_its_csv_path(samples):
    root = samples["uid"]
    assert not (root / "metadata.csv").exists()
    for _, row in all_rows(root):
        image = read(root / row["image file path"].strip())
        crop = read(root / row["cropped image file path"].strip())
        mask = read(root / row["ROI mask file path"].strip())
        assert (image.BitsAllocated, crop.BitsAllocated, mask.BitsAllocated) == (16, 16, 8)
    assert len(list(root.rglob("*.dcm"))) == len({row[c] for _, row in all_rows(root) for c in PATH_COLUMNS})


def test_tcia_layout_resolves_every_csv_path_through_metadata_csv(samples):
    root = samples["tcia"]
    index = tcia_index(root)
    by_folder = {series_folder(root, meta): meta for meta in index.values()}
    raw = (root / "metadata.csv").read_text(encoding="utf-8").splitlines()
    assert raw[1].startswith('"1.3.6.1.4.1.9590.100.1.2.') and list(index) == sorted(index)
    mask_names = set()
    for _, row in all_rows(root):
        assert not (root / row["image file path"]).exists()  # only the series UID leads to the file
        image_meta = index[series_uid(row["image file path"])]
        assert image_meta["Series_Description"] == "full mammogram images"
        assert [p.name for p in series_folder(root, image_meta).iterdir()] == ["1-1.dcm"]
        folders = {series_folder(root, index[series_uid(row[c])]) for c in PATH_COLUMNS[1:]}
        roles = {}
        for folder in folders:
            assert len(list(folder.glob("*.dcm"))) == int(by_folder[folder]["Number_of_Images"])
            roles.update(roles_in_series(folder))
        assert set(roles) == {"crop", "mask"}
        if len(folders) == 1:
            mask_names.add(roles["mask"].name)
    assert mask_names == {"1-1.dcm", "1-2.dcm"}  # the mask's place in a shared series varies
    for meta in index.values():
        location = PureWindowsPath(meta["File_Location"])
        assert meta["File_Location"].startswith(".\\CBIS-DDSM\\")
        assert re.fullmatch(r"\d\d-\d\d-\d{4}-DDSM-NA-\d{5}", location.parent.name)
        assert location.parent.name.endswith(meta["Study_UID"][-5:])
        assert location.name == f"1.000000-{meta['Series_Description']}-{meta['Series_UID'][-5:]}"
        assert location.parent.name.startswith(meta["Study_Date"])


def test_masks_are_binary_full_size_except_one_and_crops_come_from_the_mammogram(samples):
    root = samples["uid"]
    off_size = 0
    for _, row in all_rows(root):
        image = read(root / row["image file path"].strip()).pixel_array
        mask = read(root / row["ROI mask file path"].strip()).pixel_array
        crop = read(root / row["cropped image file path"].strip()).pixel_array
        assert image.shape == SHAPE and image.dtype == np.uint16 and crop.dtype == np.uint16
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        if mask.shape != image.shape:
            off_size += 1
            assert abs(mask.shape[0] - image.shape[0]) <= 8 and abs(mask.shape[1] - image.shape[1]) <= 8
        else:
            ring = cv2.dilate(mask, np.ones((15, 15), np.uint8)) > mask
            assert image[mask > 0].mean() > image[ring].mean()  # the lesion is brighter than around it
        match = cv2.matchTemplate(image.astype(np.float32), crop.astype(np.float32), cv2.TM_SQDIFF)
        top, left = np.unravel_index(np.argmin(match), match.shape)
        assert np.array_equal(image[top:top + crop.shape[0], left:left + crop.shape[1]], crop)
        assert crop.size < image.size / 10
    assert off_size == 1


def test_dicom_headers_look_like_cbis_and_carry_phi_stand_ins(samples):
    root = samples["uid"]
    names = set()
    for name, row in all_rows(root):
        for column in PATH_COLUMNS:
            ds = read(root / row[column].strip())
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
            assert ds.Modality == "MG" and ds.PhotometricInterpretation == "MONOCHROME2"
            assert ds.PatientID == row[column].split("/")[0]
            assert ds.ImageLaterality == row["left or right breast"][0] and ds.ViewPosition == row["image view"]
            assert re.fullmatch(r"DOE\^JANE\d+", str(ds.PatientName)) and re.fullmatch(r"19\d{6}", ds.PatientBirthDate)
            assert ds.BitsStored == (8 if column == "ROI mask file path" else 16)
            names.add((row["patient_id"], str(ds.PatientName)))
    assert len({pid for pid, _ in names}) == len(names)  # one name per patient


def test_breast_lies_against_the_chest_wall_of_its_side(samples):
    root = samples["uid"]
    for _, row in all_rows(root):
        image = read(root / row["image file path"].strip()).pixel_array.astype(np.float64)
        half = image.shape[1] // 2
        left, right = image[:, :half].mean(), image[:, half:].mean()
        assert (left > right) == (row["left or right breast"] == "LEFT")
        assert (image < 2000).mean() > 0.2 and (image > 5000).mean() > 0.3  # dark air around tissue


@pytest.mark.parametrize("layout", ["tcia", "uid"])
def test_defects_are_what_they_say(tmp_path, layout):
    made = make_cbis_sample(tmp_path / layout, patients=8, seed=1, layout=layout, with_defects=True)
    root, defects = made.root, made.defects
    assert set(defects) == set(DEFECT_KINDS)
    cells = {row[c].strip(): row for _, row in all_rows(root) for c in PATH_COLUMNS}
    assert set(defects.values()) <= set(cells)

    def locate(cell: str, role: str) -> Path:
        if layout == "uid":
            return root / cell
        folder = series_folder(root, tcia_index(root)[series_uid(cell)])
        return folder / "1-1.dcm" if role == "image" else roles_in_series(folder)[role]

    assert not locate(defects["missing_image"], "image").exists()
    with pytest.raises(Exception):
        read(locate(defects["corrupt_image"], "image")).pixel_array
    assert not read(locate(defects["empty_mask"], "mask")).pixel_array.any()
    outside = defects["outside_root"]
    assert outside.startswith("../../outside/")
    assert not (root / outside).resolve().is_relative_to(root.resolve())
    if layout == "tcia":
        location = tcia_index(root)[series_uid(outside)]["File_Location"]
        assert not series_folder(root, tcia_index(root)[series_uid(outside)]).resolve().is_relative_to(root.resolve())
        assert location.startswith(".\\..\\..\\outside\\")
    assert made.images == len({row["image file path"] for _, row in all_rows(root)}) - 2


def test_real_rows_variant_keeps_real_rows_and_real_roi_metadata(tmp_path):
    if not REAL_CBIS.is_dir():
        pytest.skip(f"real CBIS-DDSM CSVs not found at {REAL_CBIS}")
    made = make_cbis_sample(tmp_path / "real", patients=8, seed=0, layout="tcia", real_csv_dir=REAL_CBIS)
    real = csv_rows(REAL_CBIS)
    mine = csv_rows(made.root)
    for name in CSV_NAMES:
        assert all(row in real[name] for row in mine[name])
        header = (REAL_CBIS / name).read_bytes().split(b"\r\n", 1)[0]
        assert (made.root / name).read_bytes().split(b"\r\n", 1)[0] == header
    rows = all_rows(made.root)
    assert made.patients == 8 and made.abnormalities == len(rows)
    assert {name for name, _ in rows} == set(CSV_NAMES)  # mass and calc, train and test
    train = {row["patient_id"] for name, row in rows if "train" in name}
    test = {row["patient_id"] for name, row in rows if "test" in name}
    assert train & test
    per_image: dict[str, int] = {}
    for _, row in rows:
        per_image[row["image file path"]] = per_image.get(row["image file path"], 0) + 1
    assert max(per_image.values()) >= 2
    assert any(name.startswith("mass") and series_uid(row["cropped image file path"]) != series_uid(
        row["ROI mask file path"]) for name, row in rows)

    with open(REAL_CBIS / REAL_METADATA_NAME, newline="", encoding="utf-8") as fh:
        real_meta = {row["Series_UID"]: row for row in csv.DictReader(fh)}
    index = tcia_index(made.root)
    for uid, meta in index.items():
        if meta["Series_Description"] == "full mammogram images":
            assert uid not in real_meta and meta["Number_of_Images"] == "1"
        else:
            assert {k: v for k, v in meta.items() if k != "File_Size"} == {
                k: v for k, v in real_meta[uid].items() if k != "File_Size"}
        assert len(list(series_folder(made.root, meta).glob("*.dcm"))) == int(meta["Number_of_Images"])


def test_command_line_prints_what_it_made(tmp_path, capsys):
    main([str(tmp_path / "out"), "--patients", "3", "--seed", "2", "--layout", "uid"])
    printed = capsys.readouterr().out
    assert "3 patients" in printed and str(tmp_path / "out") in printed
    assert (tmp_path / "out" / "mass_case_description_train_set.csv").is_file()


def test_refuses_a_non_empty_root_and_unknown_layouts(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_cbis_sample(tmp_path / "full")
    with pytest.raises(ValueError, match="layout"):
        make_cbis_sample(tmp_path / "new", layout="kaggle")
    with pytest.raises(ValueError, match="more patients"):
        make_cbis_sample(tmp_path / "few", patients=1, with_defects=True)
