"""`pretrain.py --dry-run`: config, data and model checked on the CPU, the run's plan printed
(batches, lr, what each Ray worker asks for, validation), nothing started or written."""

from __future__ import annotations

from pathlib import Path

TINY = Path(__file__).resolve().parents[2] / "trainer" / "configs" / "tiny_cpu.yaml"


def test_dry_run_checks_config_data_and_model_and_starts_nothing(lesion_shards, tmp_path, capsys):
    from trainer.pretrain import main

    base = ["--config", str(TINY), f"run.storage_path={tmp_path}", f"data.sources=[{{root: {lesion_shards}}}]",
            "--dry-run"]
    assert main(base + ["run.workers=2", "data.batch_size=4"]) == 0
    said = capsys.readouterr().out
    assert "nothing was started or written" in said and "model: miram_vit_tiny_patch16, 0." in said
    assert "on 2 samples: loss " in said and "loss_fine " in said  # a real batch went through the model
    assert "on each of 2 Ray Train workers, batch 4 each (global 8)" in said
    assert "ray:   each of 2 worker(s) asks Ray for 1 CPU\n" in said  # tiny_cpu: use_gpu false
    assert "val:   none (validation.every_epochs=0)" in said
    assert "every 1 epoch(s), newest 3 kept)" in said
    assert main(base + ["run.workers=2", "validation.every_epochs=2", "validation.batch_size=2", "run.keep_by=val_loss"]) == 0
    said = capsys.readouterr().out
    assert "val:   split 'val', 2 batch(es) of 2, the whole pass on each worker, after every 2 epoch(s)" in said
    assert "every 1 epoch(s), the 3 with the lowest val_loss and the newest kept)" in said
    assert main(base + ["data.batch_size=8", "validation.every_epochs=1"]) == 2  # the 5 val samples make no batch of 8
    assert "pretrain: data error: validation on split 'val': 5 samples" in capsys.readouterr().err
    assert main(base + ["run.workers=2", "data.batch_size=4", "optim.accumulate_steps=3"]) == 0
    said = capsys.readouterr().out
    assert "batch 4 each (global 8 x 3 batches accumulated = 24 a step)" in said
    assert f"lr {0.1 * 24 / 256:.3g} (blr 0.1 x 24 / 256)" in said
    assert main(base + ["run.use_gpu=auto", "run.cpus_per_worker=5"]) == 0
    assert "asks Ray for 5 CPU + 1 GPU where the cluster has GPUs, else 5 CPU\n" in capsys.readouterr().out
    assert main(base + ["run.use_gpu=auto", "run.cpus_per_worker=5", "run.accelerator_type=A100"]) == 0
    assert "asks Ray for 5 CPU + 1 GPU (on a node of GPU type A100)\n" in capsys.readouterr().out  # a GPU type: GPUs
    assert main(base + ["model.options.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "config error: model.options: 'bogus' not taken by miram_vit_tiny_patch16" in err  # before building it
    assert main(base + ["model.options.mask_ratio=1.5"]) == 2  # built, but fails on a batch
    assert "on this data: ValueError: mask_ratio must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert main(base + ["model.name=miram_vit_huge"]) == 2
    assert "model.name: 'miram_vit_huge' is not one of" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
