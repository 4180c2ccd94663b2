"""`ingest cbis` end to end on CBIS-DDSM trees in the real on-disk layouts (generated pixels)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import webdataset as wds

from ingest.cli import EXIT_FAILED, EXIT_OK, EXIT_REJECTS, EXIT_TERMINATED, main
from ingest.pipeline import run_job
from ingest.sample_data.cbis_ddsm import make_cbis_sample
from ingest.sources import cbis
from ingest.progress import read_progress
from shards import codecs, manifest, schema

PROJECT = Path(__file__).resolve().parents[3]


def ingest(root: Path, out: Path, **kw) -> tuple[object, Path]:
    job = cbis.build_job(root=root, out=out, progress=False, **kw)
    return run_job(job), out


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*/shard-*.tar"))}


@pytest.fixture(scope="module")
def tcia_tree(tmp_path_factory) -> Path:
    return make_cbis_sample(tmp_path_factory.mktemp("cbis") / "download", patients=8, seed=3, layout="tcia").root


@pytest.fixture(scope="module")
def both_crops(tcia_tree, tmp_path_factory):
    return ingest(tcia_tree, tmp_path_factory.mktemp("out") / "both", crops="both", shard_size=7, val_fraction=0.3, random_side=96)


def csv_rows(root: Path) -> list[dict[str, str]]:
    rows = []
    for name in cbis.OFFICIAL_CSVS:
        with open(root / name, newline="") as fh:
            rows.extend(csv.DictReader(fh))
    return rows


def test_round_trip_through_plain_webdataset_and_tarfile(tcia_tree, both_crops):
    summary, out = both_crops
    assert summary.rejects == 0
    rows = csv_rows(tcia_tree)
    lesions = {}
    for split in schema.SPLITS:
        urls = sorted(str(p) for p in (out / split).glob("shard-*.tar"))
        assert urls, f"no {split} shards"
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"])
            pixels = codecs.decode_pixels("png", sample["png"])
            assert pixels.dtype == np.uint16 and pixels.shape == (224, 224)
            assert meta["split"] == split and meta["key"] == sample["__key__"]
            if meta["crop_kind"] == "lesion":
                mask = codecs.decode_mask(sample["mask.png"])
                assert mask.shape == (224, 224) and set(np.unique(mask)) <= {0, 255} and mask.any()
                lesions[meta["key"]] = meta
            else:
                assert "mask.png" not in sample
    # One lesion crop per CSV row, labels as the CSV says.
    assert len(lesions) == len(rows)
    pathologies = sorted(m["labels"]["pathology"] for m in lesions.values())
    assert pathologies == sorted(r["pathology"] for r in rows)
    for meta in lesions.values():
        lab = meta["labels"]
        assert lab["class4"] == f"{'malignant' if lab['pathology'] == 'MALIGNANT' else 'benign'}_" + (
            "mass" if lab["abnormality_type"] == "mass" else "calc")
    # tarfile sees the same members, all with a pinned mtime and no directories.
    for shard in out.glob("*/shard-*.tar"):
        with tarfile.open(shard) as tar:
            infos = tar.getmembers()
        assert all(i.isfile() and i.mtime == infos[0].mtime for i in infos)
        assert all(schema.split_member_name(i.name) for i in infos)


def test_lesion_crop_is_centred_on_its_roi(tcia_tree, both_crops):
    """The mask member of a lesion crop is the ROI, and the ROI sits in the crop's middle."""
    _, out = both_crops
    for shard in out.glob("*/shard-*.tar"):
        for sample in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
            if "mask.png" not in sample:
                continue
            ys, xs = np.nonzero(codecs.decode_mask(sample["mask.png"]))
            assert abs((ys.min() + ys.max()) / 2 - 112) < 20 and abs((xs.min() + xs.max()) / 2 - 112) < 20


