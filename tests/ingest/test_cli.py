"""`ingest sample-data KIND` writes every source's layout, and `ingest KIND` accepts what it wrote."""

from __future__ import annotations

import json

import pytest

from ingest.cli import EXIT_OK, SAMPLE_DATA, SOURCES, main


def test_every_source_has_sample_data():
    assert set(SAMPLE_DATA) == set(SOURCES)


@pytest.mark.parametrize("kind", sorted(SAMPLE_DATA))
def test_sample_data_ingests_cleanly(kind, tmp_path, capsys):
    assert main(["sample-data", kind, str(tmp_path / "raw"), "--patients", "2"]) == EXIT_OK
    said = capsys.readouterr().out
    root, told = said.split(f"ingest {kind} ", 1)[1].split(" --out DIR", 1)
    out = tmp_path / "shards"
    extra = told.split()  # the command as printed: `ingest dicom` is told the generated IDs are public
    extra += ["--unlabeled", "keep"] if kind == "cmmd" else []  # CMMD's sheet lacks rows for some breasts, as the real one does
    code = main([kind, root, "--out", str(out), "--workers", "1", "--no-progress", "--size", "64", *extra])
    assert code == EXIT_OK, (capsys.readouterr().err, (out / "rejects.jsonl").read_text())
    card = json.loads((out / "dataset.json").read_text())
    assert card["source"] and card["rejects"]["count"] == 0
    assert sum(split["samples"] for split in card["splits"].values()) > 0


def test_an_object_store_out_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["cbis", str(tmp_path), "--out", "s3://bucket/cbis-lesion"])
    assert exit_.value.code == 2
    assert "ingest writes a folder" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no folder named "s3:" made here


@pytest.mark.parametrize(("source", "option", "value", "said"), [
    ("cbis", "--size", "0", "must be 1 or more, got 0"),
    ("cbis", "--size", "1.5", "'1.5' is not a whole number"),
    ("cbis", "--workers", "-2", "must be 0 or more, got -2"),
    ("cbis", "--shard-size", "0", "must be 1 or more, got 0"),
    ("cbis", "--val-fraction", "1.5", "must be at least 0 and below 1, got 1.5"),
    ("cbis", "--seed", "-1", "must be 0 or more, got -1"),
    ("cbis", "--margin", "-0.1", "must be 0 or more, got -0.1"),
    ("cbis", "--min-tissue", "nan", "must be between 0 and 1, got nan"),
    ("nih-cxr14", "--test-fraction", "1", "must be at least 0 and below 1, got 1.0"),
    ("drive", "--min-fov", "1.2", "must be between 0 and 1, got 1.2"),
    ("if", "--side", "0", "must be 1 or more, got 0"),
    ("dicom", "--random-per-image", "0", "must be 1 or more, got 0"),
    ("cmmd", "--random-side", "-5", "must be 1 or more, got -5"),
])
def test_an_option_out_of_range_is_a_usage_error_naming_it_before_anything_is_written(source, option, value, said,
                                                                                        tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([source, str(tmp_path), "--out", str(tmp_path / "out"), option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: {said}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
