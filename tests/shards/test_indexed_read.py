"""Reading by the manifest's member spans (shards.indexed_read) on real tar shards: the spans
ingest writes are where tarfile finds the members, the stream gives the same batches by spans as
through the tar, and a manifest that does not describe its shards fails loudly, naming the sample,
in the stream and in `shards verify`."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from shards import schema, verify
from shards.card import read_card
from shards.manifest import read_manifest
from shards.stream import SampleError, StreamSource, make_loader, warn_and_skip
from tests.shards.test_stream import write_set


def test_ingest_writes_spans_where_tarfile_finds_the_pixel_and_json_members(cbis_shards):
    rows = read_manifest(cbis_shards).to_pylist()
    assert rows and all(isinstance(r["pixels_offset"], int) for r in rows)
    found = {}
    for shard in sorted({r["shard"] for r in rows}):
        with tarfile.open(cbis_shards / shard) as tar:
            found.update({(shard, m.name): (m.offset_data, m.size) for m in tar})
    for row in rows:
        pixels = schema.pixel_member(row["channels"], row["dtype"])
        assert found[row["shard"], f"{row['key']}.{pixels}"] == (row["pixels_offset"], row["pixels_size"])
        assert found[row["shard"], f"{row['key']}.json"] == (row["json_offset"], row["json_size"])


def _epochs(loader, epochs=2):
    out = []
    for epoch in range(epochs):
        loader.dataset.set_epoch(epoch)
        out += [batch for batch in loader]
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("crop_kinds", [None, ("lesion",)])
def test_spans_and_tar_give_the_same_batches(cbis_shards, num_workers, crop_kinds):
    made = {}
    for by_index in (True, False):
        loader, steps = make_loader([StreamSource(cbis_shards, crop_kinds=crop_kinds)], batch_size=2, image_size=48,
                                    num_workers=num_workers, seed=3, augment="mae", by_index=by_index)
        assert (loader.dataset.sources[0].index is not None) == by_index
        made[by_index] = (steps, _epochs(loader))
    (steps, spans), (tar_steps, tar) = made[True], made[False]
    assert steps == tar_steps and len(spans) == 2 * steps
    assert [b["key"] for b in spans] == [b["key"] for b in tar]
    assert len({k for b in spans for k in b["key"]}) > 2  # several samples, not one batch's
    for a, b in zip(spans, tar):
        assert torch.equal(a["image"], b["image"])
        assert a["crop_kind"] == b["crop_kind"] and a["labels"] == b["labels"]
        assert (a["resize_from"] == b["resize_from"]).all() and (a["flip"] == b["flip"]).all()


def test_without_labels_the_json_is_not_read_and_batches_carry_none(cbis_shards, tmp_path):
    loader, _ = make_loader([StreamSource(cbis_shards)], batch_size=2, image_size=48, labels=False)
    with_labels, _ = make_loader([StreamSource(cbis_shards)], batch_size=2, image_size=48)
    batches, labelled = list(loader), list(with_labels)
    assert "labels" not in batches[0] and [b["key"] for b in batches] == [b["key"] for b in labelled]
    assert all(isinstance(labels, dict) and labels for b in labelled for labels in b["labels"])


def _set_with_spans(tmp_path: Path) -> Path:
    return write_set(tmp_path / "set", [np.full((8, 8), 1000 + i, np.uint16) for i in range(6)], [3, 3])


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_damaged_pixels_at_their_span_fail_the_png_check_naming_the_sample(tmp_path):
    root = _set_with_spans(tmp_path)
    row = next(r for r in read_manifest(root).to_pylist() if r["key"] == "toy0004")
    # the last IDAT chunk's CRC: the 4 bytes before the 12-byte IEND chunk
    _overwrite(root / row["shard"], row["pixels_offset"] + row["pixels_size"] - 16, b"\xff" * 4)
    loader, _ = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none")
    assert loader.dataset.sources[0].index is not None
    with pytest.raises(SampleError, match=r"train/shard-000001.tar: sample toy0004: PNG member does not decode"):
        list(loader)


def _shift_spans(root: Path, key: str, by: int) -> None:
    path = root / schema.MANIFEST_FILE
    table = pq.read_table(path)
    rows = table.to_pylist()
    for row in rows:
        if row["key"] == key:
            row["pixels_offset"] += by
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)


def test_a_manifest_that_does_not_describe_its_shard_is_named_and_can_be_skipped(tmp_path):
    root = _set_with_spans(tmp_path)
    _shift_spans(root, "toy0001", 512)
    loader, _ = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none")
    with pytest.raises(SampleError, match=r"sample toy0001: the tar header before byte \d+ is not toy0001.png "
                                          r"of \d+ bytes, as the manifest says.*shards verify"):
        list(loader)
    loader, steps = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none", shuffle_buffer=1,
                                samples_per_epoch=5, handler=warn_and_skip)
    with pytest.warns(UserWarning, match="toy0001"):
        batches = list(loader)
    assert len(batches) == steps == 5 and sum(b["skipped"] for b in batches) == 1
    assert "toy0001" not in {k for b in batches for k in b["key"]}
    bad, _, _ = verify.verify(root, read_card(root), workers=1)
    assert [name for name, _ in bad] == ["train/shard-000000.tar"]
    (problem,) = [p for p in bad[0][1] if "manifest places" in p]
    stated, size, actual, actual_size = map(int, re.fullmatch(
        r"toy0001: manifest places its pixels at byte (\d+) \((\d+) bytes\), "
        r"the tar's .png member is at byte (\d+) \((\d+) bytes\)", problem).groups())
    assert stated == actual + 512 and size == actual_size


def test_a_truncated_shard_is_named_by_the_sample_it_cuts(tmp_path):
    root = _set_with_spans(tmp_path)
    row = next(r for r in read_manifest(root).to_pylist() if r["key"] == "toy0005")
    with open(root / row["shard"], "r+b") as fh:
        fh.truncate(row["pixels_offset"] + 10)
    loader, _ = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none")
    with pytest.raises(SampleError, match=r"sample toy0005: the shard ends before the .png member"):
        list(loader)


def test_a_manifest_and_card_that_disagree_on_a_shard_are_refused(tmp_path):
    root = _set_with_spans(tmp_path)
    path = root / schema.MANIFEST_FILE
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)  # the manifest loses a sample of shard 0
    with pytest.raises(ValueError, match=r"manifest lists 2 samples in train/shard-000000.tar, dataset.json 3"):
        make_loader([StreamSource(root)], batch_size=1, image_size=8)


def test_a_set_on_a_uri_and_a_set_without_spans_stream_through_the_tar(tmp_path):
    root = _set_with_spans(tmp_path)
    old = write_set(tmp_path / "old", [np.full((8, 8), i, np.uint16) for i in range(6)], [3, 3], spans=False)
    assert schema.MEMBER_SPAN_COLUMNS[0] not in read_manifest(old).column_names
    for source in (StreamSource(root.as_uri()), StreamSource(old)):
        loader, steps = make_loader([source], batch_size=2, image_size=8, augment="none")
        assert loader.dataset.sources[0].index is None
        assert len(list(loader)) == steps == 3


def test_a_shuffle_over_more_shards_than_stay_open_reads_every_sample_and_leaks_no_descriptor(tmp_path, monkeypatch):
    from shards import indexed_read

    monkeypatch.setattr(indexed_read, "_OPEN_SHARDS", 2)
    # 8 shards of 3 in one shuffle buffer: read in an order that keeps most of them open at once
    root = write_set(tmp_path / "set", [np.full((8, 8), 100 + i, np.uint16) for i in range(24)], [3] * 8)
    made = {}
    for by_index in (True, False):
        loader, steps = make_loader([StreamSource(root)], batch_size=3, image_size=8, augment="none", seed=5,
                                    by_index=by_index)
        made[by_index] = _epochs(loader, 3)
    assert [b["key"] for b in made[True]] == [b["key"] for b in made[False]]
    assert all(sorted(k for b in made[True][e * 8:(e + 1) * 8] for k in b["key"]) == [f"toy{i:04d}" for i in range(24)]
               for e in range(3))
    assert _open_under(root) == []


def _open_under(root: Path) -> list[str]:
    """Files under root this process holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if target.startswith(str(root)):
            held.append(target)
    return held


