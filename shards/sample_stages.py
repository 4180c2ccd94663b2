"""Reading stages: small generators over sample dicts, from shard paths to decoded pixels, composed
in order by shards.stream (and by `shards stats`). Every sample carries "__key__" and "__shard__";
each stage adds what it makes:

    tar_samples        shard paths -> {ext: bytes} per key (extensions from the schema only)
    parse_meta         + "meta": schema.SampleMeta, its "crop_kind", "__pixels__": which pixel member
    select_crop_kinds  drops samples of other crop kinds
    shuffle            a seeded shuffle buffer (of encoded samples: only what comes out is decoded)
    decode             + "pixels": (H, W) or (H, W, C) uint8/uint16, the whole image exactly as
                       stored (`shards stats`; the stream decodes only each crop's rectangle:
                       shards.stream_stages.decode_augmented)

Error policy: a stage that can meet bad bytes takes a `handler`, called with a SampleError that
names the shard and the key; the handler raises to stop the stream (raise_sample_error, the
default) or returns to skip the sample (warn_and_skip). Nothing is ever unpickled: a member
whose extension the schema does not list (.pickle, .pyd, ...) is never read, and its sample is
rejected. No torch here: `shards ls` and friends import this module's users quickly.
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from shards import codecs, schema, storage
from shards.tar_members import TarFormatError, TarReader

Sample = dict[str, Any]
_READ_BUFFER = 1 << 20


class SampleError(ValueError):
    """A sample (or a whole shard, key None) that could not be read; names where it is."""

    def __init__(self, shard: str, key: str | None, cause: BaseException | str):
        where = f"{shard}: sample {key}" if key else shard
        super().__init__(f"{where}: {cause}")
        self.shard, self.key, self.cause = shard, key, cause

    def __reduce__(self):  # pickled as its three arguments: a Ray Train worker's error reaches the driver so
        return SampleError, (self.shard, self.key, self.cause)


Handler = Callable[[SampleError], None]


def raise_sample_error(error: SampleError) -> None:
    raise error


def warn_and_skip(error: SampleError) -> None:
    warnings.warn(f"skipping a bad sample: {error}", stacklevel=2)


# A run's choice for a sample that cannot be read (the trainer's data.bad_samples, the probe's
# --bad-samples): stop naming it, or warn and skip it.
BAD_SAMPLE_HANDLERS: dict[str, Handler] = {"stop": raise_sample_error, "skip": warn_and_skip}


class CountingHandler:
    """Wraps a handler and counts the samples it let the stream skip (it returned, not raised)."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.skipped = 0

    def __call__(self, error: SampleError) -> None:
        self.handler(error)
        self.skipped += 1


def _shard_samples(reader: TarReader, shard: str, handler: Handler, read: frozenset[str]) -> Iterator[Sample]:
    """Consecutive members sharing a key -> one sample. Members with an extension in `read` are
    read; other known ones are recorded as present (None) without reading their bytes."""
    seen: set[str] = set()
    sample: Sample | None = None
    problem: str | None = None
    for entry in itertools.chain(reader, [None]):
        key = None if entry is None else entry.name.split(".", 1)[0]
        if sample is not None and key != sample["__key__"]:
            if problem is None:
                yield sample
            else:
                handler(SampleError(shard, sample["__key__"], problem))
            sample = None
        if entry is None:
            return
        if sample is None:
            sample, problem = {"__key__": key, "__shard__": shard}, None
            if key in seen:
                problem = "its members are not consecutive in the tar (read as two samples)"
            seen.add(key)
        if problem is not None:
            continue
        try:
            _, ext = schema.split_member_name(entry.name)
        except schema.SchemaError as exc:
            problem = f"{exc}; medshards reads only {schema.ALL_MEMBERS} and never unpickles"
            continue
        if not entry.regular:
            problem = f"member {entry.name!r} is a tar type {entry.typeflag!r} entry, not a regular file"
        elif not schema.KEY_RE.match(key):
            problem = f"member {entry.name!r}: {key!r} is not a valid sample key ({schema.KEY_RE.pattern})"
        elif ext in sample:
            problem = f"two .{ext} members"
        else:
            sample[ext] = reader.read() if ext in read else None


def tar_samples(shards: Iterable[str], handler: Handler, *,
                read: Iterable[str] = schema.ALL_MEMBERS) -> Iterator[Sample]:
    """Shard paths -> raw samples, shard by shard, members in tar order. A shard that cannot be
    read (missing, truncated, damaged header) goes to the handler once, after its good samples."""
    read = frozenset(read)
    for shard in shards:
        try:
            with storage.open_input(shard, _READ_BUFFER) as fh:
                yield from _shard_samples(TarReader(fh), shard, handler, read)
        except (OSError, TarFormatError) as exc:
            handler(SampleError(shard, None, exc))


def parse_meta(samples: Iterable[Sample], handler: Handler) -> Iterator[Sample]:
    for sample in samples:
        try:
            pixels = [ext for ext in schema.PIXEL_MEMBERS if ext in sample]
            if len(pixels) != 1:
                raise schema.SchemaError(f"{len(pixels)} pixel members (png/npy), expected exactly 1")
            if sample.get(schema.META_JSON) is None:
                raise schema.SchemaError("no json member")
            meta = schema.SampleMeta.from_json_bytes(sample.pop(schema.META_JSON))
            if meta.key != sample["__key__"]:
                raise schema.SchemaError(f"its json names key {meta.key!r}")
        except Exception as exc:  # bytes from disk: any failure is this sample's, for the handler
            handler(SampleError(sample["__shard__"], sample["__key__"], exc))
            continue
        sample["meta"] = meta
        sample["crop_kind"] = meta.crop_kind
        sample["__pixels__"] = pixels[0]
        yield sample


def select_crop_kinds(samples: Iterable[Sample], crop_kinds: frozenset[str] | None) -> Iterator[Sample]:
    if crop_kinds is None:
        yield from samples
        return
    for sample in samples:
        if sample["meta"].crop_kind in crop_kinds:
            yield sample


def shuffle(samples: Iterable[Sample], size: int, rng: random.Random) -> Iterator[Sample]:
    """A shuffle buffer of `size` samples (still encoded: decoding only what comes out)."""
    buffer: list[Sample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def check_channels(found: int, channels: int | None) -> None:
    """SchemaError unless an image's channel count is the shard set's (None: any)."""
    if channels is not None and found != channels:
        raise schema.SchemaError(f"{found} channels; the shard set's pixel_stats have {channels}")


def decode(samples: Iterable[Sample], handler: Handler, *, channels: int | None = None) -> Iterator[Sample]:
    """Pixels exactly as stored; the channel count, when given, must be the shard set's (its
    pixel_stats')."""
    for sample in samples:
        try:
            pixels = codecs.decode_pixels(sample["__pixels__"], sample[sample["__pixels__"]])
            check_channels(1 if pixels.ndim == 2 else pixels.shape[2], channels)
        except Exception as exc:  # bytes from disk: any failure is this sample's, for the handler
            handler(SampleError(sample["__shard__"], sample["__key__"], exc))
            continue
        yield {"__key__": sample["__key__"], "__shard__": sample["__shard__"], "meta": sample["meta"], "pixels": pixels}
