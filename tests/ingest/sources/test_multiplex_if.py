"""`ingest if` end to end: the real 22-channel MIBI TIFF first (channels picked by name), then
generated 8-channel brain-cell images in three TIFF layouts (made-up pixels, real file formats)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import webdataset as wds

from ingest import if_plan_reads, pipeline, pseudonym
from ingest.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, main
from ingest.multiplex_tiff import files_fingerprint
from ingest.pipeline import run_job
from ingest.progress import read_progress
from ingest.sample_data.multiplex_if import CHANNELS, make_if_sample
from ingest.sources import multiplex_if
from shards import codecs, schema
from shards.verify import verify

DAMA = list(multiplex_if.DAMA_CHANNELS)
PROJECT = Path(__file__).resolve().parents[3]
MIBI_PICK = ["Vimentin (113)", "HH3 (89)", "CD45 (169)", "Ki67 (151)", "PanKeratin (171)", "SMA (115)", "CD8 (158)"]


def ingest(root: Path, out: Path, **kw):
    return run_job(multiplex_if.build_job(root=root, out=out, progress=False, **kw)), out


def samples(out: Path) -> list[dict]:
    found = []
    for split in schema.SPLITS:
        urls = sorted(str(p) for p in (out / split).glob("shard-*.tar"))
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False) if urls else []:
            found.append({"meta": json.loads(sample["json"]), "split": split,
                          "pixels": codecs.decode_pixels("npy", sample["npy"])})
    return found


def cut(image: np.ndarray, box) -> np.ndarray:
    """image under box, zero outside, by hand."""
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0), image.dtype)
    ys, xs = np.mgrid[y0:y1, x0:x1]
    inside = (ys >= 0) & (ys < image.shape[0]) & (xs >= 0) & (xs < image.shape[1])
    out[inside] = image[ys[inside], xs[inside]]
    return out


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*/shard-*.tar"))}


def logged_units(out: Path) -> int:
    return len(read_progress(out / schema.STAGING_DIR)[0])


def verified(out: Path) -> int:
    problems, _, count = verify(out, json.loads((out / schema.CARD_FILE).read_text()), workers=1)
    assert problems == []
    return count


# ---- the real 22-channel MIBI image ----

def test_real_mibi_channels_picked_by_name_in_the_requested_order(shared_data, tmp_path):
    """Seven of 22 pages picked by PageName, in an order unlike the file's; a cell table (written
    by the test) puts one cell on the corner so its crop is zero-padded."""
    root = tmp_path / "mibi"
    root.mkdir()
    source = shared_data / "multiplex-tiff" / "mibi_fov8_22ch_uint16.tiff"
    (root / source.name).symlink_to(source)
    cells = [(512.0, 300.0, "tumor"), (3.2, 1020.6, "immune"), (900.5, 64.0, "")]
    with open(root / "mibi_fov8_22ch_uint16.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["x", "y", "cell_type"], *cells])
    summary, out = ingest(root, tmp_path / "out", channels=tuple(MIBI_PICK))
    assert summary.rejects == 0
    found = sorted(samples(out), key=lambda s: s["meta"]["extra"]["table_line"])
    assert [s["meta"]["labels"]["cell_type"] for s in found] == ["tumor", "immune", None]
    with tifffile.TiffFile(source) as tif:
        pages = {p.tags["PageName"].value: p.asarray() for p in tif.pages}
    for s, (x, y, _) in zip(found, cells):
        meta, pixels = s["meta"], s["pixels"]
        assert pixels.shape == (128, 128, 7) and pixels.dtype == np.uint16
        assert meta["channel_names"] == MIBI_PICK and meta["source_size"] == [1024, 1024]
        x0, y0, x1, y1 = meta["crop_box"]
        assert (x1 - x0, y1 - y0) == (128, 128) and (x0 + 64, y0 + 64) == (int(x + 0.5), int(y + 0.5))
        for c, name in enumerate(MIBI_PICK):
            np.testing.assert_array_equal(pixels[..., c], cut(pages[name], meta["crop_box"]))
    assert not found[1]["pixels"][-1:].any()  # the corner cell's crop is padded below the image
    assert meta["pixel_spacing_mm"] == pytest.approx([0.000390625, 0.000390625])
    assert verified(out) == 3


def test_real_mibi_channels_picked_by_marker_name_alone(shared_data, tmp_path):
    """"HH3" picks the page named "HH3 (89)": the same pixels as naming it in full."""
    root = shared_data / "multiplex-tiff"
    markers = [name.split(" (")[0] for name in MIBI_PICK[:3]]
    _, full = ingest(root, tmp_path / "full", channels=tuple(MIBI_PICK[:3]), nuclear_channel="HH3 (89)", crops="both",
                     size=32)
    summary, bare = ingest(root, tmp_path / "bare", channels=tuple(markers), nuclear_channel="hh3", crops="both",
                           size=32)
    assert summary.rejects == 0 and summary.samples["train"] > 0
    by_key = {s["meta"]["key"]: s for s in samples(full)}
    found = samples(bare)
    assert sorted(by_key) == sorted(s["meta"]["key"] for s in found)
    assert {s["meta"]["crop_kind"] for s in found} == {"cell", "random"}  # nuclei found on "hh3"
    for s in found:
        assert s["meta"]["channel_names"] == markers
        np.testing.assert_array_equal(s["pixels"], by_key[s["meta"]["key"]]["pixels"])


def test_real_mibi_nuclei_and_missing_channels(shared_data, tmp_path):
    root = shared_data / "multiplex-tiff"
    summary, out = ingest(root, tmp_path / "nuclei", channels=tuple(MIBI_PICK[:3]), nuclear_channel="hh3 (89)",
                          size=32)
    card = json.loads((out / schema.CARD_FILE).read_text())
    assert summary.rejects == 0 and card["notes"]["cells_from_nuclei"] == summary.samples["train"] > 300
    summary, out = ingest(root, tmp_path / "dama", crops="random")  # DAMA's channels are not in a MIBI file
    assert summary.rejects_by_reason == {"missing channel": 1} and not summary.samples
    (reject,) = map(json.loads, (out / schema.REJECTS_FILE).read_text().splitlines())
    assert reject["source_path"] == "mibi_fov8_22ch_uint16.tiff"
    assert "DAPI, Histones, NeuN, S100, Olig2, Iba1, RECA1 not in" in reject["reason"] and "HH3 (89)" in reject["reason"]


# ---- generated images: pages (PageName), OME tiles, per-channel folder ----

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    return make_if_sample(tmp_path_factory.mktemp("if"), images=3, seed=2)


@pytest.fixture(scope="module")
def table_crops(made, tmp_path_factory):
    return ingest(made.root, tmp_path_factory.mktemp("out") / "cells", size=32, shard_size=10)


def test_cell_crops_from_tables_in_every_layout(made, table_crops):
    summary, out = table_crops
    assert summary.rejects == 0 and set(made.images.values()) == {"pages", "ome", "folder"}
    found = samples(out)
    assert len(found) == sum(len(c) for c in made.cells.values())
    by_fingerprint = {}
    for image_id in made.images:
        path = next(p for p in made.root.iterdir() if p.name.startswith(image_id) and p.suffix != ".csv")
        by_fingerprint[files_fingerprint(path)] = image_id
    for s in found:
        meta, pixels = s["meta"], s["pixels"]
        image_id = by_fingerprint[meta["source_fingerprint"]]
        line = meta["extra"]["table_line"]
        x, y, kind = made.cells[image_id][line - 2]
        assert meta["labels"] == {"cell_type": kind} and meta["crop_kind"] == "cell"
        assert meta["channel_names"] == DAMA and pixels.shape == (32, 32, 7) and pixels.dtype == np.uint16
        for c, name in enumerate(DAMA):  # stored channel c is the file's channel named DAMA[c]
            np.testing.assert_array_equal(pixels[..., c], cut(made.pixels[image_id][name], meta["crop_box"]))
        marker = DAMA.index({"microglia": "Iba1", "neuron": "NeuN", "oligodendrocyte": "Olig2",
                             "endothelial": "RECA1", "astrocyte": "S100"}[kind])
        assert pixels[16, 16, marker] > 5000 and pixels[16, 16, 0] > 5000  # its marker and DAPI at the centre
    patients = {}
    for row in pq.read_table(out / schema.MANIFEST_FILE).to_pylist():
        assert patients.setdefault(row["patient"], row["split"]) == row["split"]
    assert len(patients) == 3 and verified(out) == len(found)
    # Image ids (file names may embed a subject's ID) reach no shard, manifest or card.
    for path in out.rglob("*"):
        if path.is_file() and path.name != schema.REJECTS_FILE:
            assert b"slide0" not in path.read_bytes(), path


def test_nuclei_replace_a_missing_table_and_blocks_change_nothing(tmp_path):
    made = make_if_sample(tmp_path / "src", images=2, seed=3, tables="none", layout="ome")
    _, one = ingest(made.root, tmp_path / "one", size=24)
    summary, blocks = ingest(made.root, tmp_path / "blocks", size=24, block=64)
    assert len(multiplex_if.build_job(root=made.root, out=tmp_path / "plan", size=24, block=64).units) == 2 * 4 * 4
    centres = sorted((r["source_fingerprint"], (r["crop_box"][0] + 12, r["crop_box"][1] + 12))
                     for r in pq.read_table(one / schema.MANIFEST_FILE).to_pylist())
    assert len(centres) == sum(len(c) for c in made.cells.values())
    for image_id, cells in made.cells.items():  # every drawn cell found within 2 pixels
        fingerprint = files_fingerprint(made.root / f"{image_id}.ome.tif")
        found = np.array([c for f, c in centres if f == fingerprint])
        for x, y, _ in cells:
            assert np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) <= 2
    block_centres = sorted((r["source_fingerprint"], (r["crop_box"][0] + 12, r["crop_box"][1] + 12))
                           for r in pq.read_table(blocks / schema.MANIFEST_FILE).to_pylist())
    assert block_centres == centres and summary.rejects == 0


def test_shared_table_random_crops_and_patients(tmp_path):
    made = make_if_sample(tmp_path / "src", images=3, seed=4, tables="shared", layout="pages")
    with open(made.cells_table, "a", newline="") as fh:
        fh.write("slide01,5000,5,astrocyte\nslide09,10,10,neuron\nslide02,abc,3,neuron\n")
    patients = tmp_path / "patients.csv"
    patients.write_text("image,patient\nslide01,P1\nslide02,P1\nslide03,P2\n")
    summary, out = ingest(made.root, tmp_path / "out", crops="both", cells=made.cells_table, random_per_image=2,
                          size=32, side=40, patients=patients, test_fraction=0.5, id_salt="a-lab-secret")
    assert summary.rejects_by_reason == {"cell outside image": 1, "unknown image": 1, "unreadable cell row": 1}
    for s in samples(out):  # 40-pixel crops shrunk to 32, every channel kept
        x0, y0, x1, y1 = s["meta"]["crop_box"]
        assert (x1 - x0, y1 - y0) == (40, 40) and s["pixels"].shape == (32, 32, 7)
    rows = pq.read_table(out / schema.MANIFEST_FILE).to_pylist()
    kinds = [r["crop_kind"] for r in rows]
    assert kinds.count("cell") == 36 and kinds.count("random") == 6
    assert all(r["labels"]["cell_type"] is None for r in rows if r["crop_kind"] == "random")
    assert len({r["patient"] for r in rows}) == 2  # slide01 and slide02 are one subject
    assert len({(r["patient"], r["split"]) for r in rows}) == 2 and {r["split"] for r in rows} == {"train", "test"}


def test_a_patients_table_needs_a_secret_salt_or_public_by_name(tmp_path, monkeypatch, capsys):
    """A lab's subject IDs may be a hospital's: hashed with the public salt they could be enumerated
    back. Without --patients an image is its own patient, named by its (already public) file."""
    made = make_if_sample(tmp_path / "src", images=2, seed=4, tables="beside", layout="ome")
    patients = tmp_path / "patients.csv"
    patients.write_text("image,patient\nslide01,MRN0012345\nslide02,MRN0012346\n")
    monkeypatch.delenv(pseudonym.SALT_ENV, raising=False)
    args = ["if", str(made.root), "--no-progress", "--workers", "0", "--size", "32"]
    assert main([*args, "--out", str(tmp_path / "refused"), "--patients", str(patients)]) == EXIT_USAGE
    assert "ingest if: error: the patient IDs of --patients need a secret salt" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--out", str(tmp_path / "secret"), "--patients", str(patients), "--id-salt", "lab"]) == EXIT_OK
    assert main([*args, "--out", str(tmp_path / "public"), "--patients", str(patients), "--id-salt", "public"]) == EXIT_OK
    assert main([*args, "--out", str(tmp_path / "own")]) == EXIT_OK  # no table: the public default, as before
    seen = {name: {r["patient"] for r in pq.read_table(tmp_path / name / schema.MANIFEST_FILE).to_pylist()}
            for name in ("secret", "public")}
    assert len(seen["secret"]) == len(seen["public"]) == 2 and seen["secret"] != seen["public"]


@pytest.mark.parametrize("large", [False, True])  # large: every unit's crops travel out of band (ingest.unit_pool)
def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(made, table_crops, tmp_path, monkeypatch,
                                                                          large):
    if large:
        monkeypatch.setattr(pipeline, "LARGE_UNIT_BYTES", 0)
    _, first = table_crops
    _, second = ingest(made.root, tmp_path / "again", size=32, shard_size=10, workers=2)
    assert shard_digests(first) == shard_digests(second) and shard_digests(first)
    assert (first / schema.MANIFEST_FILE).read_bytes() == (second / schema.MANIFEST_FILE).read_bytes()


def test_unusable_images_are_rejected_and_the_job_goes_on(tmp_path, capsys):
    made = make_if_sample(tmp_path / "src", images=2, seed=5, with_defects=True)
    out = tmp_path / "out"
    code = main(["if", str(made.root), "--out", str(out), "--size", "32", "--workers", "2", "--no-progress"])
    assert code == EXIT_REJECTS and "REJECTED 3 inputs" in capsys.readouterr().out
    rejects = {r["source_path"]: r["reason"] for r in map(json.loads, (out / schema.REJECTS_FILE).read_text().splitlines())}
    assert rejects["lacks_neun.tif"] == ("missing channel: NeuN not in the file's channels ("
                                         + ", ".join(c for c in CHANNELS if c != "NeuN") + ")")
    assert rejects["unnamed.tif"].startswith("no channel names: ")
    assert rejects["corrupt.tif"].startswith("unreadable TIFF: ")
    assert pq.read_table(out / schema.MANIFEST_FILE).num_rows == 24


def test_planning_counts_the_images_it_reads_whole_unless_told_not_to(made, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDSHARDS_PROGRESS_EVERY_S", "0")  # stderr is no terminal here: a line an update
    assert main(["if", str(made.root), "--out", str(tmp_path / "a"), "--dry-run"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "plan if (fingerprint, nuclear threshold)" in err and re.search(r" (\d+)/\1 \[", err)  # ends at N/N
    assert main(["if", str(made.root), "--out", str(tmp_path / "a"), "--dry-run", "--no-progress"]) == EXIT_OK
    assert "plan if" not in capsys.readouterr().err


def test_cli_default_size_and_usage_errors(made, tmp_path, capsys):
    out = tmp_path / "ok"
    assert main(["if", str(made.root), "--out", str(out), "--crops", "random", "--random-per-image", "1",
                 "--workers", "1", "--no-progress"]) == EXIT_OK
    assert {r["height"] for r in pq.read_table(out / schema.MANIFEST_FILE).to_pylist()} == {128}  # DAMA's 128
    assert main(["if", str(made.root), "--out", str(tmp_path / "x"), "--channels", "DAPI,dapi", "--no-progress"]) == EXIT_USAGE
    assert main(["if", str(made.root), "--out", str(tmp_path / "y"), "--cells", str(tmp_path / "none.csv"),
                 "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "distinct channels" in err and "none.csv" in err


def test_a_killed_two_worker_run_of_large_units_resumes_to_the_same_shards(tmp_path):
    """The path a killed run is most likely to be in for `ingest if`: units of several MB, committed
    on the writing process's thread while two worker processes send the next ones out of band.
    Killed part-way (the whole process group, workers included), the rerun resumes and ends with
    the shards, manifest and card statistics of an uninterrupted run."""
    made = make_if_sample(tmp_path / "src", images=8, shape=(384, 384), cells_per_image=30, seed=4, layout="ome",
                          tables="beside")
    cmd = [sys.executable, "-m", "ingest.cli", "if", str(made.root), "--shard-size", "25", "--workers", "2",
           "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run([*cmd, "--out", str(reference)], cwd=PROJECT, check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--out", str(out)], cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    group = os.getpgid(proc.pid)
    deadline = time.monotonic() + 60
    try:  # 2 ms slices of the whole group, read between them, until 2 of the 8 units are logged
        while logged_units(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
            os.killpg(group, signal.SIGCONT)
            time.sleep(0.002)
            os.killpg(group, signal.SIGSTOP)
    finally:
        os.killpg(group, signal.SIGKILL)
        proc.wait()
    assert 2 <= logged_units(out) < 8 and not (out / schema.CARD_FILE).exists()
    crop_bytes = 128 * 128 * 7 * 2  # --size 128, seven channels of uint16
    unit_crops = [len(r.sidecar["samples"]) for r in read_progress(out / schema.STAGING_DIR)[0]]
    assert min(unit_crops) * crop_bytes >= pipeline.LARGE_UNIT_BYTES  # the large-unit path, not the inline one
    done = subprocess.run([*cmd, "--out", str(out)], cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == EXIT_OK, done.stderr
    assert "resumed" in done.stdout
    assert shard_digests(out) == shard_digests(reference)
    assert (out / schema.MANIFEST_FILE).read_bytes() == (reference / schema.MANIFEST_FILE).read_bytes()
    assert (out / schema.CARD_FILE).read_bytes() == (reference / schema.CARD_FILE).read_bytes()


def test_ctrl_c_while_planning_reads_no_further_image(tmp_path, monkeypatch):
    """Planning reads every image whole (fingerprint, nuclear threshold) in worker processes; on
    Ctrl-C or SIGTERM the images not yet started must not be read: a slide collection takes hours."""
    made = make_if_sample(tmp_path / "src", images=16, seed=3, layout="ome", tables="none")
    measure, started = if_plan_reads.measure_image, tmp_path / "started"
    started.mkdir()

    def slow_measure(image, chunks):  # in a worker process: what it started is counted in files
        (started / image.path.name).touch()
        if len(list(started.iterdir())) == 3:
            os.kill(os.getppid(), signal.SIGINT)  # Ctrl-C reaches the writing process (workers ignore it)
        time.sleep(0.05)
        return measure(image, chunks)

    monkeypatch.setattr(if_plan_reads, "measure_image", slow_measure)
    with pytest.raises(KeyboardInterrupt):
        multiplex_if.build_job(root=made.root, out=tmp_path / "out", workers=2, progress=False)
    time.sleep(0.2)  # any worker left would go on reading
    assert len(list(started.iterdir())) < 8  # the images the 2 workers had in hand; not the other ten or so
