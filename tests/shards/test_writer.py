"""Round trip of the format: ShardWriter + manifest + card written as ingest writes them, read back
through plain webdataset and plain tarfile, as a trainer and an auditor would."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import webdataset as wds

from shards import codecs, schema
from shards.card import read_card, shard_records
from shards.manifest import read_manifest
from shards.writer import ShardWriter, file_sha256


def _by_key(samples):
    return {meta.key: (meta, pixels, mask) for meta, pixels, mask in samples}


def test_webdataset_reads_back_every_sample(shard_set, samples):
    expected = _by_key(samples)
    card = read_card(shard_set)
    urls = [str(shard_set / r["path"]) for r in shard_records(card)]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        key = sample["__key__"]
        meta, pixels, mask = expected[key]
        ext = schema.pixel_member(meta.channels, meta.dtype)
        members = set(sample) - {"__key__", "__url__", "__local_path__"}
        assert members == {ext, "json"} | ({"mask.png"} if mask is not None else set())
        decoded = codecs.decode_pixels(ext, sample[ext])
        assert decoded.dtype == pixels.dtype
        np.testing.assert_array_equal(decoded, pixels)
        assert schema.SampleMeta.from_json_bytes(sample["json"]) == meta
        if mask is not None:
            np.testing.assert_array_equal(codecs.decode_mask(sample["mask.png"]), mask)
        seen[key] = sample["__url__"]
    assert set(seen) == set(expected)


def test_tarfile_member_names_and_manifest_agree(shard_set, samples):
    expected = _by_key(samples)
    manifest = {row["key"]: row for row in read_manifest(shard_set).to_pylist()}
    assert set(manifest) == set(expected)
    card = read_card(shard_set)
    assert {split: entry["samples"] for split, entry in card["splits"].items()} == {"train": 6, "val": 2, "test": 2}
    for record in shard_records(card):
        path = shard_set / record["path"]
        assert file_sha256(path) == record["sha256"] and path.stat().st_size == record["bytes"]
        with tarfile.open(path) as tar:
            names = tar.getnames()
        keys = {name.split(".", 1)[0] for name in names}
        assert len(keys) == record["samples"]
        for key in keys:
            meta, pixels, mask = expected[key]
            row = manifest[key]
            assert row["shard"] == record["path"] and row["split"] == meta.split
            assert (row["height"], row["width"], row["channels"], row["dtype"]) == \
                (pixels.shape[0], pixels.shape[1], meta.channels, str(pixels.dtype))
            assert {k: v for k, v in row["labels"].items() if v is not None} == meta.labels
            assert f"{key}.json" in names and (f"{key}.mask.png" in names) == (mask is not None)
    assert manifest["mif00cells"]["channels"] == 7 and manifest["rgb00photo"]["dtype"] == "uint8"


def test_same_samples_give_byte_identical_shards(tmp_path, samples, build_shard_set):
    first = build_shard_set(tmp_path / "a", samples)
    second = build_shard_set(tmp_path / "b", samples)
    for record in shard_records(read_card(first)):
        assert (first / record["path"]).read_bytes() == (second / record["path"]).read_bytes()
    assert (first / schema.CARD_FILE).read_bytes() == (second / schema.CARD_FILE).read_bytes()


def test_writer_that_raises_leaves_no_partial_shard(tmp_path, samples, sample_members):
    train = [s for s in samples if s[0].split == "train"]
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, "train", max_samples=2) as writer:
            for meta, pixels, mask in train[:3]:  # the third sample opens a second shard
                writer.write(sample_members(meta, pixels, mask))
            raise RuntimeError("ingest failed mid-shard")
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["shard-000000.tar"]
    with tarfile.open(tmp_path / "train" / "shard-000000.tar") as tar:
        assert len({name.split(".", 1)[0] for name in tar.getnames()}) == 2
