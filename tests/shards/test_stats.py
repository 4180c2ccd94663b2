"""`shards stats`: per-channel mean/std of the train split, computed from the shards and written
into the card (atomically, nothing else changed), refused for a set that mixes channel counts."""

from __future__ import annotations

import json

import numpy as np

from shards import schema
from shards.card import read_card, write_card
from shards.cli import main
from shards.stream import StreamSource, make_loader


def _without_stats(root):
    card = read_card(root)
    card["pixel_stats"] = None
    write_card(root, card)
    return card


def test_stats_are_computed_from_the_train_shards_and_written_into_the_card(tmp_path, samples, build_shard_set,
                                                                             capsys):
    grey = [s for s in samples if s[0].channels == 1]
    root = build_shard_set(tmp_path / "set", grey)
    before = _without_stats(root)
    assert main(["stats", str(root)]) == 0
    card = read_card(root)
    train = np.concatenate([pixels.ravel() for meta, pixels, _ in grey if meta.split == "train"]).astype(np.float64)
    stats = card.pop("pixel_stats")
    assert stats == {"split": "train", "dtype": "uint16", "channels": 1, "channel_names": None,
                     "mean": [round(train.mean(), 4)], "std": [round(train.std(), 4)], "pixels": train.size}
    assert card == {k: v for k, v in before.items() if k != "pixel_stats"}
    assert not list(root.glob(".*tmp*"))
    loader, steps = make_loader([StreamSource(root)], batch_size=2, image_size=16, augment="mae")
    assert len(list(loader)) == steps

    capsys.readouterr()
    (root / schema.CARD_FILE).write_text(json.dumps(read_card(root) | {"pixel_stats": {"mean": [1.0], "std": [2.0]}}))
    assert main(["stats", str(root)]) == 0  # already there: kept, and said so
    assert "already has pixel_stats" in capsys.readouterr().out
    assert read_card(root)["pixel_stats"]["mean"] == [1.0]
    assert main(["stats", str(root), "--force"]) == 0
    assert read_card(root)["pixel_stats"] == stats


def test_a_set_mixing_channel_counts_is_refused(shard_set, capsys):
    _without_stats(shard_set)
    assert main(["stats", str(shard_set)]) == 2
    assert "one set, one kind" in capsys.readouterr().err
    assert read_card(shard_set)["pixel_stats"] is None


def test_a_folder_that_is_not_a_shard_set(tmp_path, capsys):
    assert main(["stats", str(tmp_path)]) == 2
    assert "is not a readable shard set" in capsys.readouterr().err
