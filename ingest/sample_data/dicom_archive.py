"""A synthetic DICOM archive tree, shaped like a PACS export or a public dump, for tests and benchmarks.

Made-up pixels (the phantom of `cbis_ddsm_pixels`: a bright body against dark air), real DICOM
encodings. With `quirks=True` the tree also holds what real archives hold besides plain images:
- nested `<PatientID>/ST<n>/SE<n>/` folders, files named `IM0001` (no extension), `2.dcm`, `3.DCM`;
- several modalities: CR stored MONOCHROME1, DX and MG MONOCHROME2, 12 bits stored in 16;
- a `DICOMDIR` (a media directory, no image), a `README.txt` and a stray PNG that are not DICOM;
- a multi-frame breast tomosynthesis file whose frames differ in brightness;
- an RGB ultrasound image (colour);
- a file without the 128-byte preamble, 'DICM' and file meta (old ACR-NEMA-style exports);
- a Basic Text SR: a DICOM file without pixels;
- a file without PatientID, in a study of its own;
- a truncated file: the header reads, the pixel data is cut short, so it cannot be decoded.

PatientName `DOE^JANE<n>`, PatientBirthDate and PatientID `MRN...` are PHI stand-ins, so tests can
prove they never reach a shard. Same arguments, same bytes: UIDs come from the seed, no timestamps.
"""

from __future__ import annotations

import argparse
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, BasicTextSRStorage, BreastTomosynthesisImageStorage,
                         ComputedRadiographyImageStorage, DigitalMammographyXRayImageStorageForPresentation,
                         DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,
                         MediaStorageDirectoryStorage, UltrasoundImageStorage, generate_uid)

from ingest.sample_data.cbis_ddsm_pixels import breast_geometry, draw_mammogram

MODALITY_SOP = {
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "MG": DigitalMammographyXRayImageStorageForPresentation,
}
PLAIN_MODALITIES = tuple(MODALITY_SOP)
NAME_STYLES = ("IM{n:04d}", "{n}.dcm", "{n}.DCM")
TOMO_FRAMES = 5
BITS_STORED = 12


@dataclass(frozen=True)
class DicomArchive:
    root: Path
    images: int  # DICOM image files that decode: one sample each with --frames first/middle
    frames: int  # frames in those files: the samples of --frames all
    patients: int  # patients an ingest must find (a file without PatientID counts by its study)
    modalities: dict[str, int]  # decodable image files per Modality
    non_dicom: int = 0
    non_image: int = 0  # DICOM files without pixels (SR)
    dicomdirs: int = 0
    broken: tuple[str, ...] = ()  # relative paths of DICOM files whose pixels cannot be decoded
    multi_frame: str | None = None
    colour: str | None = None
    preambleless: str | None = None
    phi: tuple[str, ...] = field(default=())  # PatientName, PatientBirthDate, PatientID values written


class _Writer:
    """Writes files under root and keeps the tally a DicomArchive reports."""

    def __init__(self, root: Path, seed: int):
        self.root, self.seed = root, seed
        self.modalities: Counter[str] = Counter()
        self.frames = 0
        self.serial = 0

    def uid(self, *parts: object) -> str:
        return generate_uid(entropy_srcs=[str(self.seed), *map(str, parts)])

    def write(self, rel: str, data: bytes) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return rel

    def image(self, rel: str, ds: Dataset, *, preamble: bool = True, truncate: bool = False) -> str:
        data = _encode(ds, preamble=preamble)
        if truncate:
            return self.write(rel, data[: len(data) - 200])
        self.modalities[ds.Modality] += 1
        self.frames += int(ds.get("NumberOfFrames") or 1)
        return self.write(rel, data)