def test_reading_leaves_the_listed_samples_alone_so_the_shuffle_buffer_holds_no_pixels(tmp_path):
    """The shuffle buffer still holds what it hands out while it empties its tail; read members put
    into those dicts stayed alive to the end of the pass (a 7-channel crop set's worker grew by
    the whole buffer's pixels)."""
    from shards import indexed_read
    from shards.sample_stages import raise_sample_error

    root = _set_with_spans(tmp_path)
    index = indexed_read.shard_index(str(root), "train", None)
    listed = list(indexed_read.indexed_samples(sorted(index), index))
    snapshot = [dict(s) for s in listed]
    read = list(indexed_read.read_indexed(iter(listed), index, raise_sample_error, labels=True))
    assert listed == snapshot
    assert [s["__key__"] for s in read] == [f"toy{i:04d}" for i in range(6)]
    assert all(bytes(s["png"][:8]) == b"\x89PNG\r\n\x1a\n" and s["meta"].key == s["__key__"] for s in read)


def test_a_manifest_with_empty_spans_is_refused_with_the_fix(tmp_path):
    root = _set_with_spans(tmp_path)
    path = root / schema.MANIFEST_FILE
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[2]["pixels_offset"] = None
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)
    with pytest.raises(ValueError, match=r"some member spans are empty; `shards index .* --force` rewrites them"):
        make_loader([StreamSource(root)], batch_size=1, image_size=8)


def test_verify_names_a_sample_without_its_json_instead_of_failing_on_its_spans(tmp_path, rewrite_shard):
    root = _set_with_spans(tmp_path)
    path = root / "train/shard-000000.tar"
    with tarfile.open(path) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar if info.name != "toy0001.json"]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data))
    rewrite_shard(root, "train/shard-000000.tar", lambda name, data: data)  # the card's size and sha256
    bad, _, _ = verify.verify(root, read_card(root), workers=1)
    problems = dict(bad)["train/shard-000000.tar"]
    assert "toy0001: no json member" in problems
