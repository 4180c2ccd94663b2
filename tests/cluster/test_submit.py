"""cluster.submit: what it sends, and the errors it gives before touching a cluster. (A real
submission with --wait runs in tests/trainer/test_pretrain.py against a real local Ray cluster.)"""

from __future__ import annotations

import shlex

from cluster.submit import EXIT_USAGE, PROJECT, entrypoint, main, runtime_env


def test_entrypoint_quotes_overrides_and_places_resume_before_them():
    words = shlex.split(entrypoint("trainer/configs/x.yaml", ["run.name=a b", "optim.epochs=3"], resume=True))
    assert words == ["python", "trainer/pretrain.py", "--config", "trainer/configs/x.yaml", "--resume",
                     "run.name=a b", "optim.epochs=3"]


def test_upload_leaves_out_environment_outputs_and_history():
    env = runtime_env(PROJECT)
    assert env["working_dir"] == str(PROJECT)
    assert {".venv/", "out/", "runs/", ".git/"} <= set(env["excludes"])
    assert env["env_vars"]["NO_ALBUMENTATIONS_UPDATE"] == "1"


def test_bad_config_fails_before_any_upload(capsys):
    code = main(["--address", "http://127.0.0.1:9", "--config", "trainer/configs/tiny_cpu.yaml", "optim.epochz=3"])
    assert code == EXIT_USAGE
    assert "epochz" in capsys.readouterr().err


def test_missing_address_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["--config", "trainer/configs/tiny_cpu.yaml"]) == EXIT_USAGE
    assert "address" in capsys.readouterr().err
