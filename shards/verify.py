"""`shards verify`: check a shard set against its card and manifest, shard by shard.

A shard set is trusted by training only as far as this check goes, so it reads everything: every
shard's size and sha256 against dataset.json, every tar member name, every sample's json against
schema.SampleMeta, every pixel and mask member decoded (PNG via OpenCV, .npy with
allow_pickle=False; nothing is ever unpickled), and every manifest row against the sample it names
(its shape, and where it has them, its member spans: where the tar holds its pixels and json).
Problems are collected, never raised, so one run names every problem in every bad shard. A set on
an object store (`shards verify s3://bucket/prefix`, see shards.storage) is checked the same way,
each shard downloaded once into an anonymous temporary file: the check of an upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import re
import signal
import tarfile
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from shards import codecs, schema, storage
from shards.cpu_budget import usable_cpus
from shards.progress_bar import progress_bar
from shards.writer import file_sha256, is_temporary

_SHARD_PATH_RE = re.compile(r"^(?P<split>[a-z]+)/shard-\d{6}\.tar$")
_END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE  # a tar ends with two zero blocks
_MANIFEST_CHECKED = ("key", "shard", "split", "height", "width", "channels", "dtype")


@dataclass
class ShardCheck:
    """What one shard holds and what is wrong with it. `samples` maps each key read to the
    (height, width, channels, dtype) its json states, and `spans` each key to its members'
    {extension: (data offset, size)} in the tar, for the manifest cross-check."""

    path: str
    problems: list[str] = field(default_factory=list)
    samples: dict[str, tuple[int, int, int, str] | None] = field(default_factory=dict)
    spans: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    opened: bool = False


def _few(keys: list[str], limit: int = 3) -> str:
    """Name a few keys: a truncated shard can miss thousands, and one line should stay readable."""
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _check_pixels(key: str, ext: str, data: bytes, meta: schema.SampleMeta | None) -> tuple[list[str], tuple | None]:
    """Decode one pixel member and compare it with its json; returns (problems, (H, W) or None)."""
    try:
        pixels = codecs.decode_pixels(ext, data)
    except codecs.DecodeError as exc:
        return [f"{key}: {exc}"], None
    height, width = pixels.shape[:2]
    if meta is None:
        return [], (height, width)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    found = {"height": height, "width": width, "channels": channels, "dtype": str(pixels.dtype)}
    problems = [f"{key}: {name} {getattr(meta, name)} in json, {value} in pixels"
                for name, value in found.items() if getattr(meta, name) != value]
    expected_ext = schema.pixel_member(meta.channels, meta.dtype)
    if ext != expected_ext:
        problems.append(f"{key}: pixels stored as .{ext}, schema says .{expected_ext} for "
                        f"{meta.channels}-channel {meta.dtype}")
    return problems, (height, width)


def check_sample(key: str, members: dict[str, list[bytes]], split: str) -> tuple[list[str], tuple | None]:
    """One sample's members (extension -> payloads) -> (problems, (H, W, C, dtype) from its json)."""
    problems = [f"{key}: {len(datas)} .{ext} members" for ext, datas in members.items() if len(datas) > 1]
    pixel_exts = [ext for ext in schema.PIXEL_MEMBERS if ext in members]
    if len(pixel_exts) != 1:
        problems.append(f"{key}: {len(pixel_exts)} pixel members (png/npy), expected exactly 1")
    meta = None
    if schema.META_JSON not in members:
        problems.append(f"{key}: no json member")
    else:
        try:
            meta = schema.SampleMeta.from_json_bytes(members[schema.META_JSON][0])
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(f"{key}: json is not a valid SampleMeta ({exc})")
    if meta is not None:
        if meta.key != key:
            problems.append(f"{key}: json key is {meta.key!r}")
        if meta.split != split:
            problems.append(f"{key}: json split is {meta.split!r} in a {split} shard")
        for member, flag in ((schema.MASK_PNG, meta.has_mask), (schema.FOV_PNG, meta.has_fov)):
            if flag != (member in members):
                problems.append(f"{key}: json has_{member.split('.')[0]}={flag} but {member} member "
                                f"{'present' if member in members else 'absent'}")
    size = None
    if len(pixel_exts) == 1:
        found, size = _check_pixels(key, pixel_exts[0], members[pixel_exts[0]][0], meta)
        problems += found
    for member in schema.MASK_MEMBERS:
        if member not in members:
            continue
        try:
            mask = codecs.decode_mask(members[member][0])
        except codecs.DecodeError as exc:
            problems.append(f"{key}: {member}: {exc}")
        else:
            if size is not None and mask.shape != size:
                problems.append(f"{key}: {member} is {mask.shape[0]}x{mask.shape[1]}, pixels {size[0]}x{size[1]}")
    summary = None if meta is None else (meta.height, meta.width, meta.channels, meta.dtype)
    return problems, summary


