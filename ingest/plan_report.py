"""`ingest SOURCE ... --dry-run`: what a job would do, from its plan alone, before hours of decoding.

Planning already reads what a source needs to decide every unit (CSVs and sheets, DICOM headers,
TIFF headers, file existence), assigns the splits by patient and rejects what cannot be used. The
report says how many images and patients each split would get, which inputs planning rejects and
why, the source's notes, and what the output folder would do (start, resume, or refuse). Nothing
is written, not even the output folder; the pixel-level rejects (an undecodable image, an empty ROI
mask) only the run itself can find.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ingest.distinct_count import DistinctCount
from ingest.out_lock import busy_message, writer_of
from ingest.pipeline import STAGING_DIR, IngestJob, out_state, refusal
from ingest.progress import progress_records
from shards import schema

SHOWN_REJECTS = 5


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe_plan(job: IngestJob) -> tuple[str, str | None]:
    """(the report, why the run would refuse the output folder or None)."""
    images: dict[str, DistinctCount] = defaultdict(DistinctCount)  # an archive's paths: 8 bytes each, no set
    patients: dict[str, set[str]] = defaultdict(set)
    for unit in job.units:
        split = unit.payload.split
        images[split].add_text(unit.source_path)
        patients[split].add(unit.payload.patient)  # a pseudonym: the plan holds no raw patient ID
    total_images = DistinctCount().union(*images.values()).count()
    total_patients = len(set().union(*patients.values())) if patients else 0
    lines = [f"dry run of ingest {job.source}: nothing written",
             f"plan: {_count(total_images, 'image')} of {_count(total_patients, 'patient')} in "
             f"{_count(len(job.units), 'work unit')}"]
    for split in (*schema.SPLITS, *sorted(set(images) - set(schema.SPLITS))):
        if split in images:
            lines.append(f"  {split}: {_count(images[split].count(), 'image')}, {_count(len(patients[split]), 'patient')}")
    rejects = job.planning_rejects
    if rejects:
        reasons = Counter(reject.reason_kind for reject in rejects)
        lines.append(f"rejected at planning: {len(rejects)} inputs ("
                     + "; ".join(f"{reason} x{n}" for reason, n in reasons.most_common()) + ")")
        lines.extend(f"  {reject.source_path}: {reject.reason}" for reject in rejects[:SHOWN_REJECTS])
        if len(rejects) > SHOWN_REJECTS:
            lines.append(f"  ... and {len(rejects) - SHOWN_REJECTS} more (all of them go to {schema.REJECTS_FILE} in a run)")
    for key, value in sorted(job.notes.items()):
        lines.append(f"note: {key}: {value}")
    state = out_state(job)
    reason = refusal(job, state)
    if holder := writer_of(job.out):  # whatever the folder holds, the run would not get in now
        reason = busy_message(job.out, holder)
        lines.append(f"output: the run would refuse: {reason}")
    elif job.overwrite and state != "new":
        lines.append(f"output: {job.out} would be cleared and rebuilt (--overwrite)")
    elif reason:
        lines.append(f"output: the run would refuse: {reason}")
    elif state == "resume":
        done = sum(1 for _ in progress_records(job.out / STAGING_DIR))
        lines.append(f"output: {job.out} holds this job interrupted; the run would resume after {done} of "
                     f"{len(job.units)} work units")
    else:
        lines.append(f"output: {job.out} (new)")
    return "\n".join(lines), reason
