"""Shard sets read from object storage (shards.storage): the stream, `shards verify`/`ls` and the
trainer's data shape over `s3://` against a real S3 HTTP endpoint on 127.0.0.1 (moto's server,
spoken to by pyarrow's own S3 client), and over `file://` URIs; locations and their queries."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from shards import cli, storage
from shards.card import read_card
from shards.stream import StreamSource, make_loader
from trainer.loop import data_shape

from tests.shards.test_stream import UNEVEN, write_set

def test_locations_join_keep_the_query_and_name_their_last_part():
    uri = "s3://bucket/sets/cbis/?endpoint_override=minio:9000&scheme=http"
    root = storage.shard_root(uri)
    assert root == "s3://bucket/sets/cbis?endpoint_override=minio:9000&scheme=http"
    shard = storage.join(root, "train/shard-000003.tar")
    assert shard == "s3://bucket/sets/cbis/train/shard-000003.tar?endpoint_override=minio:9000&scheme=http"
    assert storage.name_of(shard) == "shard-000003.tar"
    assert storage.is_uri(shard) and storage.is_uri("file:///data/x")
    assert not storage.is_uri("/data/x") and not storage.is_uri("C:\\data\\x") and not storage.is_uri(Path("/x"))
    assert storage.shard_root("relative/set") == str(Path("relative/set").resolve())


def test_a_locations_parent_keeps_a_uris_query():
    shard = "s3://bucket/sets/cbis/train/shard-000003.tar?endpoint_override=minio:9000"
    assert storage.parent(shard) == "s3://bucket/sets/cbis/train?endpoint_override=minio:9000"
    assert storage.parent("/runs/x/checkpoint_1/checkpoint.pt") == Path("/runs/x/checkpoint_1")


def test_a_forward_reader_skips_ahead_and_refuses_to_go_back(tmp_path):
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 64)
    with storage.open_input((tmp_path / "blob").as_uri()) as fh:
        assert isinstance(fh, storage.ForwardReader)
        assert fh.read(4) == bytes([0, 1, 2, 3])
        fh.seek(250, os.SEEK_CUR)
        assert fh.tell() == 254 and fh.read(2) == bytes([254, 255])
        with pytest.raises(OSError, match="only seeks forward"):
            fh.seek(0)
    with pytest.raises(FileNotFoundError, match="no such object"):
        storage.open_input((tmp_path / "missing").as_uri())


@pytest.fixture(scope="module")
def uneven_set(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 65536, (8, 8), dtype=np.uint16) for _ in range(sum(UNEVEN))]
    return write_set(tmp_path_factory.mktemp("uneven"), images, UNEVEN)


def epoch_of(root, num_workers: int) -> list[tuple[str, np.ndarray]]:
    loader, steps = make_loader([StreamSource(root)], batch_size=4, image_size=8, num_workers=num_workers,
                                world_size=1, seed=3, augment="none")
    return [(key, image.numpy()) for batch in loader for key, image in zip(batch["key"], batch["image"])]


def same_epoch(a, b) -> bool:
    return [k for k, _ in a] == [k for k, _ in b] and all(np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_a_file_uri_streams_the_same_epoch_as_its_folder(uneven_set, tmp_path):
    local = epoch_of(uneven_set, 0)
    assert len(local) == 28  # 29 samples in whole batches of 4
    assert same_epoch(epoch_of(uneven_set.as_uri(), 0), local)
    spaced = tmp_path / "shard sets" / "uneven"  # as_uri() percent-encodes the space
    shutil.copytree(uneven_set, spaced)
    assert "%20" in spaced.as_uri() and same_epoch(epoch_of(spaced.as_uri(), 0), local)


@pytest.fixture(scope="module")
def s3(s3_endpoint, uneven_set) -> str:
    """The uneven set uploaded to S3: its URI."""
    return s3_endpoint.upload(uneven_set, "uneven")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_s3_shard_set_streams_the_same_epoch_as_its_local_copy(s3, uneven_set, num_workers):
    # With workers, the card and manifest are read over S3 in this process and the shards in forked
    # DataLoader workers, each with its own S3 client.
    assert same_epoch(epoch_of(s3, num_workers), epoch_of(uneven_set, num_workers))


def test_the_trainer_sizes_its_model_from_an_s3_set(s3):
    assert data_shape([StreamSource(s3)], None) == (1, 8)


def test_shards_ls_verify_and_preview_read_an_s3_set(s3, s3_endpoint, uneven_set, tmp_path, capsys):
    assert cli.main(["ls", s3]) == 0
    assert "29" in capsys.readouterr().out
    shelf = s3_endpoint.upload(uneven_set, "shelf/uneven").replace("/uneven?", "?")  # a prefix of sets
    assert cli.main(["ls", shelf]) == 0
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith("uneven")] == \
        [["uneven", "toy"]]
    assert cli.main(["verify", s3, "--workers", "2"]) == 0
    assert "OK (7 shards, 29 samples)" in capsys.readouterr().out
    assert cli.main(["preview", s3, "-n", "5", "--out", str(tmp_path / "sheet.png")]) == 0
    assert cv2.imread(str(tmp_path / "sheet.png")).shape[2] == 3


def test_verify_names_a_damaged_object_and_a_missing_set_is_a_clear_error(s3, uneven_set, capsys):
    import pyarrow.fs

    fs, path = storage.filesystem(s3)
    shard = read_card(uneven_set)["splits"]["train"]["shards"][2]["path"]
    data = bytearray((uneven_set / shard).read_bytes())
    data[700] ^= 0xFF  # inside the first member's bytes
    with fs.open_output_stream(f"{path}/{shard}") as out:
        out.write(bytes(data))
    try:
        assert cli.main(["verify", s3, "--workers", "1"]) == 1
        report = capsys.readouterr().out
        assert f"FAIL {shard}: sha256 mismatch" in report
        assert [line.split(":")[0] for line in report.splitlines() if line.startswith("FAIL")] == [f"FAIL {shard}"]
    finally:
        pyarrow.fs.copy_files(str(uneven_set / shard), f"{path}/{shard}", destination_filesystem=fs)
    missing = storage.join(s3.replace("/uneven?", "/nothing-here?"))
    assert cli.main(["ls", missing]) == 2
    assert "nothing-here/dataset.json" in capsys.readouterr().err
    assert cli.main(["stats", s3]) == 2
    assert "needs a folder" in capsys.readouterr().err


class FailingAfter:
    """An input stream that fails (a connection reset) after `good` reads: a network fault."""

    def __init__(self, stream, good: int):
        self.stream, self.good = stream, good

    def read(self, n=None):
        if self.good == 0:
            raise ConnectionResetError(104, "Connection reset by peer")
        self.good -= 1
        return self.stream.read(n)

    def close(self):
        if self.stream is not None:
            self.stream.close()


def test_a_read_that_fails_mid_object_resumes_from_its_byte_then_gives_up_naming_it(s3, uneven_set, monkeypatch):
    monkeypatch.setattr(storage, "RETRY_PAUSE_S", 0.0)
    shard = read_card(uneven_set)["splits"]["train"]["shards"][0]["path"]
    expected = (uneven_set / shard).read_bytes()
    location = storage.join(s3, shard)
    fs, path = storage.filesystem(location)

    def flaky_reopen(offset):  # every new request also fails once, after two good reads
        return FailingAfter(storage._reopen_at(fs, path, offset), good=2)

    reader = storage.ForwardReader(FailingAfter(fs.open_input_stream(path), good=3), location=location,
                                   reopen=flaky_reopen)
    with pytest.warns(UserWarning, match=r"read failed at byte \d+ .*retrying from there") as warned:
        chunks = list(iter(lambda: reader.read(1000), b""))
    assert "byte 3000 " in str(warned[0].message)  # the first request's fourth read
    assert b"".join(chunks) == expected and reader.tell() == len(expected)

    dead = storage.ForwardReader(FailingAfter(fs.open_input_stream(path), good=1), location=location,
                                 reopen=lambda offset: FailingAfter(None, good=0))
    dead.read(1000)
    with pytest.warns(UserWarning), pytest.raises(OSError, match=r"train/shard-000000.tar.*byte 1000 after 3 retries"):
        dead.read(1000)


def test_walking_a_prefix_lists_every_object_at_any_depth_sorted_and_ranges_read_exactly(s3_endpoint):
    names = ["walk/b/2", "walk/a", "walk/b/1 #x%", "walk/c/d/e"]
    for name in names:
        with s3_endpoint.fs.open_output_stream(f"{s3_endpoint.bucket}/{name}") as fh:
            fh.write(name.encode() * 3)
    found = list(storage.walk_objects(s3_endpoint.uri("walk")))
    assert [rel for rel, _ in found] == ["a", "b/1 #x%", "b/2", "c/d/e"]
    for rel, location in found:
        data = (f"walk/{rel}").encode() * 3
        assert storage.read_bytes(location) == data  # the URI names the object, odd characters and all
        assert storage.read_range(location, 2, 5) == data[2:7] and storage.read_range(location, len(data), 4) == b""
    with pytest.raises(FileNotFoundError, match=r"no such bucket, or no object under this prefix"):
        list(storage.walk_objects(s3_endpoint.uri("nowhere")))
