"""A sample's JSON member: written and read back as the same SampleMeta, and anything else refused
with the field named."""

from __future__ import annotations

import dataclasses
import json

import pytest

from shards import schema


def meta(**changes) -> schema.SampleMeta:
    fields = dict(key="cbis0a1blesion1", source="cbis", patient="p3f2", split="train", crop_kind="lesion",
                  crop_box=(10, 20, 234, 244), source_size=(300, 260), height=224, width=224, channels=1,
                  dtype="uint16", labels={"pathology": "BENIGN", "mass_shape": ["OVAL", "LOBULATED"]},
                  source_fingerprint="ab" * 16)
    return schema.SampleMeta(**{**fields, **changes})


def test_json_round_trip_gives_the_same_meta_with_defaults_and_tuples():
    original = meta(pixel_spacing_mm=(0.05, 0.05), extra={"abnormality_id": 1})
    back = schema.SampleMeta.from_json_bytes(original.to_json_bytes())
    assert back == original
    assert isinstance(back.crop_box, tuple) and isinstance(back.pixel_spacing_mm, tuple)
    plain = schema.SampleMeta.from_json_bytes(json.dumps(
        {k: v for k, v in json.loads(meta().to_json_bytes()).items() if k not in ("extra", "view", "has_mask")}).encode())
    assert (plain.view, plain.has_mask, plain.extra) == (None, False, {})
    other = schema.SampleMeta.from_json_bytes(meta().to_json_bytes())
    assert plain.extra is not other.extra  # each sample its own dict
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.split = "val"


def test_missing_unknown_and_invalid_fields_are_named():
    raw = json.loads(meta().to_json_bytes())
    without = {k: v for k, v in raw.items() if k not in ("patient", "labels")}
    with pytest.raises(schema.SchemaError, match=r"lacks the fields \['labels', 'patient'\]"):
        schema.SampleMeta.from_json_bytes(json.dumps(without).encode())
    with pytest.raises(schema.SchemaError, match=r"unknown metadata fields \['patient_name'\]"):
        schema.SampleMeta.from_json_bytes(json.dumps({**raw, "patient_name": "x"}).encode())
    with pytest.raises(schema.SchemaError, match="split 'holdout'"):
        schema.SampleMeta.from_json_bytes(json.dumps({**raw, "split": "holdout"}).encode())
    with pytest.raises(schema.SchemaError, match="not an object"):
        schema.SampleMeta.from_json_bytes(b"[1, 2]")
