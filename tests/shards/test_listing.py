"""`shards ls` names the splits and their counts, from the card alone."""

from __future__ import annotations

import json

from shards.cli import main


def test_ls_names_splits_and_counts(shard_set, capsys):
    assert main(["ls", str(shard_set)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:4] for line in out.splitlines()
            if line.split()[:1] in (["train"], ["val"], ["test"])}
    assert rows == {"train": ["6", "4", "3"], "val": ["2", "1", "1"], "test": ["2", "1", "1"]}
    assert "source: toy" in out and "tool 0.1.0" in out
    assert "pathology: BENIGN 4, MALIGNANT 4" in out
    assert "crop kinds: lesion 8, cell 1, whole 1" in out
    assert "rejects: 2 (no_roi 2)" in out and "uint16.mean=2047.5" in out


def test_ls_json_is_the_card_summary(shard_set, capsys):
    assert main(["ls", str(shard_set), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"] == {"samples": 6, "patients": 4, "shards": 3,
                                          "bytes": summary["splits"]["train"]["bytes"],
                                          "crop_kinds": {"cell": 1, "lesion": 4, "whole": 1}}
    assert summary["manifest_rows"] == 10 and summary["rejects"]["count"] == 2


def test_ls_of_a_folder_that_is_not_a_shard_set(tmp_path, capsys):
    assert main(["ls", str(tmp_path)]) == 2
    assert "not a readable shard set" in capsys.readouterr().err
    (tmp_path / "dataset.json").write_text("{not json")
    assert main(["ls", str(tmp_path)]) == 2



def test_ls_of_a_folder_of_shard_sets_lists_each_and_the_unfinished(tmp_path, samples, build_shard_set, capsys):
    build_shard_set(tmp_path / "cbis-lesion", samples)
    build_shard_set(tmp_path / "small", samples[:4])
    (tmp_path / "being-written" / ".staging").mkdir(parents=True)  # an ingest running or interrupted there
    (tmp_path / "notes").mkdir()  # neither: left out
    assert main(["ls", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}: 2 shard sets")
    rows = {line.split()[0]: line.split()[1:5] for line in out.splitlines() if line.split()[:1] in (["cbis-lesion"], ["small"])}
    assert rows["cbis-lesion"] == ["toy", "6", "2", "2"]
    assert rows["small"][0] == "toy" and sum(map(int, rows["small"][1:])) == 4
    assert "its command resumes it): being-written" in out and "notes" not in out
    assert main(["ls", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(listed["sets"]) == ["cbis-lesion", "small"] and listed["unfinished"] == ["being-written"]
    assert listed["sets"]["cbis-lesion"]["manifest_rows"] == 10
