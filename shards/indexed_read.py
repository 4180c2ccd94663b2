"""Reading a local shard set's samples by the manifest's member spans (schema.MEMBER_SPAN_COLUMNS),
the stream's path for every set whose ingest wrote them; shards.sample_stages' tar walk is the
path for older sets and for object stores (read front to back, never by offset).

Why: a sample's bytes are found by the manifest, so a reader skips the tar's headers (three
members a sample, ~12 us each in Python), reads only the members it uses (the pixels; the json
only for batches that carry labels, which pretraining does not), and parses no json it does not
use. Measured in one process on 224 px 16-bit CBIS crops (decoding stubbed out, process time):
the stream's own work besides decoding went from ~120 us a sample (tar walk ~40, json ~35) to
~55, beside a ~300-400 us decode; with two DataLoader workers the stream ran 1.02-1.18x as fast
(benchmarks/loader_throughput.py, three runs). The shuffle buffer holds these small index entries
instead of encoded samples: streaming 2,000 7-channel 128 px crops (229 KB each) in one process
with the default buffer of 1000 grew the process by 26 MB, against 287 MB through the tar.

Stages, composed by shards.stream in this order (the same order, and the same seeded shuffle, as
the tar path, which gives the same samples in the same order when no sample is bad):

    shard_index       the manifest -> {shard location: its entries in tar order}, or None
    indexed_samples   shard locations -> {"__key__", "__shard__", "crop_kind", "__entry__"}
    read_indexed      + the pixel member's bytes, "__pixels__"; + "meta" when labels are wanted

Trust: each member is read with the 512-byte tar header before it, which must name this key and
member and state this size, so a manifest that does not describe its shards (hand-edited, or a
shard replaced) fails loudly, naming the sample, instead of feeding another sample's pixels; the
pixels' own checks (PNG CRCs, .npy header) still run when they are decoded. `shards verify`
checks every span against the tar.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from shards import schema, storage
from shards.sample_stages import Handler, Sample, SampleError
from shards.tar_members import BLOCK, NAME_MAX, octal_field

_COLUMNS = ["key", "shard", "split", "crop_kind", "channels", "dtype", *schema.MEMBER_SPAN_COLUMNS]
_OPEN_SHARDS = 64  # descriptors a reader keeps open: its shuffle buffer spans a few shards
_SIZE_FIELD = slice(124, 136)  # a ustar header's size field


class IndexedSample(NamedTuple):
    key: str
    crop_kind: str
    pixels: str  # the pixel member's extension (schema.PIXEL_MEMBERS)
    pixels_offset: int
    pixels_size: int
    json_offset: int
    json_size: int


ShardIndex = dict[str, tuple[IndexedSample, ...]]


def shard_index(root: str, split: str, crop_kinds: frozenset[str] | None) -> ShardIndex | None:
    """Each shard's samples of `split` (and of `crop_kinds`, None: all) in tar order, keyed by the
    shard's location (storage.join(root, its path)); None when the set is on an object store or
    its manifest has no member spans (an older ingest)."""
    if storage.is_uri(root):
        return None
    path = storage.join(root, schema.MANIFEST_FILE)
    if not schema.has_member_spans(storage.parquet_footer(path)[1]):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    table = storage.read_parquet(path, columns=_COLUMNS)
    wanted = pc.equal(table["split"], split)
    if crop_kinds is not None:
        kinds = pa.array(sorted(crop_kinds), type=pa.string())
        wanted = pc.and_(wanted, pc.is_in(table["crop_kind"], value_set=kinds))
    table = table.filter(wanted)
    if any(table[name].null_count for name in schema.MEMBER_SPAN_COLUMNS):
        raise ValueError(f"{path}: some member spans are empty; `shards index {root} --force` rewrites them")
    columns = [table[name].to_pylist() for name in _COLUMNS]  # by column: a row dict each cost 3x the time
    entries: dict[str, list[IndexedSample]] = {}
    member = functools.lru_cache(schema.pixel_member)
    for key, shard, _, crop_kind, channels, dtype, *spans in zip(*columns):
        entries.setdefault(shard, []).append(IndexedSample(key, crop_kind, member(channels, dtype), *spans))
    return {storage.join(root, shard): tuple(sorted(found, key=lambda e: e.pixels_offset))
            for shard, found in entries.items()}


def indexed_samples(shards: Iterable[str], index: ShardIndex) -> Iterator[Sample]:
    """The index's entries of each shard in turn, as samples not yet read."""
    for shard in shards:
        for entry in index.get(shard, ()):
            yield {"__key__": entry.key, "__shard__": shard, "crop_kind": entry.crop_kind, "__entry__": entry}


