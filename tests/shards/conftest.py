"""A small real shard set, written as an ingest job writes one: ShardWriter per split, then the
manifest, then the card last. Small images keep the whole folder fast; the mix covers every member
kind: 1-channel uint16 PNG with mask, 3-channel uint8 PNG, 7-channel uint16 .npy."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shards import codecs, schema
from shards.card import RowCounts, build_card, read_card, write_card
from shards.manifest import write_manifest
from shards.writer import ShardWriter, file_sha256

SHARD_SAMPLES = 2  # small shards so train spans several


def _meta(key: str, split: str, pixels: np.ndarray, *, patient: str, crop_kind: str, labels: dict,
          has_mask: bool) -> schema.SampleMeta:
    height, width = pixels.shape[:2]
    return schema.SampleMeta(
        key=key, source="toy", patient=patient, split=split, crop_kind=crop_kind,
        crop_box=(0, 0, width, height), source_size=(height, width), height=height, width=width,
        channels=1 if pixels.ndim == 2 else pixels.shape[2], dtype=str(pixels.dtype), labels=labels,
        source_fingerprint=hashlib.sha256(key.encode()).hexdigest(), has_mask=has_mask,
    )


def make_samples() -> list[tuple[schema.SampleMeta, np.ndarray, np.ndarray | None]]:
    """(meta, pixels, mask or None) per sample, deterministic."""
    rng = np.random.default_rng(0)
    samples = []
    plan = [("train", 4), ("val", 2), ("test", 2)]
    for split, count in plan:
        for i in range(count):
            key = f"{split}{i:02d}abcdef"
            pixels = rng.integers(0, 4096, size=(40, 48), dtype=np.uint16)
            mask = np.zeros((40, 48), np.uint8)
            mask[10:30, 12:36] = 1
            labels = {"pathology": "MALIGNANT" if i % 2 else "BENIGN", "class4": f"c{i % 4}"}
            meta = _meta(key, split, pixels, patient=f"p{i // 2}", crop_kind="lesion", labels=labels, has_mask=True)
            samples.append((meta, pixels, mask))
    rgb = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    samples.append((_meta("rgb00photo", "train", rgb, patient="p9", crop_kind="whole",
                          labels={"class": "nevus"}, has_mask=False), rgb, None))
    multi = rng.integers(0, 65535, size=(24, 20, 7), dtype=np.uint16)
    samples.append((_meta("mif00cells", "train", multi, patient="p8", crop_kind="cell",
                          labels={"tissue": "tumor"}, has_mask=False), multi, None))
    return samples


def encode_sample(meta: schema.SampleMeta, pixels: np.ndarray, mask: np.ndarray | None) -> dict:
    ext, data = codecs.encode_pixels(pixels)
    sample = {"__key__": meta.key, ext: data, schema.META_JSON: meta.to_json_bytes()}
    if mask is not None:
        sample[schema.MASK_PNG] = codecs.encode_mask(mask)
    return sample


def write_shard_set(root: Path, samples) -> Path:
    """Write `samples` as a complete shard set under `root`; returns root."""
    rows, records = [], []
    for split in schema.SPLITS:
        with ShardWriter(root, split, max_samples=SHARD_SAMPLES) as writer:
            for meta, pixels, mask in samples:
                if meta.split == split:
                    placed = writer.write(encode_sample(meta, pixels, mask))
                    rows.append(meta.manifest_row(placed.shard, placed.spans))
        records += writer.records
    write_manifest(root / schema.MANIFEST_FILE, rows)
    card = build_card(source="toy", tool_version="0.1.0", parameters={"size": 48}, counts=RowCounts.of(rows),
                      records=records,
                      pixel_stats={"uint16": {"mean": 2047.5, "std": 1182.3}}, rejects_by_reason={"no_roi": 2},
                      notes={})
    write_card(root, card)
    return root


@pytest.fixture
def samples():
    return make_samples()


@pytest.fixture
def shard_set(tmp_path, samples) -> Path:
    return write_shard_set(tmp_path / "set", samples)


@pytest.fixture
def build_shard_set():
    """write_shard_set(root, samples), for tests that need more than one set."""
    return write_shard_set


@pytest.fixture
def sample_members():
    """encode_sample(meta, pixels, mask) -> the member dict ShardWriter.write takes."""
    return encode_sample


@pytest.fixture
def rewrite_shard():
    """rewrite_shard(root, rel, edit): rebuild one shard with `edit(name, data) -> data` applied to
    each member, in the same order, and update the card's size and sha256 so only the content
    checks can catch the change."""

    def rewrite(root: Path, rel: str, edit) -> None:
        path = root / rel
        with tarfile.open(path) as tar:
            members = [(info, tar.extractfile(info).read()) for info in tar]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as out:
            for info, data in members:
                data = edit(info.name, data)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
        path.write_bytes(buf.getvalue())
        card = read_card(root)
        for split in card["splits"].values():
            for record in split["shards"]:
                if record["path"] == rel:
                    record["bytes"], record["sha256"] = path.stat().st_size, file_sha256(path)
        write_card(root, card)

    return rewrite


@pytest.fixture(scope="session")
def cbis_shards(tmp_path_factory) -> Path:
    """`ingest cbis --crops both` of a small generated CBIS-DDSM download, in shards of 3 samples."""
    from ingest.pipeline import run_job
    from ingest.sample_data.cbis_ddsm import make_cbis_sample
    from ingest.sources import cbis

    tmp = tmp_path_factory.mktemp("cbis")
    make_cbis_sample(tmp / "download", patients=4, seed=1)
    run_job(cbis.build_job(root=tmp / "download", out=tmp / "shards", crops="both", shard_size=3, random_side=96,
                           workers=1, progress=False))
    return tmp / "shards"