def test_manifest_and_card_agree_with_shards(both_crops):
    summary, out = both_crops
    table = pq.read_table(out / schema.MANIFEST_FILE)
    assert table.column_names == list(schema.MANIFEST_COLUMNS + schema.MEMBER_SPAN_COLUMNS)
    card = json.loads((out / schema.CARD_FILE).read_text())
    assert card["splits"]["train"]["samples"] == summary.samples["train"]
    assert sum(s["samples"] for s in card["splits"].values()) == table.num_rows
    for split in card["splits"].values():
        for shard in split["shards"]:
            assert hashlib.sha256((out / shard["path"]).read_bytes()).hexdigest() == shard["sha256"]
    assert card["pixel_stats"]["channels"] == 1 and card["pixel_stats"]["std"][0] > 0
    assert set(table.column("crop_kind").to_pylist()) == {"lesion", "random"}
    assert not (out / ".staging").exists()


def test_card_pixel_stats_are_the_train_splits_own(both_crops):
    """Ingest sums only train samples' pixels (EncodedSample.of); the card's statistics equal
    `shards stats`' recomputation from the train shards, and differ from the whole set's."""
    from shards.card import read_card
    from shards.stats import compute

    _, out = both_crops
    card = read_card(out)
    assert card["pixel_stats"] == compute(out, card)
    everything = {**card, "splits": {"train": {"shards": [s for split in card["splits"].values() for s in split["shards"]]}}}
    assert compute(out, everything)["mean"] != card["pixel_stats"]["mean"]


def test_no_patient_in_two_splits(tcia_tree, both_crops):
    _, out = both_crops
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    split_of: dict[str, str] = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"]
    # The sample has a patient in both official CSV splits; it went wholly to test.
    assert any(r["official_split"] == "train" and r["split"] == "test" for r in rows)
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_no_phi_in_any_output(tcia_tree, tmp_path):
    names, births, ids = set(), set(), set()
    for dcm in tcia_tree.rglob("*.dcm"):
        ds = pydicom.dcmread(dcm, stop_before_pixels=True)
        names.add(str(ds.PatientName))
        births.add(str(ds.PatientBirthDate))
        ids.add(str(ds.PatientID))
    ids |= {r["patient_id"] for r in csv_rows(tcia_tree)}
    out = tmp_path / "phi"
    proc = subprocess.run([sys.executable, "-m", "ingest.cli", "cbis", str(tcia_tree), "--crops", "both",
                           "--out", str(out), "--workers", "1"], capture_output=True, cwd=PROJECT)
    assert proc.returncode == EXIT_OK, proc.stderr.decode()
    blobs = [proc.stdout, proc.stderr]
    for path in out.rglob("*"):
        if path.is_file():
            blobs.append(path.read_bytes())
            if path.suffix == ".tar":
                with tarfile.open(path) as tar:
                    blobs.extend(tar.extractfile(m).read() for m in tar.getmembers())
    everything = b"\n".join(blobs)
    for value in names | births | ids:
        assert value and value.encode() not in everything, f"PHI value {value!r} leaked"


def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(tcia_tree, both_crops, tmp_path):
    _, first = both_crops
    _, second = ingest(tcia_tree, tmp_path / "again", crops="both", shard_size=7, val_fraction=0.3, random_side=96, workers=2)
    assert shard_digests(first) == shard_digests(second) and shard_digests(first)
    assert (first / schema.MANIFEST_FILE).read_bytes() == (second / schema.MANIFEST_FILE).read_bytes()