def read_indexed(samples: Iterable[Sample], index: ShardIndex, handler: Handler, *, labels: bool) -> Iterator[Sample]:
    """Each sample's pixel member read at its span (+ "__pixels__" and the member's bytes); with
    labels, its json too, parsed (+ "meta"). A sample that cannot be read goes to the handler.
    One pass (indexed_samples' shards, then shuffled): a shard's descriptor is closed after its
    last sample, so only shards the shuffle buffer spans are open, at most _OPEN_SHARDS (the least
    recently opened closes first; reopening one costs ~10 us)."""
    files: dict[str, int] = {}  # shard -> descriptor, the least recently opened first
    left: dict[str, int] = {}  # shard -> its samples this pass not yet read
    try:
        for listed in samples:
            entry: IndexedSample = listed["__entry__"]
            shard = listed["__shard__"]
            sample = None
            try:
                sample = _read(files, shard, entry, labels)
            except Exception as exc:  # bytes from disk: any failure is this sample's, for the handler
                handler(SampleError(shard, entry.key, exc))
            finally:
                left[shard] = left.get(shard, len(index[shard])) - 1
                if not left[shard] and shard in files:
                    os.close(files.pop(shard))
            if sample is not None:
                yield sample
    finally:
        for fd in files.values():
            os.close(fd)


def _read(files: dict[str, int], shard: str, entry: IndexedSample, labels: bool) -> Sample:
    """A new sample of entry's members (the shuffle buffer still holds the listed one while it
    empties its tail, and must not hold every read member with it)."""
    fd = _descriptor(files, shard)
    sample = {"__key__": entry.key, "__shard__": shard, "crop_kind": entry.crop_kind, "__pixels__": entry.pixels,
              entry.pixels: _member(fd, entry.key, entry.pixels, entry.pixels_offset, entry.pixels_size)}
    if labels:
        raw = _member(fd, entry.key, schema.META_JSON, entry.json_offset, entry.json_size)
        meta = schema.SampleMeta.from_json_bytes(bytes(raw))
        if meta.key != entry.key:
            raise schema.SchemaError(f"its json names key {meta.key!r}")
        sample["meta"] = meta
    return sample


def _descriptor(files: dict[str, int], shard: str) -> int:
    fd = files.get(shard)
    if fd is None:
        if len(files) >= _OPEN_SHARDS:
            os.close(files.pop(next(iter(files))))
        fd = files[shard] = os.open(shard, os.O_RDONLY)
    return fd


def _member(fd: int, key: str, ext: str, offset: int, size: int) -> memoryview:
    """The data of member key.ext, at `offset` with `size` bytes as the manifest says, read in one
    call with its tar header, which must agree."""
    if offset < BLOCK or size < 0:
        raise schema.SchemaError(f"the manifest places .{ext} at byte {offset} ({size} bytes), "
                                 f"which no tar member can have")
    block = os.pread(fd, BLOCK + size, offset - BLOCK)
    if len(block) != BLOCK + size:
        raise schema.SchemaError(f"the shard ends before the .{ext} member the manifest places at byte "
                                 f"{offset} ({size} bytes): truncated, or not the shard the manifest describes")
    name = f"{key}.{ext}".encode()
    if (block[:len(name)] != name or (len(name) < NAME_MAX and block[len(name)] != 0)
            or block[_SIZE_FIELD] != octal_field(size, 12)):
        raise schema.SchemaError(f"the tar header before byte {offset} is not {key}.{ext} of {size} bytes, "
                                 f"as the manifest says: the manifest does not describe this shard "
                                 f"(run `shards verify`)")
    return memoryview(block)[BLOCK:]