def _read_samples(tar: tarfile.TarFile, check: ShardCheck, split: str) -> None:
    """Walk the members in order, checking each sample when its members end, so a shard is never
    held in memory whole. WebDataset groups consecutive members only, so a key seen again later
    would become a second sample: that is a problem of its own."""
    key, members = None, defaultdict(list)

    def finish() -> None:
        if key is None:
            return
        if key in check.samples:
            check.problems.append(f"{key}: members not consecutive (WebDataset would read two samples)")
        try:
            problems, check.samples[key] = check_sample(key, members, split)
        except Exception as exc:  # a verifier reports whatever bytes it meets; it must not crash on them
            problems, check.samples[key] = [f"{key}: check failed with {type(exc).__name__}: {exc}"], None
        check.problems.extend(problems)

    for info in tar:
        if not info.isfile():
            check.problems.append(f"member {info.name!r} is not a regular file")
            continue
        try:
            member_key, ext = schema.split_member_name(info.name)
        except schema.SchemaError as exc:
            check.problems.append(str(exc))
            continue
        if "/" in info.name or not schema.KEY_RE.match(member_key):
            check.problems.append(f"member {info.name!r}: {member_key!r} is not a valid sample key")
            continue
        if member_key != key:
            finish()
            key, members = member_key, defaultdict(list)
        check.spans.setdefault(member_key, {}).setdefault(ext, (info.offset_data, info.size))
        members[ext].append(tar.extractfile(info).read())
    finish()


@contextlib.contextmanager
def _readable_copy(location: str) -> Iterator[tuple[BinaryIO, str]]:
    """(a seekable file of the shard's bytes, their sha256): the file itself when local; for an
    object store, an anonymous temporary copy hashed as it downloads, so the shard is fetched
    once (the tar check then seeks in it)."""
    if not storage.is_uri(location):
        digest = file_sha256(Path(location))
        with open(location, "rb") as fh:
            yield fh, digest
        return
    sha = hashlib.sha256()
    with tempfile.TemporaryFile(prefix="medshards-verify-") as copy, storage.open_input(location) as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha.update(block)
            copy.write(block)
        copy.seek(0)
        yield copy, sha.hexdigest()


def check_shard(root: str, record: dict[str, Any]) -> ShardCheck:
    """Everything one shard can tell about itself (run in a worker process)."""
    check = ShardCheck(record["path"])
    location = storage.join(root, record["path"])
    split = record["path"].split("/", 1)[0]
    try:
        size = storage.size_of(location)  # one request: a missing shard raises
    except (FileNotFoundError, NotADirectoryError):
        check.problems.append("file missing")
        return check
    if size != record["bytes"]:
        check.problems.append(f"size {size} bytes, card says {record['bytes']}")
    try:
        with _readable_copy(location) as (fh, digest):
            if digest != record["sha256"]:
                check.problems.append(f"sha256 mismatch (file {digest[:12]}..., card {record['sha256'][:12]}...)")
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                check.opened = True
                _read_samples(tar, check, split)
                # tarfile stops quietly at a damaged header; the end-of-archive blocks tell the difference
                fh.seek(tar.offset)
                if fh.read(_END_OF_ARCHIVE) != bytes(_END_OF_ARCHIVE):
                    check.problems.append(f"no end-of-archive blocks at byte {tar.offset} (truncated or damaged)")
    except (tarfile.TarError, OSError, EOFError) as exc:
        check.problems.append(f"tar unreadable after {len(check.samples)} samples: {exc}")
    if len(check.samples) != record["samples"]:
        check.problems.append(f"{len(check.samples)} samples, card says {record['samples']}")
    return check


