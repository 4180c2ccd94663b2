"""Staged units: what is staged reads and parses back exactly; a record cut short, damaged or
foreign is not taken for a finished unit (it is recomputed), and records before it still are."""

from __future__ import annotations

from collections import Counter

from ingest.pipeline import EncodedSample, Reject, UnitOutput
from ingest.staging import JOURNAL_GLOB, finish_staging, parse_staged, read_staged, stage_unit, staged_units
from shards import schema


def _output() -> UnitOutput:
    samples = []
    for i in range(2):
        meta = schema.SampleMeta(key=f"k{i}", source="s", patient="p", split="train", crop_kind="random",
                                 crop_box=(0, 0, 4, 4), source_size=(8, 8), height=4, width=4, channels=1,
                                 dtype="uint8", labels={"a": i}, source_fingerprint="f" * 64, has_mask=i == 1)
        members = {"png": bytes([i]) * (10 + i)} | ({"mask.png": b"\x00\xff"} if i == 1 else {})
        samples.append(EncodedSample(meta, members, [1.0], [2.0], 16))
    return UnitOutput(samples=samples, rejects=[Reject("x.dcm", "undecodable DICOM: bad")], notes=Counter(input_bytes=5))


def test_round_trip(tmp_path):
    data = stage_unit(tmp_path, "u1", _output())
    finish_staging()
    assert read_staged(staged_units(tmp_path, ["u1"])["u1"]) == data
    sidecar, members = parse_staged(data)
    assert [s["key"] for s in sidecar["samples"]] == ["k0", "k1"]
    assert sidecar["rejects"] == [{"source_path": "x.dcm", "reason": "undecodable DICOM: bad"}]
    assert sidecar["notes"] == {"input_bytes": 5}
    assert members["k0"]["png"] == b"\x00" * 10 and members["k1"]["mask.png"] == b"\x00\xff"
    assert schema.SampleMeta.from_json_bytes(members["k1"]["json"]).labels == {"a": 1}


def test_units_share_a_journal_and_only_wanted_ones_are_listed(tmp_path):
    payloads = {f"u{i}": stage_unit(tmp_path, f"u{i}", _output()) for i in range(3)}
    finish_staging()
    assert len(list(tmp_path.glob(JOURNAL_GLOB))) == 1
    found = staged_units(tmp_path, ["u0", "u2", "absent"])
    assert sorted(found) == ["u0", "u2"] and read_staged(found["u2"]) == payloads["u2"]
    assert sorted(staged_units(tmp_path)) == ["u0", "u1", "u2"]


def test_a_damaged_or_cut_record_ends_what_its_journal_counts(tmp_path):
    for unit in ("good", "flipped", "after"):
        stage_unit(tmp_path, unit, _output())
    finish_staging()
    journal = next(tmp_path.glob(JOURNAL_GLOB))
    ref = staged_units(tmp_path)["flipped"]
    raw = bytearray(journal.read_bytes())
    raw[ref.offset + 5] ^= 0xFF  # one payload byte of the middle record
    journal.write_bytes(bytes(raw))
    assert sorted(staged_units(tmp_path)) == ["good"]
    journal.write_bytes(bytes(raw[: ref.offset + 3]))  # a run killed while writing "flipped"
    assert sorted(staged_units(tmp_path)) == ["good"]
    (tmp_path / "units-1-foreign.journal").write_bytes(b"not staged at all")
    assert sorted(staged_units(tmp_path)) == ["good"]
