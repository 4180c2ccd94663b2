"""Staged units: what is staged parses back exactly; a file cut short or foreign is recomputed."""

from __future__ import annotations

from collections import Counter

from ingest.pipeline import EncodedSample, Reject, UnitOutput
from ingest.staging import parse_staged, stage_path, stage_unit, staged_units
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
    assert stage_path(tmp_path, "u1").read_bytes() == data
    sidecar, members = parse_staged(data)
    assert [s["key"] for s in sidecar["samples"]] == ["k0", "k1"]
    assert sidecar["rejects"] == [{"source_path": "x.dcm", "reason": "undecodable DICOM: bad"}]
    assert sidecar["notes"] == {"input_bytes": 5}
    assert members["k0"]["png"] == b"\x00" * 10 and members["k1"]["mask.png"] == b"\x00\xff"
    assert schema.SampleMeta.from_json_bytes(members["k1"]["json"]).labels == {"a": 1}


def test_damaged_files_are_dropped_for_recomputation(tmp_path):
    data = stage_unit(tmp_path, "good", _output())
    stage_path(tmp_path, "short").write_bytes(data[:-3])
    stage_path(tmp_path, "foreign").write_bytes(b"not staged at all")
    assert staged_units(tmp_path, ["good", "short", "foreign", "absent"]) == {"good"}
    assert not stage_path(tmp_path, "short").exists() and not stage_path(tmp_path, "foreign").exists()