def check_card(card: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """Card-level consistency -> (problems, the shard records that are safe to open)."""
    problems, records = [], []
    splits = card.get("splits", {})
    for split in [s for s in schema.SPLITS if s in splits] + [s for s in splits if s not in schema.SPLITS]:
        entry = splits[split]
        if split not in schema.SPLITS:
            problems.append(f"unknown split {split!r}")
            continue
        for record in entry.get("shards", []):
            match = _SHARD_PATH_RE.match(str(record.get("path", "")))
            if match is None or match["split"] != split or not {"samples", "bytes", "sha256"} <= set(record):
                problems.append(f"{split}: malformed shard record {record!r}")
                continue
            records.append(record)
        listed = sum(r.get("samples", 0) for r in entry.get("shards", []))
        if listed != entry.get("samples"):
            problems.append(f"{split}: {entry.get('samples')} samples, but its shards hold {listed}")
    return problems, records


def unlisted_files(root: str | Path, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Tars in the split folders that the card does not list, and temp files of interrupted writes."""
    listed = {r["path"] for r in records}
    found = []
    for split in schema.SPLITS:
        for name in storage.list_folder(storage.join(root, split)):
            rel = f"{split}/{name}"
            if name.endswith(".tar") and rel not in listed:
                found.append((rel, "not listed in dataset.json"))
            elif is_temporary(name):
                found.append((rel, "temporary file left by an interrupted write"))
    return found


def check_manifest(root: str | Path, card: dict[str, Any], checks: list[ShardCheck]) -> list[str]:
    """Cross-check manifest rows with the samples read; shard-level findings go into `checks`,
    manifest-level ones are returned."""
    path = storage.join(root, schema.MANIFEST_FILE)
    if not storage.is_file(path):
        return ["missing: every sample is unaccounted for"]
    try:
        table = storage.read_parquet(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        return [f"unreadable as Parquet ({exc})"]
    missing_columns = [c for c in schema.MANIFEST_COLUMNS if c not in table.column_names]
    if missing_columns:
        return [f"lacks columns {missing_columns}"]
    spans = schema.has_member_spans(table.column_names)
    rows = table.select(list(_MANIFEST_CHECKED) + (list(schema.MEMBER_SPAN_COLUMNS) if spans else [])).to_pylist()
    problems = []
    duplicates = [k for k, n in Counter(r["key"] for r in rows).items() if n > 1]
    if duplicates:
        problems.append(f"{len(duplicates)} keys listed more than once: {_few(duplicates)}")
    by_shard: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_shard[row["shard"]][row["key"]] = row
    known = {c.path for c in checks}
    for shard in sorted(set(by_shard) - known, key=str):
        problems.append(f"{len(by_shard[shard])} rows name shard {shard!r}, which dataset.json does not list")
    for split, entry in card.get("splits", {}).items():
        in_split = sum(1 for r in rows if r["split"] == split)
        if in_split != entry.get("samples"):
            problems.append(f"{split}: {in_split} rows, card says {entry.get('samples')} samples")
    shard_of = {row["key"]: row["shard"] for row in rows}
    for check in checks:
        expected = by_shard.get(check.path, {})
        wrong_split = [k for k, r in expected.items() if r["split"] != check.path.split("/", 1)[0]]
        if wrong_split:
            check.problems.append(f"manifest split disagrees with the shard's folder for {_few(wrong_split)}")
        if not check.opened:
            continue
        missing = [k for k in expected if k not in check.samples]
        if missing:
            check.problems.append(f"{len(missing)} manifest keys not in the shard: {_few(missing)}")
        extra = [k for k in check.samples if k not in expected]
        for key in extra:
            where = f"under {shard_of[key]}" if key in shard_of else "not in manifest"
            check.problems.append(f"{key}: {where}")
        for key, stated in check.samples.items():
            row = expected.get(key)
            if row and stated and (row["height"], row["width"], row["channels"], row["dtype"]) != stated:
                check.problems.append(f"{key}: manifest says {row['height']}x{row['width']}x{row['channels']} "
                                      f"{row['dtype']}, json {stated[0]}x{stated[1]}x{stated[2]} {stated[3]}")
            if row and spans:
                check.problems += _span_problems(key, row, check.spans.get(key, {}))
    return problems


def _span_problems(key: str, row: dict[str, Any], found: dict[str, tuple[int, int]]) -> list[str]:
    """The manifest's member spans of one sample against where the tar has its members."""
    pixels = next((ext for ext in schema.PIXEL_MEMBERS if ext in found), None)
    problems = []
    for what, ext in (("pixels", pixels), ("json", schema.META_JSON)):
        stated = (row[f"{what}_offset"], row[f"{what}_size"])
        if ext in found and found[ext] != stated:  # a member not there is check_sample's to report
            problems.append(f"{key}: manifest places its {what} at byte {stated[0]} ({stated[1]} bytes), the tar's "
                            f".{ext} member is at byte {found[ext][0]} ({found[ext][1]} bytes)")
    return problems


def _check_all(root: str | Path, records: list[dict[str, Any]], workers: int) -> list[ShardCheck]:
    """Check shards, in parallel when workers > 1, returned in card order. forkserver, not fork:
    a caller (and tqdm's monitor) may have threads running, which a forked child would inherit
    mid-state; preloading this module imports it once in the server rather than in every worker."""
    with progress_bar(total=len(records), unit="shard", desc="verify") as bar:
        if workers <= 1 or len(records) <= 1:
            checks = []
            for record in records:
                checks.append(check_shard(str(root), record))
                bar.update()
            return checks
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        results: dict[int, ShardCheck] = {}
        with ProcessPoolExecutor(max_workers=min(workers, len(records)), mp_context=context,
                                 initializer=_leave_ctrl_c_to_the_parent) as pool:
            futures = {pool.submit(check_shard, str(root), record): i for i, record in enumerate(records)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update()
            except BaseException:  # Ctrl-C: the shards not yet started are not checked (the `with`
                pool.shutdown(cancel_futures=True)  # alone would check every one of them first)
                raise
    return [results[i] for i in range(len(records))]


def _leave_ctrl_c_to_the_parent() -> None:
    """In a check worker: Ctrl-C reaches the whole process group; the parent stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def verify(root: str | Path, card: dict[str, Any], *, workers: int | None = None) -> tuple[list, int, int]:
    """-> ([(file, problems) for every bad file: card, manifest, shards in card order, unlisted
    files], shards checked, samples read)."""
    card_problems, records = check_card(card)
    checks = _check_all(root, records, workers or usable_cpus())
    manifest_problems = check_manifest(root, card, checks)
    first_shard: dict[str, str] = {}
    for check in checks:
        for key in check.samples:
            if key in first_shard:
                check.problems.append(f"{key}: also in {first_shard[key]}")
            first_shard.setdefault(key, check.path)
    bad = [(schema.CARD_FILE, card_problems), (schema.MANIFEST_FILE, manifest_problems)]
    bad += [(c.path, c.problems) for c in checks]
    bad += [(rel, [why]) for rel, why in unlisted_files(root, records)]
    return [(name, problems) for name, problems in bad if problems], len(checks), sum(len(c.samples) for c in checks)


def run(root: str | Path, card: dict[str, Any], *, workers: int | None = None, out=None) -> int:
    """Print one line per bad file, naming all its problems, then a summary; exit code 0 or 1."""
    bad, shards, samples = verify(root, card, workers=workers)
    for name, problems in bad:
        print(f"FAIL {name}: " + "; ".join(problems), file=out)
    count = sum(len(problems) for _, problems in bad)
    if bad:
        print(f"verify {root}: FAIL, {count} problems in {len(bad)} files ({shards} shards, {samples} samples read)",
              file=out)
        return 1
    print(f"verify {root}: OK ({shards} shards, {samples} samples)", file=out)
    return 0
