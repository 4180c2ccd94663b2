"""The medshards sample format, written down once.

A shard set is a folder::

    OUT/
      train/shard-000000.tar ...   WebDataset tar shards, one folder per split
      val/shard-000000.tar ...
      test/shard-000000.tar ...
      manifest.parquet             one row per sample (MANIFEST_COLUMNS)
      dataset.json                 the dataset card (tool version, parameters, counts, sha256 per shard)
      rejects.jsonl                inputs that could not be used, with the reason (operator-only: it
                                   names source paths, which may embed the archive's own identifiers)

Every sample in a shard is a group of tar members sharing one key (no dots in keys, so WebDataset
splits ``key.ext`` at the first dot):

    <key>.png       pixels: 1-channel uint16 PNG for radiographs (full bit depth kept),
                    3-channel uint8 PNG for colour photographs
    <key>.npy       pixels: (H, W, C) uint16 for multi-channel images; plain .npy, loaded with
                    ``allow_pickle=False``
    <key>.mask.png  optional uint8 segmentation mask, 0 = background (same H, W as the pixels)
    <key>.fov.png   optional uint8 field-of-view mask, 0 = outside the imaged region (fundus
                    photographs: the dark rim around the retina), same H, W as the pixels
    <key>.json      SampleMeta as JSON (UTF-8, sorted keys)

Exactly one pixel member (png or npy) per sample.

A sample's source_fingerprint is fingerprint() (XXH3-128, hex) of its source file's bytes: a content
identity for telling files apart and spotting changed ones, not a security seal (the shards' own
sha256 in the card is that). XXH3 hashes at memory speed; sha256 cost a quarter of the CPU time of
ingesting a mammogram's lesion crops, and half of what a second worker process added.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

import xxhash

FORMAT_NAME = "medshards"
SCHEMA_VERSION = 3  # 3: the manifest has MEMBER_SPAN_COLUMNS; 2: source_fingerprint is XXH3-128 (1: sha256)

SPLITS = ("train", "val", "test")
CROP_KINDS = ("lesion", "random", "whole", "cell")

PIXELS_PNG = "png"
PIXELS_NPY = "npy"
MASK_PNG = "mask.png"
FOV_PNG = "fov.png"
META_JSON = "json"
PIXEL_MEMBERS = (PIXELS_PNG, PIXELS_NPY)
MASK_MEMBERS = (MASK_PNG, FOV_PNG)
ALL_MEMBERS = (PIXELS_PNG, PIXELS_NPY, MASK_PNG, FOV_PNG, META_JSON)

SHARD_PATTERN = "shard-{index:06d}.tar"
SHARD_GLOB = "shard-*.tar"
MANIFEST_FILE = "manifest.parquet"
CARD_FILE = "dataset.json"
REJECTS_FILE = "rejects.jsonl"
STAGING_DIR = ".staging"  # a set whose ingest has not finished yet (running, or interrupted: resumable)

KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def new_fingerprint():
    """A hasher for a source fingerprint: .update(bytes) as often as needed, then .hexdigest()."""
    return xxhash.xxh3_128()


def fingerprint(data: bytes) -> str:
    """The source_fingerprint of a file whose bytes are `data`."""
    return xxhash.xxh3_128_hexdigest(data)

# Columns of manifest.parquet, in order. `labels` is a struct whose fields depend on the source.
MANIFEST_COLUMNS = (
    "key",
    "shard",
    "split",
    "official_split",
    "source",
    "patient",
    "laterality",
    "view",
    "crop_kind",
    "crop_box",
    "height",
    "width",
    "channels",
    "dtype",
    "labels",
    "source_fingerprint",
)
# Optional manifest columns, int64 (every ingest since SCHEMA_VERSION 3 writes them): where the
# data of each sample's pixel member and json member begin in its shard's bytes, and their sizes.
# With them a reader of a local shard set fetches a sample's pixels in one read, without walking
# the tar's headers or parsing a json it does not need (shards.indexed_read); `shards verify`
# checks them against the tar. A set without them (older ingests) is read through the tar.
MEMBER_SPAN_COLUMNS = ("pixels_offset", "pixels_size", "json_offset", "json_size")


def has_member_spans(columns: list[str]) -> bool:
    """Whether a manifest with these column names has the MEMBER_SPAN_COLUMNS."""
    return set(MEMBER_SPAN_COLUMNS) <= set(columns)


def member_span_columns(spans: dict[str, tuple[int, int]], pixels: str) -> dict[str, int]:
    """The MEMBER_SPAN_COLUMNS of a sample whose members' data lie at spans[ext] = (offset,
    size) (ShardWriter.write's Placement), its pixels stored as member `pixels`."""
    (pixels_offset, pixels_size), (json_offset, json_size) = spans[pixels], spans[META_JSON]
    return {"pixels_offset": pixels_offset, "pixels_size": pixels_size,
            "json_offset": json_offset, "json_size": json_size}


class SchemaError(ValueError):
    """A sample or member that does not follow the medshards format."""


@dataclass(frozen=True)
class SampleMeta:
    """The JSON member of one sample.

    crop_box is (x0, y0, x1, y1) in source pixels, end-exclusive, before any resize; it may extend
    past the source image where a square crop needed padding. pixel_spacing_mm is (row, col) of the
    *source* image when the file states it, else None. patient is a keyed pseudonym, never the
    archive's own ID. source_fingerprint is fingerprint() of the source file's bytes.
    """

    key: str
    source: str
    patient: str
    split: str
    crop_kind: str
    crop_box: tuple[int, int, int, int]
    source_size: tuple[int, int]  # (height, width) of the source image
    height: int
    width: int
    channels: int
    dtype: str
    labels: dict[str, Any]
    source_fingerprint: str
    official_split: str | None = None
    laterality: str | None = None
    view: str | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    channel_names: tuple[str, ...] | None = None
    has_mask: bool = False
    has_fov: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not KEY_RE.match(self.key):
            raise SchemaError(f"sample key {self.key!r} must match {KEY_RE.pattern} (no dots)")
        if self.split not in SPLITS:
            raise SchemaError(f"split {self.split!r} not in {SPLITS}")
        if self.crop_kind not in CROP_KINDS:
            raise SchemaError(f"crop_kind {self.crop_kind!r} not in {CROP_KINDS}")
        if self.dtype not in ("uint8", "uint16"):
            raise SchemaError(f"dtype {self.dtype!r} must be uint8 or uint16")

    def to_json_bytes(self) -> bytes:
        # fields read directly: dataclasses.asdict deep-copies every label dict first (~0.3 ms a sample)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> SampleMeta:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise SchemaError(f"metadata is a JSON {type(raw).__name__}, not an object")
        if not raw.keys() <= _META_FIELDS:
            raise SchemaError(f"unknown metadata fields {sorted(raw.keys() - _META_FIELDS)}")
        missing = _REQUIRED_FIELDS - raw.keys()
        if missing:
            raise SchemaError(f"metadata lacks the fields {sorted(missing)}")
        for name in _TUPLE_FIELDS:
            if raw.get(name) is not None:
                raw[name] = tuple(raw[name])
        # The frozen dataclass's __init__ sets each of its 21 fields through object.__setattr__,
        # a third of this method's time; the stream parses every sample's member each epoch.
        meta = object.__new__(cls)
        fields = meta.__dict__
        fields.update(_OPTIONAL_DEFAULTS)
        fields.update({name: make() for name, make in _DEFAULT_FACTORIES.items()})
        fields.update(raw)
        meta.__post_init__()
        return meta

    def manifest_row(self, shard: str, spans: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
        """The sample's manifest row; with its members' spans in the shard (ShardWriter.write's
        Placement.spans), the MEMBER_SPAN_COLUMNS too."""
        row = {
            "key": self.key,
            "shard": shard,
            "split": self.split,
            "official_split": self.official_split,
            "source": self.source,
            "patient": self.patient,
            "laterality": self.laterality,
            "view": self.view,
            "crop_kind": self.crop_kind,
            "crop_box": list(self.crop_box),
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "dtype": self.dtype,
            "labels": self.labels,
            "source_fingerprint": self.source_fingerprint,
        }
        if spans is not None:
            row.update(member_span_columns(spans, pixel_member(self.channels, self.dtype)))
        return row


_META_FIELDS = frozenset(f.name for f in dataclasses.fields(SampleMeta))
_TUPLE_FIELDS = ("crop_box", "source_size", "pixel_spacing_mm", "channel_names")
_REQUIRED_FIELDS = frozenset(f.name for f in dataclasses.fields(SampleMeta)
                             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
_OPTIONAL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SampleMeta) if f.default is not dataclasses.MISSING}
_DEFAULT_FACTORIES = {f.name: f.default_factory for f in dataclasses.fields(SampleMeta)
                      if f.default_factory is not dataclasses.MISSING}


def pixel_member(channels: int, dtype: str) -> str:
    """Which pixel member a (channels, dtype) image is stored as."""
    if channels == 1 and dtype in ("uint8", "uint16"):
        return PIXELS_PNG
    if channels == 3 and dtype == "uint8":
        return PIXELS_PNG
    return PIXELS_NPY


def split_member_name(name: str) -> tuple[str, str]:
    """'a/b/key.mask.png' -> ('key', 'mask.png'); the key is the basename up to the first dot."""
    base = name.rsplit("/", 1)[-1]
    if "." not in base:
        raise SchemaError(f"tar member {name!r} has no extension")
    key, ext = base.split(".", 1)
    if ext not in ALL_MEMBERS:
        raise SchemaError(f"tar member {name!r}: unknown extension {ext!r}")
    return key, ext
