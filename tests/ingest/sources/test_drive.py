"""`ingest drive` end to end: the real DRIVE files first (LZW RGB TIFF, grey and palette GIFs),
then generated DRIVE trees in the real layout (made-up pixels) for counts, splits, rejects,
determinism and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import xxhash
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from ingest.cli import EXIT_OK, EXIT_REJECTS, EXIT_USAGE, main
from ingest.pipeline import run_job
from ingest.sample_data.drive import make_drive_sample
from ingest.sources import drive
from shards import codecs, schema
from shards.verify import verify


def ingest(root: Path, out: Path, **kw):
    return run_job(drive.build_job(root=root, out=out, progress=False, **kw)), out


def samples(out: Path) -> list[dict]:
    """Every sample of every split, read with plain webdataset, decoded."""
    found = []
    for split in schema.SPLITS:
        urls = sorted(str(p) for p in (out / split).glob("shard-*.tar"))
        for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False) if urls else []:
            found.append({
                "meta": json.loads(sample["json"]), "split": split,
                "rgb": codecs.decode_pixels("png", sample["png"]),
                "mask": codecs.decode_mask(sample["mask.png"]), "fov": codecs.decode_mask(sample["fov.png"]),
            })
    return found


def shard_digests(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*/shard-*.tar"))}


def padded_square(image: np.ndarray) -> np.ndarray:
    """DRIVE's 584 x 565 image padded by hand to 584 x 584, centred (10 columns left, 9 right)."""
    h, w = image.shape[:2]
    out = np.zeros((h, h) + image.shape[2:], image.dtype)
    left = (w - h) // 2  # -10
    out[:, -left : -left + w] = image
    return out


# ---- the real files ----

def test_real_drive_whole_images_keep_rgb_and_masks_exactly(shared_data, tmp_path):
    """At --size 584 nothing is resampled: the stored pixels are the TIFF's RGB and the GIFs'
    masks (0/255), padded to square. ROOT may be DRIVE's parent."""
    real = shared_data / "drive"
    summary, out = ingest(real, tmp_path / "out", size=584)
    assert summary.rejects == 0 and summary.samples == {"train": 1, "val": 1, "test": 1}  # val: one of the two
    found = samples(out)
    for s in found:
        meta = s["meta"]
        folder = "training" if meta["official_split"] == "train" else "test"
        number = next(p.name.split("_")[0] for p in (real / "DRIVE" / folder / "images").iterdir()
                      if xxhash.xxh3_128_hexdigest(p.read_bytes()) == meta["source_fingerprint"])
        source = np.asarray(Image.open(real / "DRIVE" / folder / "images" / f"{number}_{folder}.tif"))
        manual = np.asarray(Image.open(real / "DRIVE" / folder / "1st_manual" / f"{number}_manual1.gif"))
        fov = np.asarray(Image.open(real / "DRIVE" / folder / "mask" / f"{number}_{folder}_mask.gif"))
        assert source.shape == (584, 565, 3) and meta["crop_box"] == [-10, 0, 574, 584]
        np.testing.assert_array_equal(s["rgb"], padded_square(source))
        np.testing.assert_array_equal(s["mask"], padded_square((manual > 0).astype(np.uint8) * 255))
        np.testing.assert_array_equal(s["fov"], padded_square((fov > 0).astype(np.uint8) * 255))
        assert s["rgb"][..., 0].mean() > s["rgb"][..., 2].mean()  # a fundus is red: RGB order kept
        assert meta["has_mask"] and meta["has_fov"] and meta["channel_names"] == ["red", "green", "blue"]
        assert meta["extra"]["has_second_manual"] == (folder == "test")
        inside = s["fov"] > 0
        assert meta["labels"]["vessel_fraction"] == round(float((s["mask"][inside] > 0).mean()), 4)
    problems, _, count = verify(out, json.loads((out / schema.CARD_FILE).read_text()), workers=1)
    assert problems == [] and count == 3


