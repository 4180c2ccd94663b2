"""The stream end to end on real tar shards (ShardWriter + manifest + card, as ingest writes them,
and `ingest cbis` itself): equal batches on every rank, epoch shuffles, mixing weights, lossless
decoding and per-set normalisation, 1/3/7 channels, the error policy, and no unpickling ever."""

from __future__ import annotations

import hashlib
import io
import pathlib
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from shards import codecs, schema
from shards import sample_stages as reading
from shards.batch_ring import LEND
from shards.card import RowCounts, build_card, read_card, write_card
from shards.manifest import read_manifest, write_manifest
from shards.stream import (SampleError, ShardStream, StreamSource, make_loader, open_source, pinning_available,
                           to_device, warn_and_skip)
from shards.stream_plan import StreamPlanError
from shards.writer import ShardWriter

UNEVEN = [5, 1, 8, 3, 6, 2, 4]  # 7 shards, 29 samples


def write_set(root: Path, images: list[np.ndarray], shard_sizes: list[int], *, source: str = "toy",
              crop_kinds: list[str] | None = None, stats: dict | None = None, spans: bool = True) -> Path:
    """A train split of `images` in shards of the given sizes; pixel_stats as given, else computed
    from the images (per channel, stored units), as ingest does. spans=False: a manifest without
    member spans, as ingests before them wrote (read through the tar)."""
    assert sum(shard_sizes) == len(images)
    first_of_shard = np.cumsum([0] + shard_sizes)[:-1].tolist()
    rows = []
    with ShardWriter(root, "train", max_samples=shard_sizes[0]) as writer:
        for i, pixels in enumerate(images):
            key, (height, width) = f"{source}{i:04d}", pixels.shape[:2]
            meta = schema.SampleMeta(
                key=key, source=source, patient=f"p{i}", split="train",
                crop_kind=crop_kinds[i] if crop_kinds else "whole", crop_box=(0, 0, width, height),
                source_size=(height, width), height=height, width=width,
                channels=1 if pixels.ndim == 2 else pixels.shape[2], dtype=str(pixels.dtype), labels={"index": i},
                source_fingerprint=hashlib.sha256(key.encode()).hexdigest())
            ext, data = codecs.encode_pixels(pixels)
            placed = writer.write({"__key__": key, ext: data, schema.META_JSON: meta.to_json_bytes()})
            rows.append(meta.manifest_row(placed.shard, placed.spans if spans else None))
            if i in first_of_shard:  # roll over after this shard's own count (ShardWriter checks at the next write)
                writer.max_samples = shard_sizes[first_of_shard.index(i)]
    if stats is None:
        values = np.concatenate([p.reshape(-1, 1 if p.ndim == 2 else p.shape[2]) for p in images]).astype(np.float64)
        stats = {"mean": values.mean(axis=0).tolist(), "std": values.std(axis=0).tolist()}
    stats = {"dtype": str(images[0].dtype), **stats}
    write_manifest(root / schema.MANIFEST_FILE, rows)
    write_card(root, build_card(source=source, tool_version="test", parameters={}, counts=RowCounts.of(rows), records=writer.records,
                                pixel_stats={"split": "train", "channels": len(stats["mean"]), **stats},
                                rejects_by_reason={}, notes={}))
    return root


def keys_of(loader) -> list[str]:
    return [key for batch in loader for key in batch["key"]]


@pytest.fixture(scope="module")
def uneven(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 65536, (8, 8), dtype=np.uint16) for _ in range(sum(UNEVEN))]
    return write_set(tmp_path_factory.mktemp("uneven"), images, UNEVEN)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_gets_steps_per_epoch_batches_from_uneven_shards(uneven, world_size, num_workers):
    expected = sum(UNEVEN) // (world_size * 2)
    for rank in range(world_size):
        loader, steps = make_loader([StreamSource(uneven)], batch_size=2, image_size=8, rank=rank,
                                    world_size=world_size, num_workers=num_workers, augment="none")
        assert steps == expected == len(loader)
        for epoch in (0, 1):
            loader.dataset.set_epoch(epoch)
            batches = list(loader)
            assert len(batches) == steps, f"rank {rank} epoch {epoch}"
            # handed over in stored units (the shards hold uint16), normalised by to_device
            assert all(b["image"].shape == (2, 1, 8, 8) and b["image"].dtype == torch.uint16 for b in batches)
            assert all(to_device(b, "cpu")["image"].dtype == torch.float32 for b in batches)


