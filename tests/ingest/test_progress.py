"""The progress log: what is logged reads back exactly, in order; a record cut short, damaged or
foreign ends what the log counts (that unit is done again), and appending after a resume drops
that tail instead of leaving it between records."""

from __future__ import annotations

from collections import Counter

from ingest.pipeline import EncodedSample, Reject, UnitOutput
from ingest.progress import LOG_FILE, ProgressLog, UnitRecord, progress_records, read_progress, unit_sidecar
from shards.writer import Placement
from shards import schema


def _output(unit: int) -> UnitOutput:
    samples = []
    for i in range(2):
        meta = schema.SampleMeta(key=f"u{unit}k{i}", source="s", patient="p", split="train", crop_kind="random",
                                 crop_box=(0, 0, 4, 4), source_size=(8, 8), height=4, width=4, channels=1,
                                 dtype="uint8", labels={"a": i}, source_fingerprint="f" * 32, has_mask=i == 1)
        samples.append(EncodedSample(meta, {"png": bytes([i])}, [float(2**52 + i)], [2.0], 16))
    return UnitOutput(samples=samples, rejects=[Reject("x.dcm", "undecodable DICOM: bad")], notes=Counter(input_bytes=5))


def _record(unit: int) -> UnitRecord:
    spans = {"png": (512 + unit, 1), "json": (1536, 90)}
    sidecar = unit_sidecar(_output(unit), [Placement("train/shard-000000.tar", spans),
                                           Placement("train/shard-000001.tar", spans)])
    return UnitRecord(f"unit{unit}", sidecar, {"train": {"finished": [], "open": {"samples": unit, "size": 512}}})


def _log(staging, units, keep=0):
    with ProgressLog(staging, keep) as log:
        for unit in units:
            log.append(_record(unit))


def test_records_read_back_exactly_in_order(tmp_path):
    _log(tmp_path, range(3))
    records, good = read_progress(tmp_path)
    assert records == [_record(u) for u in range(3)]
    assert good == (tmp_path / LOG_FILE).stat().st_size
    first = records[0].sidecar
    assert [s["row"]["shard"] for s in first["samples"]] == ["train/shard-000000.tar", "train/shard-000001.tar"]
    assert first["samples"][0]["sums"] == [float(2**52)]  # exact through JSON
    assert {k: first["samples"][0]["row"][k] for k in schema.MEMBER_SPAN_COLUMNS} == {
        "pixels_offset": 512, "pixels_size": 1, "json_offset": 1536, "json_size": 90}
    assert first["rejects"] == [{"source_path": "x.dcm", "reason": "undecodable DICOM: bad"}]
    assert read_progress(tmp_path / "absent") == ([], 0)


def test_a_damaged_cut_or_foreign_tail_ends_the_log(tmp_path):
    _log(tmp_path, range(3))
    log = tmp_path / LOG_FILE
    raw = bytearray(log.read_bytes())
    one = len(raw) // 3
    damaged = raw.copy()
    damaged[one + 30] ^= 0xFF  # a byte of the second record
    log.write_bytes(bytes(damaged))
    assert [r.unit_id for r in read_progress(tmp_path)[0]] == ["unit0"]
    log.write_bytes(bytes(raw[: 2 * one + 7]))  # killed while writing the third
    records, good = read_progress(tmp_path)
    assert [r.unit_id for r in records] == ["unit0", "unit1"] and good == 2 * one
    log.write_bytes(bytes(raw[:one]) + b"not a record at all")
    assert [r.unit_id for r in read_progress(tmp_path)[0]] == ["unit0"]


def test_appending_after_resume_drops_the_tail(tmp_path):
    _log(tmp_path, range(2))
    log = tmp_path / LOG_FILE
    log.write_bytes(log.read_bytes()[:-5])  # the second record cut short
    records, good = read_progress(tmp_path)
    _log(tmp_path, [7], keep=good)
    assert [r.unit_id for r in read_progress(tmp_path)[0]] == ["unit0", "unit7"]


def test_records_stream_one_at_a_time_with_the_length_they_fill(tmp_path):
    _log(tmp_path, range(3))
    size = (tmp_path / LOG_FILE).stat().st_size
    with open(tmp_path / LOG_FILE, "ab") as fh:
        fh.write(b"a tail cut short")
    stream = progress_records(tmp_path)
    first, at = next(stream)
    assert first == _record(0) and 0 < at < size
    rest = list(stream)
    assert [r for r, _ in rest] == [_record(1), _record(2)] and rest[-1][1] == size
    assert read_progress(tmp_path) == ([_record(u) for u in range(3)], size)
