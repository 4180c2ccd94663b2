"""--resume against the run's saved config: what builds the weights may not change (refused before
anything is written), everything else may and is said."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shards import schema
from trainer.config import dump_config, load_config
from trainer.loop import check_data
from trainer.resume_changes import DATA_RECORD, SAVED_CONFIG, data_changes, data_record, resume_changes

PROJECT = Path(__file__).resolve().parents[2]
TINY = PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"


def saved_run(tmp_path: Path, *overrides: str) -> Path:
    run_dir = tmp_path / "tiny-cpu"
    run_dir.mkdir()
    (run_dir / SAVED_CONFIG).write_text(dump_config(load_config(TINY, [f"run.storage_path={tmp_path}", *overrides])))
    return run_dir


def test_model_changes_are_refused_and_the_rest_said(tmp_path):
    run_dir = saved_run(tmp_path)
    config = load_config(TINY, [f"run.storage_path={tmp_path}", "optim.epochs=8", "model.options.mask_ratio=0.6",
                                "data.image_size=96", "data.sources=[{root: more/shards, weight: 2}]"])
    refused, allowed = resume_changes(run_dir, config)
    assert refused == ["data.image_size 64 -> 96", "model.options.mask_ratio 0.75 -> 0.6"]
    assert allowed[-1] == "optim.epochs 4 -> 8"
    [sources] = [line for line in allowed if line.startswith("data.sources ")]
    assert sources.endswith("weight: 2.0}]") and "more/shards" in sources


def test_an_option_the_saved_run_did_not_set_is_a_change_too(tmp_path):
    run_dir = saved_run(tmp_path)
    config = load_config(TINY, [f"run.storage_path={tmp_path}", "model.options.num_landmarks=16"])
    assert resume_changes(run_dir, config) == (["model.options.num_landmarks (unset) -> 16"], [])


def test_the_same_config_or_no_saved_one_has_nothing_to_say(tmp_path):
    run_dir = saved_run(tmp_path, "optim.epochs=2")
    assert resume_changes(run_dir, load_config(TINY, [f"run.storage_path={tmp_path}", "optim.epochs=2"])) == ([], [])
    assert resume_changes(tmp_path / "elsewhere", load_config(TINY, ["data.image_size=96"])) == ([], [])
    (run_dir / SAVED_CONFIG).write_text("- not a mapping\n")
    assert resume_changes(run_dir, load_config(TINY, ["data.image_size=96"])) == ([], [])


def test_a_resume_that_would_build_another_model_stops_before_writing(lesion_shards, tmp_path, capsys):
    """Before, it ended in load_state_dict's traceback after config.yaml had been overwritten."""
    from trainer.pretrain import main

    args = ["--config", str(TINY), f"data.sources=[{{root: {lesion_shards}}}]", f"run.storage_path={tmp_path}",
            "run.use_ray=false", "optim.epochs=1", "data.batch_size=8"]
    assert main(args) == 0
    saved = (tmp_path / "tiny-cpu" / SAVED_CONFIG).read_text()
    capsys.readouterr()
    assert main([*args, "--resume", "optim.epochs=2", "model.options.fine_attention=explicit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pretrain: config error: --resume: run 'tiny-cpu' was trained with another model than this "
                          "config builds (model.options.fine_attention sdpa -> explicit)")
    assert (tmp_path / "tiny-cpu" / SAVED_CONFIG).read_text() == saved
    assert main([*args, "--resume", "optim.epochs=2", "optim.blr=0.05"]) == 0
    out = capsys.readouterr().out
    assert "resuming run 'tiny-cpu' with changes: optim.blr 0.1 -> 0.05; optim.epochs 1 -> 2" in out
    assert "finished after epoch 2/2" in out


def test_another_input_shape_is_refused_and_a_set_ingested_again_is_said(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / DATA_RECORD).write_text(json.dumps({"channels": 1, "image_size": 64,
                                                   "cards": {"/shards/a": "0123", "/shards/b": "4567"}}))
    same = {"channels": 1, "image_size": 64, "cards": {"/shards/a": "0123", "/shards/b": "4567"}}
    assert data_changes(run_dir, same) == ([], [])
    other = {"channels": 3, "image_size": 96, "cards": {"/shards/a": "89ab", "/shards/new": "cdef"}}
    refused, allowed = data_changes(run_dir, other)
    assert refused == ["input channels 1 -> 3", "input side 64 -> 96"]
    assert allowed == ["/shards/a: ingested again since the run last started (its card differs)"]  # new sets: config
    (run_dir / DATA_RECORD).write_text("{not json")
    assert data_changes(run_dir, other) == ([], [])
    assert data_changes(tmp_path / "no-run", other) == ([], [])


def test_a_card_that_changes_changes_the_record(lesion_shards, tmp_path):
    copy = tmp_path / "set"
    shutil.copytree(lesion_shards, copy)
    config = load_config(TINY, [f"data.sources=[{{root: {copy}}}]", "data.batch_size=8"])

    def record() -> dict:  # from the sources check_data opened, as pretrain makes it
        plan = check_data(config, 1)
        return data_record(config, plan.channels, plan.image_size, plan.sources)

    first = record()
    assert first["channels"] == 1 and first["image_size"] == 64 and list(first["cards"]) == [str(copy)]
    assert record() == first
    card = json.loads((copy / schema.CARD_FILE).read_text())
    card["tool_version"] = "another"
    (copy / schema.CARD_FILE).write_text(json.dumps(card))
    assert record()["cards"][str(copy)] != first["cards"][str(copy)]


def test_a_resume_on_a_set_ingested_again_says_so_and_on_another_shape_stops(lesion_shards, tmp_path, capsys):
    from trainer.pretrain import main

    shards = tmp_path / "shards"
    shutil.copytree(lesion_shards, shards)
    args = ["--config", str(TINY), f"data.sources=[{{root: {shards}}}]", f"run.storage_path={tmp_path}",
            "run.use_ray=false", "optim.epochs=1", "data.batch_size=8"]
    assert main(args) == 0
    record = json.loads((tmp_path / "tiny-cpu" / DATA_RECORD).read_text())
    assert record["channels"] == 1 and record["image_size"] == 64
    card = json.loads((shards / schema.CARD_FILE).read_text())
    card["tool_version"] = "ingested-again"
    (shards / schema.CARD_FILE).write_text(json.dumps(card))
    capsys.readouterr()
    assert main([*args, "--resume", "optim.epochs=2"]) == 0
    assert f"{shards}: ingested again since the run last started" in capsys.readouterr().out
    record["channels"] = 3  # as if the run had started on a 3-channel set
    (tmp_path / "tiny-cpu" / DATA_RECORD).write_text(json.dumps(record))
    assert main([*args, "--resume", "optim.epochs=3"]) == 2
    assert "(input channels 3 -> 1)" in capsys.readouterr().err
