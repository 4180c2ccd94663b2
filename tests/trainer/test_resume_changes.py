"""--resume against the run's saved config: what builds the weights may not change (refused before
anything is written), everything else may and is said."""

from __future__ import annotations

from pathlib import Path

from trainer.config import dump_config, load_config
from trainer.resume_changes import SAVED_CONFIG, resume_changes

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
