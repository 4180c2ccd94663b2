"""The ingest job runner shared by every source: parallel, resumable, deterministic.

A source turns its inputs into an ordered list of WorkUnits (one per source image) and a
module-level `process(unit) -> UnitOutput` that decodes, crops and encodes. This module runs the
units on worker processes (or in this process for workers=0) and appends each unit's samples to
the split's shards strictly in unit order, then logs the unit as done (ingest.progress); large
units are committed on a thread while the next unit is decoded. So:

- worker count and scheduling never change the bytes of a shard (order is the unit order);
- a killed run resumes after the last logged unit: finished units are neither recomputed nor
  rewritten, shards in progress are cut back to where the log says, and the shards end
  byte-identical to an uninterrupted run;
- a unit that fails, for any reason, becomes a reject naming its file and the job goes on.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import pickle
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ingest.job_summary import JobSummary
from ingest.out_lock import LOCK_FILE, FolderBusy, hold_out_lock
from ingest.pixel_moments import accumulate_moments, pixel_moments, train_pixel_stats
from ingest.progress import LOG_FILE, ProgressLog, UnitRecord, progress_records, unit_sidecar
from ingest.unit_ids import job_fingerprint, repeats_an_id, unit_ids
from ingest.unit_pool import map_units
from shards import card as card_io
from shards import schema
from shards.heap import keep_buffers_in_heap
from shards.atomic_files import atomic_write_bytes, remove_atomic_temps
from shards.manifest import ManifestRows, write_manifest
from shards.progress_bar import progress_bar
from shards.writer import ShardWriter, fold_checkpoint

STAGING_DIR = schema.STAGING_DIR
# A unit whose members add up to this travels out of band from a worker process (ingest.unit_pool)
# and is committed on a thread while the next unit arrives. Measured (paired runs, two workers): on a
# thread, 40 MB IF units ingest 1.25x faster (median of 8); 100 KB CBIS and 50 KB CheXpert units
# were 1.02x and 1.06x slower than committed in line. With workers=0 every unit is committed in line:
# the thread's Python (tar headers, the progress log) then contends for the GIL with the decoding
# in the same process, and in line was 1.06x faster (IF, median of 8 pairs, all 8 faster).
LARGE_UNIT_BYTES = 1 << 20
JOB_FILE = "job.json"


class IngestError(RuntimeError):
    """A job that cannot start or finish (bad arguments, an output folder in the wrong state)."""


class OutputWriteError(IngestError):
    """The job stopped part-way because its output could not be written (disk full, quota, an I/O
    error): what it finished is kept, and the same command resumes once the cause is fixed."""


@dataclass(frozen=True)
class Reject:
    """An input that could not be used. source_path is relative to the input root."""

    source_path: str
    reason: str

    @property
    def reason_kind(self) -> str:
        """The reason without file-specific detail, for counting ('empty ROI mask: abnormality 2' -> 'empty ROI mask')."""
        return self.reason.split(":", 1)[0]


@dataclass
class EncodedSample:
    meta: schema.SampleMeta
    members: dict[str, bytes]  # extension -> bytes, the json member excluded (it comes from meta)
    channel_sums: list[float] = field(default_factory=list)  # per channel: sum of pixel values
    channel_sq_sums: list[float] = field(default_factory=list)
    pixels: int = 0  # pixels per channel
    meta_json: bytes | None = None  # the json member, when made already (in a worker: _run_pooled_unit)

    @classmethod
    def of(cls, meta: schema.SampleMeta, members: dict[str, bytes], pixels: np.ndarray) -> EncodedSample:
        """The sample with, for a train sample, its stored pixels' sums (ingest.pixel_moments). The
        card's normalisation statistics are the train split's alone, so a val or test sample's
        sums would only be computed to be dropped (a tenth of an `ingest if` unit's work)."""
        if meta.split != "train":
            return cls(meta, members)
        return cls(meta, members, *pixel_moments(pixels))


@dataclass
class UnitOutput:
    samples: list[EncodedSample] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)  # e.g. input_bytes, random_shortfall

    def member_bytes(self) -> int:
        return sum(len(data) for sample in self.samples for data in sample.members.values())


@dataclass(frozen=True)
class WorkUnit:
    unit_id: str  # pseudonymous, stable across runs: names the staging files and seeds randomness
    source_path: str  # the main input file, relative to the root, for rejects
    payload: Any  # source-specific, picklable