def test_a_manifest_gathered_in_many_chunks_is_the_one_a_single_chunk_gives(tcia_tree, both_crops, tmp_path,
                                                                           monkeypatch):
    """Lesion and random crops carry other labels, so chunks of 3 rows differ in their label names."""
    _, first = both_crops
    monkeypatch.setattr(manifest, "CHUNK_ROWS", 3)
    summary, second = ingest(tcia_tree, tmp_path / "chunked", crops="both", shard_size=7, val_fraction=0.3,
                             random_side=96, workers=0)
    assert sum(summary.samples.values()) > 3 * 3
    for name in (schema.MANIFEST_FILE, schema.CARD_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_uid_layout_gives_the_same_samples(tmp_path):
    tcia = make_cbis_sample(tmp_path / "tcia", patients=4, seed=5, layout="tcia").root
    uid = make_cbis_sample(tmp_path / "uid", patients=4, seed=5, layout="uid").root
    _, a = ingest(tcia, tmp_path / "a")
    _, b = ingest(uid, tmp_path / "b")
    ka = pq.read_table(a / schema.MANIFEST_FILE).column("source_fingerprint").to_pylist()
    kb = pq.read_table(b / schema.MANIFEST_FILE).column("source_fingerprint").to_pylist()
    assert ka and sorted(ka) == sorted(kb)


def test_bad_inputs_are_rejected_with_reasons_and_the_job_goes_on(tmp_path, capsys):
    made = make_cbis_sample(tmp_path / "bad", patients=8, seed=1, layout="tcia", with_defects=True)
    code = main(["cbis", str(made.root), "--out", str(tmp_path / "out"), "--workers", "2", "--no-progress"])
    assert code == EXIT_REJECTS
    rejects = [json.loads(line) for line in (tmp_path / "out" / schema.REJECTS_FILE).read_text().splitlines()]
    reasons = " | ".join(r["reason"] for r in rejects)
    for kind in ("file not found", "undecodable DICOM", "empty ROI mask", "path outside root"):
        assert kind in reasons, reasons
    assert all(r["source_path"] for r in rejects)
    assert "REJECTED" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "out" / schema.MANIFEST_FILE)
    assert table.num_rows >= made.abnormalities - len(made.defects) - 1  # everything else still made it