def test_impossible_plans_fail_with_the_numbers(uneven):
    with pytest.raises(StreamPlanError, match=r"29 samples per epoch cannot fill one batch per rank: "
                                              r"world_size 4 x batch_size 8 = 32"):
        make_loader([StreamSource(uneven)], batch_size=8, image_size=8, world_size=4)
    with pytest.raises(StreamPlanError, match=r"has 7 shards with samples, but 8 readers"):
        make_loader([StreamSource(uneven)], batch_size=1, image_size=8, world_size=4, num_workers=2)
    stream = ShardStream([StreamSource(uneven)], batch_size=1, image_size=8, num_workers=2)
    with pytest.raises(StreamPlanError, match=r"planned for num_workers=2, running in 1"):
        next(iter(stream))


def test_a_source_opened_once_streams_as_the_source_named_again(uneven):
    """A caller planning several streams over the same sets (trainer.validation) opens them once."""
    opened = open_source(StreamSource(uneven))
    assert open_source(opened) is opened
    assert opened.index is not None and open_source(opened, by_index=False).index is None
    again, _ = make_loader([opened], batch_size=2, image_size=8, augment="none")
    named, _ = make_loader([StreamSource(uneven)], batch_size=2, image_size=8, augment="none")
    assert keys_of(again) == keys_of(named)


def test_shuffle_changes_every_epoch_and_repeats_with_the_seed(uneven):
    def epoch_keys(seed: int, epoch: int, **kw) -> list[str]:
        loader, _ = make_loader([StreamSource(uneven)], batch_size=1, image_size=8, seed=seed, augment="none", **kw)
        loader.dataset.set_epoch(epoch)
        return keys_of(loader)

    written = [f"toy{i:04d}" for i in range(sum(UNEVEN))]
    first, second = epoch_keys(0, 0), epoch_keys(0, 1)
    assert sorted(first) == sorted(second) == written  # one rank, batch 1: an epoch is every sample once
    assert first != second
    assert epoch_keys(0, 1) == second
    assert epoch_keys(1, 1) != second
    neighbours = sum(abs(int(a[3:]) - int(b[3:])) == 1 for a, b in zip(first, first[1:]))
    assert neighbours < len(first) // 3, "samples are shuffled across shards, not only shards"
    spread = {"world_size": 2, "rank": 1, "num_workers": 2}
    assert epoch_keys(5, 3, **spread) == epoch_keys(5, 3, **spread) != epoch_keys(5, 4, **spread)


def test_an_epoch_cut_short_leaves_the_next_one_whole(uneven):
    """A trainer may stop an epoch early (a step limit); the persistent workers start the next afresh."""
    def loader():
        return make_loader([StreamSource(uneven)], batch_size=2, image_size=8, num_workers=2, seed=4, augment="none")

    cut, steps = loader()
    for i, _ in enumerate(cut):
        if i == 1:
            break
    cut.dataset.set_epoch(1)
    fresh, _ = loader()
    fresh.dataset.set_epoch(1)
    assert keys_of(cut) == keys_of(fresh) and len(keys_of(fresh)) == steps * 2


def test_mixing_weights_and_each_set_normalises_with_its_own_stats(tmp_path):
    a = write_set(tmp_path / "a", [np.full((8, 8), 1000 + i, np.uint16) for i in range(40)], [10] * 4,
                  source="seta", stats={"mean": [1000.0], "std": [10.0]})
    b = write_set(tmp_path / "b", [np.full((8, 8), 30000 + i, np.uint16) for i in range(40)], [10] * 4,
                  source="setb", stats={"mean": [30000.0], "std": [100.0]})
    loader, steps = make_loader([StreamSource(a, weight=0.75), StreamSource(b, weight=0.25)], batch_size=5,
                                image_size=8, world_size=2, rank=1, num_workers=2, samples_per_epoch=800,
                                augment="none")
    assert loader.dataset.plan(0).coverage == (1.0, 1.0)  # a reader's shards hold less than its quota: repeats
    counts = Counter()
    for batch in loader:
        counts.update(batch["source"])
        batch = to_device(batch, "cpu")
        for image, source, key in zip(batch["image"], batch["source"], batch["key"]):
            scale = 10.0 if source == "seta" else 100.0
            assert key.startswith(source)
            torch.testing.assert_close(image, torch.full((1, 8, 8), int(key[4:]) / scale))
    assert sum(counts.values()) == steps * 5 == 400
    assert abs(counts["seta"] / 400 - 0.75) < 0.02