_PROCESS: Callable[[WorkUnit], UnitOutput] | None = None


def _init_worker(process: Callable[[WorkUnit], UnitOutput]) -> None:
    global _PROCESS
    _PROCESS = process
    keep_buffers_in_heap()


def _run_unit(unit: WorkUnit) -> UnitOutput:
    try:
        return _PROCESS(unit)
    except Exception as exc:  # noqa: BLE001 -- any failure of one image becomes a reject, the job goes on
        return UnitOutput(rejects=[Reject(unit.source_path, f"unexpected error: {type(exc).__name__}: {exc}")])


@dataclass
class IngestJob:
    source: str
    out: Path
    units: Sequence[WorkUnit]  # a list, or a unit table read from disk (ingest.unit_table)
    process: Callable[[WorkUnit], UnitOutput]  # module-level function or functools.partial of one
    parameters: dict[str, Any]  # everything that changes the output; goes into the card
    tool_version: str
    workers: int = 1  # worker processes; 0: in this process (a debugger, a profiler; a crash ends the job)
    max_samples_per_shard: int = 1000
    planning_rejects: list[Reject] = field(default_factory=list)  # rejected before any decoding
    notes: dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    progress: bool = True

    def fingerprint(self) -> str:
        return job_fingerprint(self.parameters, self.units)


def out_state(job: IngestJob) -> str:
    """What the output folder holds for this job, read only: "new" (absent or empty), "resume" (an
    interrupted run of this job), "finished" (a finished shard set), "other-run" (an interrupted run
    with other inputs or parameters), "other-version" (this job, interrupted under another medshards
    version, whose crops may differ: resuming would mix the two in one set) or "foreign" (files
    that are no medshards run)."""
    out, job_file = job.out, job.out / STAGING_DIR / JOB_FILE
    if (out / schema.CARD_FILE).exists():
        return "finished"
    if job_file.exists():
        started = json.loads(job_file.read_text())
        if started["fingerprint"] != job.fingerprint():
            return "other-run"
        return "resume" if started.get("tool_version", job.tool_version) == job.tool_version else "other-version"
    if out.exists() and any(p.name not in (STAGING_DIR, LOCK_FILE) for p in out.iterdir()):
        return "foreign"
    return "new"


def refusal(job: IngestJob, state: str) -> str | None:
    """Why the job cannot run into an output folder in this out_state (None: it can)."""
    if job.overwrite:
        return None
    if state == "other-version":
        started = json.loads((job.out / STAGING_DIR / JOB_FILE).read_text())["tool_version"]
        return (f"{job.out} holds this job interrupted under medshards {started}, and this is {job.tool_version}: "
                f"finish it with {started}, or pass --overwrite to start over (one set, two versions' crops)")
    return {
        "finished": f"{job.out} already holds a finished shard set ({schema.CARD_FILE}); pass --overwrite to rebuild it",
        "other-run": f"{job.out} holds an interrupted run with other inputs or parameters; re-run that command to "
                     "resume it, or pass --overwrite to start over",
        "foreign": f"{job.out} is not empty and holds no medshards run; choose an empty folder or pass --overwrite",
    }.get(state)


def _prepare_out(job: IngestJob) -> Path:
    """Create or validate the output folder; returns the staging folder. Resumes a matching
    interrupted run, refuses to clobber a finished or different one unless overwrite."""
    out, staging = job.out, job.out / STAGING_DIR
    if job.overwrite:
        for name in (schema.CARD_FILE, schema.MANIFEST_FILE, schema.REJECTS_FILE):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        for split in schema.SPLITS:
            for shard in (out / split).glob(schema.SHARD_GLOB):
                shard.unlink()
    elif reason := refusal(job, out_state(job)):
        raise IngestError(reason)
    staging.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(staging / JOB_FILE, json.dumps({"fingerprint": job.fingerprint(), "source": job.source,
                                                       "tool_version": job.tool_version}).encode())
    return staging


