"""Round trip of the format: ShardWriter + manifest + card written as ingest writes them, read back
through plain webdataset and plain tarfile, as a trainer and an auditor would."""

from __future__ import annotations

import tarfile
import threading

import numpy as np
import pytest
import webdataset as wds

from shards import codecs, schema
from shards import writer as writer_module
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


def _bytes_sample(i: int, size: int) -> dict:
    return {"__key__": f"s{i:03d}", "png": bytes([i % 251]) * size, "json": b"{}"}


def test_sha256_hashed_on_the_thread_matches_the_file(tmp_path, monkeypatch):
    """Batches handed to the hashing thread (tiny here, so every write crosses one) keep the
    bytes' order, and a caller's buffer changed after write() does not change the hash."""
    monkeypatch.setattr(writer_module, "HASH_BATCH_BYTES", 1000)
    monkeypatch.setattr(writer_module, "HASH_BACKLOG_BYTES", 3000)
    with ShardWriter(tmp_path, "train", max_samples=4) as writer:
        for i in range(10):
            sample = _bytes_sample(i, 100 + 450 * i)
            if i % 3 == 1:
                buffer = bytearray(sample["png"])
                sample["png"] = buffer
                writer.write(sample)
                buffer[:] = b"\xff" * len(buffer)  # after the write: the shard holds the old bytes
            elif i % 3 == 2:
                sample["png"] = memoryview(sample["png"])
                writer.write(sample)
            else:
                writer.write(sample)
    assert len(writer.records) == 3
    for record in writer.records:
        assert record.sha256 == file_sha256(tmp_path / record.path)
    with tarfile.open(tmp_path / "train" / "shard-000000.tar") as tar:
        assert tar.extractfile("s001.png").read() == bytes([1]) * 550


def test_writing_waits_when_the_hashing_thread_falls_behind(tmp_path, monkeypatch):
    """At most HASH_BACKLOG_BYTES wait for the thread: a writer that outruns it blocks rather than
    holding every sample's bytes in memory."""
    monkeypatch.setattr(writer_module, "HASH_BATCH_BYTES", 1000)
    monkeypatch.setattr(writer_module, "HASH_BACKLOG_BYTES", 3000)
    release = threading.Event()
    hash_all = writer_module._hash_all

    def slow_hash(digest, parts):
        release.wait(10)
        hash_all(digest, parts)

    monkeypatch.setattr(writer_module, "_hash_all", slow_hash)
    written, records = [], []

    def write_all():
        with ShardWriter(tmp_path, "train") as writer:
            for i in range(8):
                writer.write(_bytes_sample(i, 1500))
                written.append(i)
        records.extend(writer.records)

    thread = threading.Thread(target=write_all)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive() and len(written) < 8  # blocked on the backlog, not done
    release.set()
    thread.join(10)
    assert written == list(range(8))
    assert [r.sha256 for r in records] == [file_sha256(tmp_path / "train" / "shard-000000.tar")]