def test_kept_batches_stay_intact_while_workers_reuse_their_buffers(tmp_path):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 65536, (8, 8), dtype=np.uint16) for _ in range(48)]
    root = write_set(tmp_path / "set", images, [6] * 8)
    loader, steps = make_loader([StreamSource(root)], batch_size=2, image_size=8, num_workers=2, augment="none")
    kept = list(loader)  # 12 batches a worker, 6 slots each, 2 lent to `kept`: the other 4 reused twice over

    def assert_intact():
        for batch in kept:
            for stored, key in zip(batch["image"].numpy(), batch["key"]):
                np.testing.assert_array_equal(stored[0], images[int(key[3:])])

    assert len(kept) == steps == 24
    assert_intact()
    # The first two batches of each worker are its lent buffers, still held; the rest are copies.
    assert sum(batch["image"].is_shared() for batch in kept) == 2 * LEND  # two workers
    for epoch in (1, 2):  # cut an epoch short, then the next one still runs whole
        loader.dataset.set_epoch(epoch)
        for i, _ in enumerate(loader):
            if epoch == 1 and i == 3:
                break
    assert len(keys_of(loader)) == steps * 2
    assert_intact()  # new epochs freed none of the buffers lent to `kept`


def _pin_loader(root: Path, pin_memory: bool):
    return make_loader([StreamSource(root)], batch_size=2, image_size=8, num_workers=2, pin_memory=pin_memory)[0]


@pytest.mark.skipif(not pinning_available(), reason="pinning memory needs an accelerator")
def test_a_pinned_loader_lends_nothing_and_holds_no_buffers_for_it(uneven):
    """With pin_memory every batch is copied into pinned memory, so its workers need no slots to lend."""
    pinned, plain = _pin_loader(uneven, True), _pin_loader(uneven, False)
    assert plain.lend and not pinned.lend
    assert pinned.ring.slots == plain.ring.slots - LEND and pinned.ring.lend == 0
    assert next(iter(pinned))["image"].is_pinned()


@pytest.mark.skipif(pinning_available(), reason="this machine can pin memory")
def test_pin_memory_without_an_accelerator_is_ignored_aloud(uneven):
    with pytest.warns(UserWarning, match="no accelerator to pin memory for; batches are not pinned"):
        ignored = _pin_loader(uneven, True)
    assert ignored.lend and not ignored.pin_memory
    assert not next(iter(ignored))["image"].is_pinned()


def test_8_and_16_bit_sets_mix_in_16_bit_batches_with_values_kept(tmp_path):
    a = write_set(tmp_path / "a", [np.full((8, 8), 200 + i, np.uint8) for i in range(4)], [2, 2], source="eight",
                  stats={"mean": [100.0], "std": [50.0]})
    b = write_set(tmp_path / "b", [np.full((8, 8), 40000 + i, np.uint16) for i in range(4)], [2, 2], source="sixteen",
                  stats={"mean": [30000.0], "std": [1000.0]})
    loader, steps = make_loader([StreamSource(a), StreamSource(b)], batch_size=4, image_size=8, augment="none",
                                samples_per_epoch=8)
    for batch in loader:
        assert batch["image"].dtype == torch.uint16
        normalised = to_device(batch, "cpu")["image"]
        for stored, image, key in zip(batch["image"], normalised, batch["key"]):
            value = (200 if key.startswith("eight") else 40000) + int(key[-4:])
            mean, std = (100.0, 50.0) if key.startswith("eight") else (30000.0, 1000.0)
            assert torch.equal(stored, torch.full((1, 8, 8), value, dtype=torch.uint16))
            torch.testing.assert_close(image, torch.full((1, 8, 8), (value - mean) / std))


def test_16bit_pixels_come_back_exactly_and_normalise_with_the_card(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 65536, (12, 12), dtype=np.uint16) for _ in range(6)]
    images[0][0, :3] = (0, 1, 65535)
    root = write_set(tmp_path / "set", images, [3, 3], stats={"mean": [5000.0], "std": [250.0]})
    paths = [str(root / r["path"]) for r in read_card(root)["splits"]["train"]["shards"]]
    decoded = reading.decode(reading.parse_meta(reading.tar_samples(paths, reading.raise_sample_error),
                                                reading.raise_sample_error), reading.raise_sample_error)
    for sample in decoded:  # before normalisation: the stored integers, exactly
        assert sample["pixels"].dtype == np.uint16
        np.testing.assert_array_equal(sample["pixels"], images[sample["meta"].labels["index"]])
    loader, _ = make_loader([StreamSource(root)], batch_size=2, image_size=12, augment="none")
    for batch in loader:
        for stored, key in zip(batch["image"].numpy(), batch["key"]):  # handed over exactly as stored
            np.testing.assert_array_equal(stored[0], images[int(key[3:])])
        for image, key in zip(to_device(batch, "cpu")["image"].numpy(), batch["key"]):
            stored = images[int(key[3:])].astype(np.float64)
            np.testing.assert_allclose(image[0], (stored - 5000.0) / 250.0, rtol=1e-6, atol=1e-6)  # float32
            np.testing.assert_array_equal(np.rint(image[0].astype(np.float64) * 250.0 + 5000.0), stored)