def _open_writers(job: IngestJob, staging: Path, take: Callable[[dict[str, Any]], None]
                  ) -> tuple[dict[str, ShardWriter], int, int]:
    """The splits' writers resumed from the progress log's finished units, each unit's sidecar
    handed to take() as it is read (returned with how many units and the log's good length).
    With none logged they start afresh, and resuming from no checkpoint clears the split folders
    of shards and partial files a run killed before that left."""
    ids = unit_ids(job.units)
    folded: dict[str, dict[str, Any] | None] = dict.fromkeys(schema.SPLITS)
    resumed = good = 0
    for record, good in progress_records(staging):
        if next(ids, None) != record.unit_id:
            raise IngestError(f"{staging / LOG_FILE} does not follow this job's units; pass --overwrite to start over")
        take(record.sidecar)
        for split in schema.SPLITS:
            folded[split] = fold_checkpoint(folded[split], record.writers[split])
        resumed += 1
    try:
        writers = {split: ShardWriter(job.out, split, max_samples=job.max_samples_per_shard,
                                      resume=[folded[split]] if resumed else [])
                   for split in schema.SPLITS}
    except FileNotFoundError as exc:
        raise IngestError(f"cannot resume the interrupted run: {exc}; pass --overwrite to start over") from exc
    return writers, resumed, good


def _unit_outputs(job: IngestJob, pending: Sequence[WorkUnit]) -> Iterator[UnitOutput]:
    """The pending units' outputs in unit order, computed by job.workers worker processes
    (ingest.unit_pool: a worker that dies costs its unit, as a reject, and not the job), or here
    in the writing process for workers=0. One worker is a process too: a file whose decoder
    crashes (a segfault in a JPEG 2000 codec, SIGBUS reading a mapping of a file cut short or of
    a failing disk) would otherwise end the job, and its resumed run, at the same file for good.
    That costs a one-worker job about 5% on two cores (CheXpert and CBIS, median of 6 paired runs)."""
    if job.workers <= 0:
        _init_worker(job.process)
        yield from map(_run_unit, pending)
        return
    yield from map_units(pending, _run_pooled_unit, workers=job.workers,
                         init=functools.partial(_init_worker, job.process), died=_died)


def _run_pooled_unit(unit: WorkUnit) -> UnitOutput:
    """_run_unit in a worker process: a large unit's members are marked to travel out of band
    (ingest.unit_pool), and reach the parent as read-only memoryviews."""
    output = _run_unit(unit)
    for sample in output.samples:  # work the writing process, the job's one serial part, need not do
        sample.meta_json = sample.meta.to_json_bytes()
    if output.member_bytes() >= LARGE_UNIT_BYTES:
        for sample in output.samples:
            sample.members = {ext: pickle.PickleBuffer(data) for ext, data in sample.members.items()}
    return output


def _died(unit: WorkUnit, reason: str) -> UnitOutput:
    return UnitOutput(rejects=[Reject(unit.source_path, reason)])


def _write_unit(output: UnitOutput, writers: dict[str, ShardWriter]) -> dict[str, Any]:
    """The unit's samples appended to their splits' shards; returns its sidecar."""
    placements = [writers[s.meta.split].write({"__key__": s.meta.key, **s.members,
                                               schema.META_JSON: s.meta_json or s.meta.to_json_bytes()})
                  for s in output.samples]
    return unit_sidecar(output, placements)


def run_job(job: IngestJob) -> JobSummary:
    """Run (or resume) the job; returns its summary. Raises IngestError for unusable arguments."""
    if not job.units and not job.planning_rejects:
        raise IngestError(f"{job.source}: nothing to ingest (no images found)")
    if repeats_an_id(job.units):
        raise IngestError(f"{job.source}: duplicate work unit ids; this is a bug in the source")
    start = time.perf_counter()
    try:
        job.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # nothing started: an unusable folder, as a refused one is
        raise IngestError(f"cannot make the output folder {job.out}: {exc.strerror or exc}") from exc
    try:
        with hold_out_lock(job.out):
            return _run_locked(job, start)
    except FolderBusy as exc:
        raise IngestError(str(exc)) from None
    except FileNotFoundError:  # a folder or an interrupted run's file that is not there: said as it is
        raise
    except OSError as exc:  # inputs are read in the units (an unreadable one is a reject): this is the output
        raise OutputWriteError(_write_failure(job.out, exc)) from exc


def _write_failure(out: Path, exc: OSError) -> str:
    """What stopped the job, where, and what to do: a rerun resumes after the last finished unit."""
    what = exc.strerror or str(exc) or type(exc).__name__
    where = exc.filename or out
    text = f"writing {where} failed: {what}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        with contextlib.suppress(OSError):
            text += f" ({shutil.disk_usage(out).free / 1e6:.1f} MB free on {out}'s filesystem)"
    return (f"{text}. The images finished so far are kept; once that is fixed, run the same command again: "
            "it resumes after the last finished image")


