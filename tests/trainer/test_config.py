import re
from pathlib import Path

import pytest

from trainer.config import ConfigError, config_from_dict, dump_config, load_config
from trainer.registry import unknown_options

CONFIGS = Path(__file__).resolve().parents[2] / "trainer" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path):
    config = load_config(path)
    again = config_from_dict(config.to_dict())
    assert again == config
    import yaml

    assert config_from_dict(yaml.safe_load(dump_config(config))) == config
    assert unknown_options(config.model.name, config.model.options)[0] == []  # each option is its method's


def test_dotted_overrides_are_typed(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("data:\n  sources:\n    - root: /s\n")
    config = load_config(path, ["optim.epochs=7", "optim.blr=0.001", "model.options.mask_ratio=0.9", "run.workers=3"])
    assert config.optim.epochs == 7 and config.optim.blr == 0.001 and config.run.workers == 3
    assert config.model.options == {"mask_ratio": 0.9}


@pytest.mark.parametrize("override, message", [
    ("optim.epoch=7", "unknown key"),
    ("optim.epochs=seven", "expected int"),
    ("run.workers=true", "expected int"),
    ("nonsense", "section.key=value"),
    ("data.sources=[{root:", r"its value is not YAML \(expected the node content, but found '<stream end>'\); quote it"),
    ("data.bad_samples=ignore", r"data.bad_samples: 'ignore' is not one of \['stop', 'skip'\]"),
    # out of range: refused here, not as a ZeroDivisionError or KeyError in every Ray worker
    ("data.batch_size=0", r"data.batch_size: must be 1 or more, got 0"),
    ("run.log_every_steps=0", r"run.log_every_steps: must be 1 or more, got 0"),
    ("run.images_every_steps=0", r"run.images_every_steps: must be 1 or more"),
    ("run.checkpoint_every_epochs=0", r"run.checkpoint_every_epochs: must be 1 or more"),
    ("run.precision=fp8", r"run.precision: must be auto, bf16, fp16 or fp32, got 'fp8'"),
    ("run.use_gpu=maybe", r"run.use_gpu: must be auto, true or false, got 'maybe'"),
    ("validation.every_epochs=-1", r"validation.every_epochs: must be 0 \(no validation\) or more, got -1"),
    ("validation.batch_size=0", r"validation.batch_size: must be null \(data.batch_size\) or 1 or more, got 0"),
    ("run.workers=0", r"run.workers: must be 1 or more, got 0"),
    ("run.keep_by=best", r"run.keep_by: must be newest or val_loss, got 'best'"),
    ("run.keep_by=val_loss", r"run.keep_by: val_loss ranks checkpoints by their validation pass, and "
                             r"validation.every_epochs is 0"),
    (("run.keep_by=val_loss", "validation.every_epochs=4", "run.checkpoint_every_epochs=3"),
     r"with validation.every_epochs=4 and run.checkpoint_every_epochs=3 most passes have none"),
    ("optim.blr=-0.001", r"optim.blr: must be a number above 0, got -0.001"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas: must be two numbers in \[0, 1\)"),
    ("optim.warmup_epochs=-1", r"optim.warmup_epochs: must be 0 or more, got -1"),
    ("data.sources=[{root: /s, weight: 0}]", r"data.sources\[0\].weight: must be a number above 0, got 0.0"),
])
def test_bad_overrides_say_what_is_wrong(tmp_path, override, message):
    path = tmp_path / "x.yaml"
    path.write_text("data:\n  sources:\n    - root: /s\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, list(override) if isinstance(override, tuple) else [override])  # a tuple: several


def test_a_config_without_data_is_refused(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim: {epochs: 1}\n")
    with pytest.raises(ConfigError, match="data.sources"):
        load_config(path)


def test_validating_on_the_split_a_source_trains_on_is_refused(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("data:\n  sources:\n    - root: /s\n    - {root: /t, split: val}\n")
    with pytest.raises(ConfigError, match=r"validation.split: 'val' is what data.sources\[1\] trains on"):
        load_config(path, ["validation.every_epochs=1"])
    assert load_config(path, ["validation.every_epochs=1", "validation.split=test"]).validation.split == "test"
    assert load_config(path).validation.every_epochs == 0  # no validation: nothing to refuse


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_a_shipped_config_validates_only_on_shards_its_ingest_command_gives_a_val_split(path):
    """Each config names the ingest command of its shards in its header; --val-fraction 0 there
    leaves no val split, and validating on one that is not there is refused before training."""
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    config = load_config(path)
    if re.search(r"--val-fraction 0(\.0*)?\s", header):
        assert config.validation.every_epochs == 0
    if config.run.keep_by == "val_loss":
        assert config.validation.every_epochs > 0


def test_relative_shard_roots_are_made_absolute_where_the_config_is_loaded(tmp_path, monkeypatch):
    """Ray Train workers run in a folder of their own, where a relative root names nothing."""
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["data.sources=[{root: shards/cbis}, {root: 's3://bucket/nih/'}, {root: /abs/set}]"])
    assert [s.root for s in config.data.sources] == [str(tmp_path / "shards" / "cbis"), "s3://bucket/nih", "/abs/set"]