@pytest.mark.parametrize("augment,resize_on_device", [("none", False), ("mae", False), ("mae", True)])
@pytest.mark.parametrize("channels,dtype", [(1, np.uint16), (3, np.uint8), (7, np.uint16)])
def test_channels_come_out_first_in_order_each_with_its_stats(tmp_path, channels, dtype, augment, resize_on_device):
    levels = np.arange(1, channels + 1) * 20  # channel c holds 20 * (c + 1) + sample index everywhere
    images = [np.broadcast_to((levels + i).astype(dtype), (20, 20, channels)).copy() for i in range(6)]
    images = [im[:, :, 0] for im in images] if channels == 1 else images
    mean, std = (levels * 0.5).tolist(), (levels * 0.25).tolist()
    root = write_set(tmp_path / "set", images, [3, 3], stats={"mean": mean, "std": std})
    loader, _ = make_loader([StreamSource(root)], batch_size=3, image_size=16, augment=augment,
                            resize_on_device=resize_on_device, num_workers=2 if resize_on_device else 0)
    assert loader.dataset.channels == channels
    for batch in loader:
        assert batch["image"].dtype == {np.uint8: torch.uint8, np.uint16: torch.uint16}[dtype]
        batch = to_device(batch, "cpu")
        assert batch["image"].shape == (3, channels, 16, 16) and batch["image"].dtype == torch.float32
        for image, key in zip(batch["image"], batch["key"]):
            expected = (levels + int(key[3:]) - np.array(mean)) / np.array(std)
            expected = torch.tensor(expected, dtype=torch.float32)[:, None, None]
            torch.testing.assert_close(image, expected.expand_as(image))


class _Unpickled:
    """Unpickling this creates the file it names: proof that something unpickled it."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def _add_member(shard: Path, after_key: str, name: str, data: bytes) -> None:
    """Rewrite `shard` with an extra member right after `after_key`'s members."""
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    last = max(i for i, (info, _) in enumerate(members) if info.name.startswith(after_key + "."))
    extra = tarfile.TarInfo(name)
    extra.size = len(data)
    members.insert(last + 1, (extra, data))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
        for info, payload in members:
            out.addfile(info, io.BytesIO(payload))
    shard.write_bytes(buf.getvalue())


@pytest.mark.parametrize("ext", ["pickle", "pyd"])
def test_a_pickle_member_is_rejected_and_never_unpickled(tmp_path, ext):
    # through the tar (no member spans): the spans path never reads a member the manifest does not name
    root = write_set(tmp_path / "set", [np.full((8, 8), i, np.uint16) for i in range(6)], [3, 3], spans=False)
    sentinel = tmp_path / "unpickled"
    _add_member(root / "train/shard-000000.tar", "toy0001", f"toy0001.{ext}", pickle.dumps(_Unpickled(sentinel)))
    loader, _ = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none")
    with pytest.raises(SampleError, match=rf"train/shard-000000.tar: sample toy0001: .*unknown extension '{ext}'"):
        list(loader)
    loader, steps = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none", handler=warn_and_skip)
    with pytest.warns(UserWarning, match=rf"skipping a bad sample: .*toy0001.*'{ext}'"):
        batches = list(loader)
    assert len(batches) == steps and "toy0001" not in {k for b in batches for k in b["key"]}
    assert sum(b["skipped"] for b in batches) >= 1
    assert not sentinel.exists()


def test_a_bad_sample_raises_with_shard_and_key_or_is_skipped_and_counted(tmp_path, rewrite_shard):
    # through the tar: rewriting a member moves the ones after it, which the spans path reports
    # as a manifest that does not describe its shard (test_indexed_read.py)
    root = write_set(tmp_path / "set", [np.full((8, 8), i, np.uint16) for i in range(6)], [3, 3], spans=False)
    rewrite_shard(root, "train/shard-000001.tar", lambda name, data: data[:40] if name == "toy0003.png" else data)
    loader, _ = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none")
    with pytest.raises(SampleError, match=r"/set/train/shard-000001.tar: sample toy0003: PNG member does not decode"):
        list(loader)
    # five good samples an epoch: the bad one, first of its shard, is met once before the last good one
    loader, steps = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none", shuffle_buffer=1,
                                samples_per_epoch=5, handler=warn_and_skip)
    with pytest.warns(UserWarning, match="toy0003"):
        batches = list(loader)
    assert len(batches) == steps == 5
    assert sorted(k for b in batches for k in b["key"]) == ["toy0000", "toy0001", "toy0002", "toy0004", "toy0005"]
    assert sum(b["skipped"] for b in batches) == 1


