"""cluster.submit: what it sends, and the errors it gives before touching a cluster. (A real
submission with --wait runs in tests/trainer/test_pretrain.py against a real local Ray cluster.)"""

from __future__ import annotations

import shlex

import pytest

from cluster.submit import EXIT_USAGE, PROJECT, bucket_locations, entrypoint, forwarded_env, main, runtime_env
from trainer.config import load_config


def test_entrypoint_quotes_overrides_and_places_resume_before_them():
    words = shlex.split(entrypoint("trainer/configs/x.yaml", ["run.name=a b", "optim.epochs=3"], resume=True))
    assert words == ["python", "trainer/pretrain.py", "--config", "trainer/configs/x.yaml", "--resume",
                     "run.name=a b", "optim.epochs=3"]


def test_upload_leaves_out_environment_outputs_and_history():
    env = runtime_env(PROJECT)
    assert env["working_dir"] == str(PROJECT)
    assert {".venv/", "out/", "runs/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"]["NO_ALBUMENTATIONS_UPDATE"] == "1"


@pytest.mark.parametrize("override, said", [
    ("optim.epochz=3", "epochz"),
    ("model.name=miram_vit_huge", "model.name: 'miram_vit_huge' is not one of"),
    ("model.name=mae_vit_base_patch16", "model.options: 'fine_attention' not taken by mae_vit_base_patch16"),
])
def test_bad_config_fails_before_any_upload(capsys, override, said):
    # (nothing listens on port 9: a submission would fail differently)
    code = main(["--address", "http://127.0.0.1:9", "--config", "trainer/configs/tiny_cpu.yaml", override])
    assert code == EXIT_USAGE
    assert said in capsys.readouterr().err


def test_missing_address_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["--config", "trainer/configs/tiny_cpu.yaml"]) == EXIT_USAGE
    assert "address" in capsys.readouterr().err


def test_forwarded_variables_reach_every_worker_and_bad_ones_are_named(capsys):
    env = forwarded_env(["AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL=http://minio:9000"], {"AWS_ACCESS_KEY_ID": "key"})
    assert env == {"AWS_ACCESS_KEY_ID": "key", "AWS_ENDPOINT_URL": "http://minio:9000"}
    assert runtime_env(PROJECT, env)["env_vars"] == {"NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                                     **env}
    with pytest.raises(ValueError, match=r"--env AWS_SECRET_ACCESS_KEY: .* not set in this shell"):
        forwarded_env(["AWS_SECRET_ACCESS_KEY"], {})
    with pytest.raises(ValueError, match=r"'1X' is not an environment variable name"):
        forwarded_env(["1X=2"], {})
    code = main(["--address", "http://127.0.0.1:9", "--config", "trainer/configs/tiny_cpu.yaml", "--env", "NOT SET"])
    assert code == EXIT_USAGE and "not an environment variable name" in capsys.readouterr().err


def test_bucket_locations_are_the_uris_workers_need_credentials_for(tmp_path):
    config = load_config(PROJECT / "trainer/configs/tiny_cpu.yaml",
                         ["data.sources=[{root: s3://bucket/cbis}, {root: /local/shards}]", "run.storage_path=s3://runs/x"])
    assert bucket_locations(config) == ["s3://bucket/cbis", "s3://runs/x"]
    assert bucket_locations(load_config(PROJECT / "trainer/configs/tiny_cpu.yaml")) == []
