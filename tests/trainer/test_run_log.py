"""The run folder's metrics when a run continues from a checkpoint: what was logged after that
checkpoint's step is dropped (CSVs) or purged (TensorBoard), so each step appears once."""

from __future__ import annotations

import csv

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer.run_log import RunLog, epoch_line, finished_line


def _steps(path) -> list[float]:
    with open(path, newline="") as fh:
        return [float(row["step"]) for row in csv.DictReader(fh)]


def test_a_run_continued_from_a_checkpoint_logs_each_step_once(tmp_path):
    log = RunLog(tmp_path)
    for step in range(1, 7):  # the checkpoint was at step 3; the run went on to 6, then failed
        log.step(step, {"loss": 1.0 / step})
        if step % 3 == 0:
            log.epoch(step, {"epoch": step // 3 - 1, "loss": 1.0 / step})
    log.close()
    with open(tmp_path / "steps.csv", "a") as fh:
        fh.write("7.0,0.1")  # a row cut short by the kill
    log = RunLog(tmp_path, resumed_at=3)
    assert _steps(tmp_path / "steps.csv") == [1, 2, 3] and _steps(tmp_path / "epochs.csv") == [3]
    for step in range(4, 7):
        log.step(step, {"loss": 2.0 / step})
    log.close()
    assert _steps(tmp_path / "steps.csv") == [1, 2, 3, 4, 5, 6]
    with open(tmp_path / "steps.csv", newline="") as fh:
        assert float(list(csv.DictReader(fh))[4]["loss"]) == 2.0 / 5  # the retrained step's value
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in losses] == [1, 2, 3, 4, 5, 6]
    assert abs(losses[4][1] - 2.0 / 5) < 1e-6  # TensorBoard stores float32


def test_the_finished_line_reads_like_an_epoch_line():
    metrics = {"epoch": 3, "step": 4, "loss": 0.76927, "loss_fine": 0.7826, "lr": 0.0, "samples_per_s": 334.6,
               "data_wait": 0.187, "skipped_samples": 0}
    assert finished_line(metrics, 4) == "finished after epoch 4/4, step 4: loss 0.7693 loss_fine 0.7826 335 samples/s (data wait 19%)"
    assert finished_line({**metrics, "skipped_samples": 2}, 10).endswith("(data wait 19%) skipped 2")


def test_a_metric_that_first_appears_later_widens_the_table_and_reaches_tensorboard(tmp_path):
    """Validation passes every other epoch: the epochs before the first have a blank val_loss."""
    log = RunLog(tmp_path)
    log.epoch(3, {"epoch": 0, "loss": 0.9})
    log.epoch(6, {"epoch": 1, "loss": 0.8, "val_loss": 0.85})
    log.epoch(9, {"epoch": 2, "loss": 0.7})
    log.close()
    with open(tmp_path / "epochs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["loss"], r["val_loss"]) for r in rows] == [("0.9", ""), ("0.8", "0.85"), ("0.7", "")]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("epoch/val_loss")] == [(6, 0.85)]


def test_the_epoch_line_shows_the_validation_loss_after_a_pass():
    metrics = {"epoch": 1, "step": 6, "loss": 0.8, "lr": 0.001, "samples_per_s": 100.0}
    assert " val_loss" not in epoch_line(metrics, 4, 2.0)
    assert "loss 0.8000 val_loss 0.8512 lr" in epoch_line({**metrics, "val_loss": 0.85117, "val_loss_fine": 0.9}, 4, 2.0)
    assert "loss 0.8000 val_loss 0.8512 " in finished_line({**metrics, "val_loss": 0.85117}, 4)
