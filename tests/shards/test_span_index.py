"""`shards index`: a set ingested before member spans gets them, equal to what ingest writes, and
then streams by offset with the same batches; a manifest naming members its shards lack is
refused with nothing written."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from shards import schema
from shards.cli import main
from shards.manifest import read_manifest
from shards.stream import StreamSource, make_loader
from tests.shards.test_stream import write_set


def _images(n):
    return [np.full((8, 8), 50 * i, np.uint16) for i in range(n)]


def test_an_old_set_gets_the_spans_ingest_writes_and_then_streams_by_offset(tmp_path, capsys):
    new = write_set(tmp_path / "new", _images(7), [3, 4])
    old = write_set(tmp_path / "old", _images(7), [3, 4], spans=False)
    before, _ = make_loader([StreamSource(old)], batch_size=2, image_size=8, augment="mae", seed=1)
    assert before.dataset.sources[0].index is None
    keys_before = [b["key"] for b in before]
    capsys.readouterr()
    assert main(["ls", str(old)]) == 0
    assert "manifest: no member spans" in capsys.readouterr().out
    assert main(["index", str(old)]) == 0
    assert "wrote member spans for 7 samples" in capsys.readouterr().out
    assert read_manifest(old).to_pylist() == read_manifest(new).to_pylist()
    after, _ = make_loader([StreamSource(old)], batch_size=2, image_size=8, augment="mae", seed=1)
    assert after.dataset.sources[0].index is not None
    batches = list(after)
    assert [b["key"] for b in batches] == keys_before
    reference, _ = make_loader([StreamSource(new)], batch_size=2, image_size=8, augment="mae", seed=1)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(batches, reference))
    assert main(["index", str(old)]) == 0
    assert "already has member spans" in capsys.readouterr().out
    assert main(["verify", str(old)]) == 0
    assert main(["ls", "--json", str(old)]) == 0 and '"member_spans": true' in capsys.readouterr().out


def test_a_manifest_naming_members_its_shards_lack_is_refused_and_left_alone(tmp_path, capsys):
    old = write_set(tmp_path / "old", _images(4), [2, 2], spans=False)
    path = old / schema.MANIFEST_FILE
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[3]["shard"] = "train/shard-000000.tar"  # toy0003 is in shard 1
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)
    written = path.read_bytes()
    assert main(["index", str(old)]) == 2
    err = capsys.readouterr().err
    assert "2 members the manifest names are not in their shards: train/shard-000000.tar: toy0003.png" in err
    assert "nothing was written" in err and path.read_bytes() == written


def test_index_refuses_a_uri(tmp_path, capsys):
    old = write_set(tmp_path / "old", _images(4), [2, 2], spans=False)
    assert main(["index", old.as_uri()]) == 2
    assert "index rewrites manifest.parquet, which needs a folder" in capsys.readouterr().err