def _run_locked(job: IngestJob, start: float) -> JobSummary:
    """run_job's work, with the output folder's lock held."""
    staging = _prepare_out(job)
    rows = ManifestRows()  # as Arrow chunks: a million-image job's rows would be GBs as dicts
    counts = card_io.RowCounts()
    rejects = list(job.planning_rejects)
    notes: Counter = Counter()
    stats: dict[str, Any] = {}

    def take(sidecar: dict[str, Any]) -> None:
        for sample in sidecar["samples"]:
            rows.append(sample["row"])
            counts.add(sample["row"])
            if sample["row"]["split"] == "train":
                accumulate_moments(stats, sample)
        rejects.extend(Reject(**r) for r in sidecar["rejects"])
        notes.update(sidecar["notes"])

    writers, resumed, good = _open_writers(job, staging, take)  # a resumed run's finished units go to take()
    bar = progress_bar(total=len(job.units), initial=resumed, unit="img", desc=f"ingest {job.source}",
                       enabled=job.progress)
    pending = job.units[resumed:]
    committing: Future | None = None

    def commit(unit: WorkUnit, output: UnitOutput, log: ProgressLog) -> None:
        sidecar = _write_unit(output, writers)
        take(sidecar)
        log.append(UnitRecord(unit.unit_id, sidecar, {s: w.checkpoint() for s, w in writers.items()}))
        bar.update(1)

    # Units are committed (shards, then the progress log) in order. From worker processes, a unit
    # of LARGE_UNIT_BYTES or more is committed on a thread while the next unit is received: hashing
    # and writing its members releases the GIL. Smaller ones are committed here, where the hand-over
    # would cost more than it hides, and so is every unit decoded in this process (workers=0).
    # Leaving the `with`, even on an error, waits for the unit being committed, so the log is whole
    # before the writers are suspended.
    try:
        with ProgressLog(staging, good) as log, ThreadPoolExecutor(1, thread_name_prefix="commit") as committer:
            for unit, output in zip(pending, _unit_outputs(job, pending)):
                if committing is not None:
                    committing.result()
                    committing = None
                if job.workers > 0 and output.member_bytes() >= LARGE_UNIT_BYTES:
                    committing = committer.submit(commit, unit, output, log)
                else:
                    commit(unit, output, log)
            if committing is not None:
                committing.result()
    except BaseException:
        for writer in writers.values():
            writer.suspend()  # the shards in progress stay, for the resumed run
        raise
    finally:
        bar.close()
    records = [rec for split in schema.SPLITS for rec in writers[split].close()]
    for split in schema.SPLITS:  # drop split folders left empty
        folder = job.out / split
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

    for name in (schema.MANIFEST_FILE, schema.REJECTS_FILE, schema.CARD_FILE):  # left by a killed run
        remove_atomic_temps(job.out / name)
    write_manifest(job.out / schema.MANIFEST_FILE, rows)
    # by hand, not dataclasses.asdict: a partial download can give 100k rejects
    reject_lines = "".join(json.dumps({"reason": r.reason, "source_path": r.source_path}) + "\n" for r in rejects)
    atomic_write_bytes(job.out / schema.REJECTS_FILE, reject_lines.encode())
    by_reason = dict(sorted(Counter(r.reason_kind for r in rejects).items()))
    input_bytes = int(notes.pop("input_bytes", 0))
    card_notes = {**job.notes, **dict(sorted(notes.items()))}
    card = card_io.build_card(
        source=job.source,
        tool_version=job.tool_version,
        parameters=job.parameters,
        counts=counts,
        records=records,
        pixel_stats=train_pixel_stats(stats),
        rejects_by_reason=by_reason,
        notes=card_notes,
    )
    card_io.write_card(job.out, card)  # last: its presence marks the shard set complete
    shutil.rmtree(staging)
    samples = counts.samples
    return JobSummary(
        out=job.out,
        units=len(job.units),
        samples={s: samples[s] for s in schema.SPLITS if samples[s]},
        rejects=len(rejects),
        rejects_by_reason=by_reason,
        seconds=time.perf_counter() - start,
        input_bytes=input_bytes,
        resumed_units=resumed,
        counts={name: n for name, n in card_notes.items() if type(n) is int and n},
    )