def test_finished_output_is_not_clobbered_without_overwrite(both_crops, tcia_tree, capsys):
    _, out = both_crops
    assert main(["cbis", str(tcia_tree), "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def logged_units(out: Path) -> int:
    return len(read_progress(out / ".staging")[0])


def child_pids(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("workers", ["0", "1", "2"])
def test_resume_after_a_killed_run_ends_with_the_same_shards(tmp_path, workers, running):
    """Killed outright (SIGKILL, as the OOM killer does), the writing process alone: its worker
    processes go with it, leaving neither the folder's lock nor CPU in use, and the rerun resumes."""
    # Larger mammograms so each image takes long enough to kill the run part-way.
    root = make_cbis_sample(tmp_path / "dl", patients=12, seed=2, layout="tcia", image_shape=(2048, 1280)).root
    _, reference = ingest(root, tmp_path / "reference", crops="both", shard_size=5)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ingest.cli", "cbis", str(root), "--crops", "both", "--shard-size", "5",
           "--out", str(out), "--workers", workers, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    # Let the run go in 2 ms slices (a unit takes several), stopped between them while its progress
    # log is read, so it is killed a few units in however fast this machine ingests.
    while logged_units(out) < 3 and time.monotonic() < deadline:
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
    children = child_pids(proc.pid)
    assert len(children) == int(workers)  # --workers 0: none, the writing process decodes
    proc.kill()
    proc.wait()
    assert logged_units(out) >= 3 and not (out / schema.CARD_FILE).exists()
    while any(map(running, children)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(map(running, children)), "worker processes outlived the killed run"
    done = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == EXIT_OK, done.stderr
    assert "resumed" in done.stdout
    assert shard_digests(out) == shard_digests(reference)




@pytest.mark.parametrize("to_group", [False, True])
def test_sigterm_stops_the_run_resumably_and_rejects_nothing_for_it(tmp_path, to_group):
    """SIGTERM, as `docker stop` or Kubernetes send it to the writing process, or as Slurm's
    scancel sends it to every process of the job, workers included: exit 143 with word of how to
    go on, no unit rejected for it (a worker ignores it; a unit rejected so would never be redone),
    and the rerun resumes to the shards and rejects of an uninterrupted run."""
    root = make_cbis_sample(tmp_path / "dl", patients=12, seed=2, layout="tcia", image_shape=(2048, 1280),
                            with_defects=True).root
    reference = tmp_path / "reference"
    cmd = [sys.executable, "-m", "ingest.cli", "cbis", str(root), "--crops", "both", "--shard-size", "5",
           "--workers", "2", "--no-progress"]
    subprocess.run([*cmd, "--out", str(reference)], cwd=PROJECT, capture_output=True)
    out = tmp_path / "stopped"
    proc = subprocess.Popen([*cmd, "--out", str(out)], cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while logged_units(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    if to_group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED, err
    assert "stopped (SIGTERM); run the same command again to resume" in err
    assert not (out / schema.CARD_FILE).exists()
    logged = read_progress(out / ".staging")[0]
    assert not [r for rec in logged for r in rec.sidecar["rejects"] if "SIGTERM" in r["reason"]]
    done = subprocess.run([*cmd, "--out", str(out)], cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == EXIT_REJECTS, done.stderr
    assert "resumed" in done.stdout
    assert shard_digests(out) == shard_digests(reference)
    assert (out / schema.REJECTS_FILE).read_bytes() == (reference / schema.REJECTS_FILE).read_bytes()


def test_an_output_folder_that_cannot_be_made_is_a_usage_error(tcia_tree, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["cbis", str(tcia_tree), "--out", str(blocker / "out"), "--no-progress"]) == 2
    assert f"cannot make the output folder {blocker / 'out'}: Not a directory" in capsys.readouterr().err

def _limit_file_size(limit: int):
    def limit_child() -> None:  # in the child, before exec: any file growing past `limit` fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_child


@pytest.mark.parametrize("workers", ["1", "2"])
def test_output_that_cannot_be_written_stops_the_run_naming_it_and_the_rerun_resumes(tcia_tree, tmp_path, workers):
    """A full disk, as the kernel says it for files larger than the process may write (EFBIG under
    RLIMIT_FSIZE; ENOSPC reads alike): one error line naming the folder and the cause, exit 1,
    the finished images kept; the same command afterwards resumes and ends in the shards of a
    run that never failed."""
    _, reference = ingest(tcia_tree, tmp_path / "reference", crops="both")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ingest.cli", "cbis", str(tcia_tree), "--crops", "both", "--out", str(out),
           "--workers", workers, "--no-progress"]
    stopped = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, preexec_fn=_limit_file_size(400_000))
    assert stopped.returncode == EXIT_FAILED, stopped.stderr
    assert stopped.stderr.count("\n") == 1 and "Traceback" not in stopped.stderr
    assert f"writing {out} failed: File too large" in stopped.stderr and "run the same command again" in stopped.stderr
    assert 0 < logged_units(out) < len(csv_rows(tcia_tree)) and not (out / schema.CARD_FILE).exists()
    done = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == EXIT_OK, done.stderr
    assert "resumed" in done.stdout
    assert shard_digests(out) == shard_digests(reference)


def test_real_csv_rows_in_the_tcia_layout(shared_data, tmp_path):
    """Real CBIS-DDSM CSV rows and real TCIA metadata.csv rows (folder names, UIDs, quirks), with
    pixels made by the generator: every real row becomes a lesion crop labelled as the CSV says."""
    made = make_cbis_sample(tmp_path / "real", patients=10, seed=0, layout="tcia",
                            real_csv_dir=shared_data / "cbis-ddsm")
    summary, out = ingest(made.root, tmp_path / "out", val_fraction=0.2)
    assert summary.rejects == 0
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    assert len(rows) == made.abnormalities
    real = {(r["pathology"], r["abnormality type"]) for r in csv_rows(made.root)}
    assert {(r["labels"]["pathology"], r["labels"]["abnormality_type"]) for r in rows} == real
    split_of: dict[str, str] = {}
    for row in rows:
        assert split_of.setdefault(row["patient"], row["split"]) == row["split"]
    assert any(r["official_split"] == "train" and r["split"] == "test" for r in rows)