def test_a_bad_sample_met_in_a_loader_worker_reaches_the_main_process_as_itself(tmp_path, rewrite_shard):
    """torch re-raises a DataLoader worker's error by calling its class with the traceback's text;
    SampleError takes shard, key and cause, so it arrived as a RuntimeError and the trainer's
    one-line report of a bad sample never ran with data.num_workers > 0 (every real config)."""
    root = write_set(tmp_path / "set", [np.full((8, 8), i, np.uint16) for i in range(6)], [3, 3], spans=False)
    rewrite_shard(root, "train/shard-000001.tar", lambda name, data: data[:40] if name == "toy0003.png" else data)
    loader, _ = make_loader([StreamSource(root)], batch_size=1, image_size=8, augment="none", num_workers=2)
    with pytest.raises(SampleError) as raised:
        list(loader)
    assert type(raised.value) is SampleError and raised.value.key == "toy0003"
    assert raised.value.shard.endswith("/set/train/shard-000001.tar")
    assert str(raised.value.cause).startswith("PNG member does not decode")


def test_a_set_without_pixel_stats_is_refused(tmp_path):
    root = write_set(tmp_path / "set", [np.full((8, 8), i, np.uint16) for i in range(2)], [2])
    card = read_card(root)
    card["pixel_stats"] = None
    write_card(root, card)
    with pytest.raises(ValueError, match=r"no per-channel pixel_stats .* run `shards stats"):
        make_loader([StreamSource(root)], batch_size=1, image_size=8)


def test_ingested_cbis_lesion_crops_stream_with_their_labels(cbis_shards):
    rows = [r for r in read_manifest(cbis_shards).to_pylist() if r["split"] == "train"]
    lesions = {r["key"] for r in rows if r["crop_kind"] == "lesion"}
    assert lesions and len(lesions) < len(rows)
    loader, steps = make_loader([StreamSource(cbis_shards, crop_kinds=("lesion",))], batch_size=1, image_size=64,
                                augment="mae")
    batches = list(loader)
    assert steps == len(lesions) and {k for b in batches for k in b["key"]} == lesions
    for batch in batches:
        assert batch["crop_kind"] == ["lesion"] and batch["source"] == ["cbis-ddsm"]
        assert batch["labels"][0]["pathology"] in ("BENIGN", "BENIGN_WITHOUT_CALLBACK", "MALIGNANT")
        image = to_device(batch, "cpu")["image"]
        assert image.shape == (1, 1, 64, 64) and torch.isfinite(image).all()


def test_sets_of_one_ingest_source_mix_under_names_of_their_own(cbis_shards, tmp_path):
    """MIRAM's "MGs & Lesions" from CBIS alone: one set's lesion crops with its random crops, or a
    copy of it in another folder. Their cards name one source, so each is named further (folder,
    then crop kinds); names given are kept, and two alike are refused."""
    import shutil

    copy = tmp_path / "cbis-again"
    shutil.copytree(cbis_shards, copy)
    folders = ShardStream([StreamSource(cbis_shards), StreamSource(copy)], batch_size=1, image_size=64)
    assert [s.name for s in folders.sources] == [f"cbis-ddsm:{cbis_shards.name}", "cbis-ddsm:cbis-again"]
    kinds = [StreamSource(cbis_shards, crop_kinds=("lesion",), weight=3), StreamSource(cbis_shards, crop_kinds=("random",))]
    loader, _ = make_loader(kinds, batch_size=1, image_size=64, augment="mae", samples_per_epoch=8)
    names = [f"cbis-ddsm:{cbis_shards.name}:lesion", f"cbis-ddsm:{cbis_shards.name}:random"]
    assert [s.name for s in loader.dataset.sources] == names
    seen = Counter((b["source"][0], b["crop_kind"][0]) for b in loader)
    assert set(seen) == {(names[0], "lesion"), (names[1], "random")}
    named = ShardStream([StreamSource(cbis_shards, name="lesions"), StreamSource(copy)], batch_size=1, image_size=64)
    assert [s.name for s in named.sources] == ["lesions", "cbis-ddsm"]
    with pytest.raises(ValueError, match=r"sources need distinct names, got .*name each one \(data.sources\[\].name\)"):
        ShardStream([StreamSource(cbis_shards), StreamSource(cbis_shards)], batch_size=1, image_size=64)