def make_dicom_archive(root: Path, *, images: int = 12, patients: int = 2, studies_per_patient: int = 2,
                       shape: tuple[int, int] = (256, 192), seed: int = 0, quirks: bool = True) -> DicomArchive:
    """Write an archive under root (absent or empty): `images` plain single-frame images dealt
    round-robin to patients, then their studies, then 2 series per study, modalities cycling CR,
    DX, MG by patient and study; plus, with quirks, one of each file in the module docstring."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    if images < 1 or patients < 1 or studies_per_patient < 1:
        raise ValueError("images, patients and studies_per_patient must be >= 1")
    root.mkdir(parents=True, exist_ok=True)
    writer = _Writer(root, seed)
    phi = {p: _phi(seed, p) for p in range(patients)}
    for n in range(images):
        p, s, r = n % patients, (n // patients) % studies_per_patient, (n // (patients * studies_per_patient)) % 2
        modality = PLAIN_MODALITIES[(p + s) % len(PLAIN_MODALITIES)]
        pixels = _phantom(shape, np.random.default_rng([seed, n]), view="CC" if r == 0 else "MLO")
        ds = _image(writer, pixels, modality, MODALITY_SOP[modality], phi[p], study=(p, s), series=(p, s, r), n=n)
        name = NAME_STYLES[n % len(NAME_STYLES)].format(n=n + 1)
        writer.image(f"{phi[p][2]}/ST{s + 1}/SE{r + 1}/{name}", ds)
    if not quirks:
        return DicomArchive(root=root, images=images, frames=writer.frames, patients=patients,
                            modalities=dict(writer.modalities), phi=_phi_values(phi))

    rng = np.random.default_rng([seed, 1])
    first, last = phi[0], phi[patients - 1]
    tomo = np.stack([_phantom(shape, rng, view="CC") // 2 + 3000 * f for f in range(TOMO_FRAMES)])
    ds = _image(writer, tomo, "MG", BreastTomosynthesisImageStorage, first, study=(0, 0), series="tomo", n="tomo")
    ds.NumberOfFrames = TOMO_FRAMES
    multi_frame = writer.image(f"{first[2]}/ST1/SE9/IM9001", ds)

    gray = (_phantom(shape, rng, view="CC") >> 8).astype(np.uint8)
    rgb = np.stack([gray, gray, gray // 2], axis=-1)
    ds = _image(writer, rgb, "US", UltrasoundImageStorage, last, study=(patients - 1, 0), series="us", n="us")
    colour = writer.image(f"{last[2]}/ST1/SE8/US0001.dcm", ds)

    ds = _image(writer, _phantom(shape, rng, view="MLO"), "DX", MODALITY_SOP["DX"], last,
                study=(patients - 1, 0), series="old", n="old")
    preambleless = writer.image(f"{last[2]}/ST1/SE7/OLD0001", ds, preamble=False)

    ds = _image(writer, _phantom(shape, rng, view="CC"), "CR", MODALITY_SOP["CR"], first,
                study=(0, 0), series="cut", n="cut")
    broken = writer.image(f"{first[2]}/ST1/SE6/IM6001.dcm", ds, truncate=True)

    ds = _image(writer, _phantom(shape, rng, view="CC"), "DX", MODALITY_SOP["DX"], first,
                study="anonymous", series="anonymous", n="anonymous")
    del ds.PatientID
    writer.image("unsorted/ANON0001", ds)

    writer.write(f"{first[2]}/ST1/REPORT.dcm", _encode(_report(writer, first)))
    writer.write("DICOMDIR", _encode(_dicomdir(writer)))
    writer.write("README.txt", b"Export of the imaging archive. Do not edit.\n")
    writer.write(f"{first[2]}/ST1/thumbnail.png", b"\x89PNG\r\n\x1a\n" + bytes(64))
    return DicomArchive(root=root, images=images + 4, frames=writer.frames, patients=patients + 1,
                        modalities=dict(writer.modalities), non_dicom=2, non_image=1, dicomdirs=1,
                        broken=(broken,), multi_frame=multi_frame, colour=colour, preambleless=preambleless,
                        phi=_phi_values(phi))


def _phi(seed: int, patient: int) -> tuple[str, str, str]:
    """(PatientName, PatientBirthDate, PatientID): made-up PHI that must never leak."""
    rng = np.random.default_rng([seed, 7, patient])
    birth = f"{rng.integers(1930, 1990)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    return f"DOE^JANE{patient + 1}", birth, f"MRN{seed:03d}{patient:05d}Q"


def _phi_values(phi: dict[int, tuple[str, str, str]]) -> tuple[str, ...]:
    return tuple(sorted(value for values in phi.values() for value in values))


def _phantom(shape: tuple[int, int], rng: np.random.Generator, *, view: str) -> np.ndarray:
    """(H, W) uint16 on a 16-bit scale: a bright body against dark air."""
    geom = breast_geometry(shape, chest_wall_left=bool(rng.integers(2)), view=view, rng=rng)
    return draw_mammogram(shape, geom, density=int(rng.integers(1, 5)), lesions=[], rng=rng)


def _image(writer: _Writer, pixels: np.ndarray, modality: str, sop_class: str, phi: tuple[str, str, str], *,
           study: object, series: object, n: object) -> Dataset:
    """An image dataset. 16-bit pixels are stored with 12 bits (CR as MONOCHROME1), 8-bit (H, W, 3) as RGB."""
    ds = _dataset(writer, sop_class, modality, phi, study=study, series=series, n=n)
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        ds.set_pixel_data(pixels, "RGB", 8, generate_instance_uid=False)
        return ds
    stored = (pixels >> (16 - BITS_STORED)).astype(np.uint16)
    photometric = "MONOCHROME1" if modality == "CR" else "MONOCHROME2"
    if photometric == "MONOCHROME1":
        stored = (2**BITS_STORED - 1) - stored
    ds.set_pixel_data(stored, photometric, BITS_STORED, generate_instance_uid=False)
    return ds


def _dataset(writer: _Writer, sop_class: str, modality: str, phi: tuple[str, str, str], *,
             study: object, series: object, n: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = writer.uid("instance", n)
    ds.Modality = modality
    ds.PatientName, ds.PatientBirthDate, ds.PatientID = phi
    ds.StudyInstanceUID = writer.uid("study", study)
    ds.SeriesInstanceUID = writer.uid("series", series)
    ds.StudyDate = "20200102"
    writer.serial += 1
    ds.InstanceNumber = writer.serial
    return ds


def _report(writer: _Writer, phi: tuple[str, str, str]) -> Dataset:
    ds = _dataset(writer, BasicTextSRStorage, "SR", phi, study=(0, 0), series="report", n="report")
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    return ds


def _dicomdir(writer: _Writer) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = writer.uid("dicomdir")
    ds.FileSetID = "EXPORT"
    ds.DirectoryRecordSequence = []
    return ds


def _encode(ds: Dataset, *, preamble: bool = True) -> bytes:
    """Part-10 bytes (preamble, 'DICM', file meta), or, with preamble=False, the bare data set in
    implicit VR little endian as old exports wrote it."""
    buffer = io.BytesIO()
    if preamble:
        ds.file_meta.MediaStorageSOPClassUID = ds.file_meta.get("MediaStorageSOPClassUID") or ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.file_meta.get("MediaStorageSOPInstanceUID") or ds.SOPInstanceUID
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.preamble = b"\0" * 128
        ds.save_as(buffer, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic DICOM archive tree (made-up pixels).")
    parser.add_argument("out", type=Path, help="output folder (absent or empty)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--patients", type=int, default=2)
    parser.add_argument("--studies-per-patient", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=2, default=(256, 192), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-quirks", action="store_true", help="plain images only")
    args = parser.parse_args(argv)
    made = make_dicom_archive(args.out, images=args.images, patients=args.patients,
                              studies_per_patient=args.studies_per_patient, shape=tuple(args.shape),
                              seed=args.seed, quirks=not args.no_quirks)
    print(f"DICOM archive at {made.root}: {made.images} decodable images ({made.frames} frames), "
          f"{made.patients} patients, modalities {made.modalities}")


if __name__ == "__main__":
    main()
