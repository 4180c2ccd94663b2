"""`shards preview` writes a contact sheet whose tiles show the samples, 16-bit ones windowed."""

from __future__ import annotations

import math

import cv2
import numpy as np

from shards import preview
from shards.cli import main


def _tiles(sheet: np.ndarray, cols: int, count: int) -> list[np.ndarray]:
    """The image squares (captions cut off) of the first `count` tiles."""
    tile_h = preview.TILE + preview.CAPTION_HEIGHT
    return [sheet[r * tile_h:r * tile_h + preview.TILE, c * preview.TILE:(c + 1) * preview.TILE]
            for r, c in (divmod(i, cols) for i in range(count))]


def test_preview_of_16bit_set_has_expected_size_and_content(shard_set, capsys):
    out = shard_set / "sheet.png"
    assert main(["preview", str(shard_set), "--split", "val", "-n", "16", "--cols", "3", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    sheet = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    # val holds 2 samples: one row of 3 tiles, the last empty
    assert sheet.shape == (preview.TILE + preview.CAPTION_HEIGHT, 3 * preview.TILE, 3)
    first, second, empty = _tiles(sheet, 3, 3)
    for tile in (first, second):
        assert tile.std() > 20  # windowed noise, not a black or saturated square
        # the mask contour is drawn in MASK_COLOUR, which grey pixels never are
        assert np.all(tile == preview.MASK_COLOUR, axis=2).any()
    assert not empty.any()
    captions = sheet[preview.TILE:, :2 * preview.TILE]
    assert (captions > 200).any()  # caption text is drawn


def test_default_output_is_in_root_and_seed_is_repeatable(shard_set, capsys):
    assert main(["preview", str(shard_set), "-n", "4"]) == 0
    path = shard_set / "preview.png"
    assert capsys.readouterr().out.strip() == str(path)
    first = path.read_bytes()
    sheet = cv2.imread(str(path))
    assert sheet.shape == (2 * (preview.TILE + preview.CAPTION_HEIGHT), 2 * preview.TILE, 3)
    assert main(["preview", str(shard_set), "-n", "4"]) == 0
    assert path.read_bytes() == first
    assert not [p for p in shard_set.iterdir() if p.name.startswith(".")]  # no temp file left


def test_every_member_kind_renders(shard_set, capsys):
    """train holds 16-bit, RGB and 7-channel samples; --channel picks one of the seven."""
    out = shard_set / "all.png"
    assert main(["preview", str(shard_set), "-n", "6", "--channel", "6", "--tile", "64", "--out", str(out)]) == 0
    sheet = cv2.imread(str(out))
    cols = math.ceil(math.sqrt(6))
    assert sheet.shape == (2 * (64 + preview.CAPTION_HEIGHT), cols * 64, 3)


def test_channel_out_of_range_is_a_clear_error(shard_set, capsys):
    assert main(["preview", str(shard_set), "-n", "6", "--channel", "7"]) == 2
    assert "has 7 channels" in capsys.readouterr().err


def test_caption_names_key_labels_and_crop_kind(samples):
    meta = samples[1][0]  # train01abcdef: MALIGNANT, c1, lesion
    assert preview.caption_lines(meta) == ("train01abcde", "MALIGNANT / c1 / lesion")