def test_real_palette_gif_second_manual(shared_data, tmp_path):
    """01_manual2.gif holds palette indices 0/1: stored as 0/255, vessels where the index is 1."""
    real = shared_data / "drive" / "DRIVE"
    summary, out = ingest(real, tmp_path / "out", size=584, manual="2nd")
    assert summary.samples == {"test": 1} and summary.rejects_by_reason == {"missing 2nd manual vessel mask": 2}
    index = np.asarray(Image.open(real / "test" / "2nd_manual" / "01_manual2.gif"))
    assert set(np.unique(index)) == {0, 1}
    (s,) = samples(out)
    np.testing.assert_array_equal(s["mask"], padded_square(index.astype(np.uint8) * 255))
    first = padded_square(np.asarray(Image.open(real / "test" / "1st_manual" / "01_manual1.gif")) > 0)
    agree = ((s["mask"] > 0) == first).mean()
    assert 0.9 < agree < 1.0  # two observers: mostly the same vessels, not identical
    rejects = [json.loads(line) for line in (out / schema.REJECTS_FILE).read_text().splitlines()]
    assert sorted(r["source_path"] for r in rejects) == ["training/2nd_manual/21_manual2.gif",
                                                         "training/2nd_manual/22_manual2.gif"]


def test_real_random_patches_lie_in_the_fov(shared_data, tmp_path):
    summary, out = ingest(shared_data / "drive", tmp_path / "out", crops="random", random_per_image=5)
    found = samples(out)
    assert len(found) == 15 and summary.rejects == 0
    for s in found:
        x0, y0, x1, y1 = s["meta"]["crop_box"]
        assert (x1 - x0, y1 - y0) == (64, 64) and 0 <= x0 and x1 <= 565 and 0 <= y0 and y1 <= 584
        assert s["rgb"].shape == (64, 64, 3) and (s["fov"] > 0).mean() >= 0.9


# ---- generated DRIVE trees ----

@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_drive_sample(tmp_path_factory.mktemp("drive"), train=6, test=2, seed=1, shape=(146, 141)).root


@pytest.fixture(scope="module")
def whole(tree, tmp_path_factory):
    return ingest(tree.parent, tmp_path_factory.mktemp("out") / "whole", size=96, val_fraction=0.34, shard_size=3)


def test_counts_splits_and_members(tree, whole):
    summary, out = whole
    assert summary.rejects == 0 and summary.samples == {"train": 4, "val": 2, "test": 2}
    found = samples(out)
    for s in found:
        assert s["rgb"].shape == (96, 96, 3) and s["rgb"].dtype == np.uint8
        assert s["mask"].shape == s["fov"].shape == (96, 96)
        assert set(np.unique(s["mask"])) == {0, 255} and set(np.unique(s["fov"])) == {0, 255}
        assert s["meta"]["crop_kind"] == "whole" and 0 < s["meta"]["labels"]["vessel_fraction"] < 0.5
        assert (s["split"] == "test") == (s["meta"]["official_split"] == "test")
    assert len({s["meta"]["patient"] for s in found}) == 8  # one patient per image
    card = json.loads((out / schema.CARD_FILE).read_text())
    assert card["pixel_stats"]["channel_names"] == ["red", "green", "blue"]
    problems, _, count = verify(out, card, workers=1)
    assert problems == [] and count == 8


def test_random_patches_are_seeded_and_inside_the_fov(tree, tmp_path):
    kw = dict(crops="random", size=32, random_side=40, random_per_image=6, min_fov=0.95)
    summary, a = ingest(tree, tmp_path / "a", **kw)
    _, b = ingest(tree, tmp_path / "b", **kw)
    _, c = ingest(tree, tmp_path / "c", seed=7, **kw)
    rows = pq.read_table(a / schema.MANIFEST_FILE).to_pylist()
    assert len(rows) == 8 * 6 - json.loads((a / schema.CARD_FILE).read_text())["notes"]["random_crop_shortfall"]
    for s in samples(a):
        x0, y0, x1, y1 = s["meta"]["crop_box"]
        assert x1 - x0 == 40 and s["rgb"].shape == (32, 32, 3)  # 40-pixel patches resized to 32
        assert (s["fov"] > 0).mean() > 0.85  # 0.95 of the source patch, give or take the resize
    assert shard_digests(a) == shard_digests(b)
    assert crop_boxes(a) != crop_boxes(c)


def crop_boxes(out: Path) -> list[list[int]]:
    return sorted(r["crop_box"] for r in pq.read_table(out / schema.MANIFEST_FILE).to_pylist())


def test_same_inputs_give_byte_identical_shards_whatever_the_worker_count(tree, whole, tmp_path):
    _, first = whole
    _, second = ingest(tree.parent, tmp_path / "again", size=96, val_fraction=0.34, shard_size=3, workers=2)
    assert shard_digests(first) == shard_digests(second) and shard_digests(first)
    assert (first / schema.MANIFEST_FILE).read_bytes() == (second / schema.MANIFEST_FILE).read_bytes()


def test_missing_and_broken_files_are_rejected_by_name(tmp_path, capsys):
    made = make_drive_sample(tmp_path / "bad", train=5, test=1, seed=2, shape=(146, 141), with_defects=True)
    code = main(["drive", str(made.root), "--out", str(tmp_path / "out"), "--size", "64", "--workers", "2",
                 "--no-progress"])
    assert code == EXIT_REJECTS and "REJECTED 4 inputs" in capsys.readouterr().out
    rejects = {r["source_path"]: r["reason"] for r in
               map(json.loads, (tmp_path / "out" / schema.REJECTS_FILE).read_text().splitlines())}
    assert rejects["training/mask/21_training_mask.gif"].startswith("missing FOV mask: ")
    assert rejects["training/1st_manual/22_manual1.gif"].startswith("missing 1st manual vessel mask: ")
    assert rejects["training/images/23_training.tif"].startswith("undecodable TIFF: ")
    assert rejects["training/images/24_training.tif"].startswith("not a binary mask: training/1st_manual/24_manual1.gif")
    assert pq.read_table(tmp_path / "out" / schema.MANIFEST_FILE).num_rows == 2  # 25_training and 01_test


def test_cli_defaults_and_usage_errors(tree, tmp_path, capsys):
    assert main(["drive", str(tree), "--out", str(tmp_path / "ok"), "--workers", "1", "--no-progress"]) == EXIT_OK
    rows = pq.read_table(tmp_path / "ok" / schema.MANIFEST_FILE).to_pylist()
    assert {r["height"] for r in rows} == {512}  # TOWER's 512 x 512 (paper 001, §4.1)
    assert main(["drive", str(tmp_path), "--out", str(tmp_path / "none"), "--no-progress"]) == EXIT_USAGE
    assert "training/images" in capsys.readouterr().err


def _gif(path: Path, values: np.ndarray, palette: bool) -> Path:
    img = Image.fromarray(values, mode="L")
    if palette:  # index 0 black, index 1 white, as one real DRIVE GIF has it
        img = Image.frombytes("P", img.size, values.tobytes())
        img.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)
    img.save(path)
    return path


@pytest.mark.parametrize("palette", [False, True])
def test_gif_masks_read_as_0_255_whatever_their_levels(tmp_path, palette):
    marked = np.zeros((6, 5), np.uint8)
    marked[1:3, 2:4] = 1 if palette else 255
    mask = drive.read_gif_mask(_gif(tmp_path / "m.gif", marked, palette), "m.gif", (6, 5))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask > 0, marked > 0)
    full = drive.read_gif_mask(_gif(tmp_path / "f.gif", np.full((6, 5), 255, np.uint8), False), "f.gif", (6, 5))
    assert (full == 255).all()
    with pytest.raises(drive.MaskError, match="empty mask: z.gif"):
        drive.read_gif_mask(_gif(tmp_path / "z.gif", np.zeros((6, 5), np.uint8), palette), "z.gif", (6, 5))
    with pytest.raises(drive.MaskError, match="mask size mismatch"):
        drive.read_gif_mask(tmp_path / "m.gif", "m.gif", (5, 6))


def test_a_mask_of_three_grey_levels_is_refused_with_the_count(tmp_path):
    levels = np.zeros((6, 5), np.uint8)
    levels[0, :] = 128
    levels[1, :] = 255
    with pytest.raises(drive.MaskError, match="not a binary mask: t.gif holds 3 grey levels"):
        drive.read_gif_mask(_gif(tmp_path / "t.gif", levels, False), "t.gif", (6, 5))


def test_vessel_fraction_counts_vessel_pixels_inside_the_field_of_view():
    rng = np.random.default_rng(3)
    vessels = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(40, 30))  # any non-zero value marks
    fov = rng.choice(np.array([0, 2, 4], np.uint8), size=(40, 30))  # 2 & 1 == 0: not a bitwise and
    inside = fov > 0
    assert drive.vessel_fraction(vessels, fov) == round(float((vessels[inside] > 0).mean()), 4)
    assert drive.vessel_fraction(vessels, np.zeros_like(fov)) is None
