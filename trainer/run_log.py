"""Metrics of a run, written by rank 0 to the run folder: steps.csv (every few steps),
epochs.csv (one row per epoch) and TensorBoard events; and a line per epoch for the job's log."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class _CsvTable:
    """Appends rows under a header fixed by the first row (kept when a resumed run reopens it)."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with open(path, newline="") as fh:
                self.fields = next(csv.reader(fh), None)

    def append(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.fields)
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.fields, extrasaction="ignore").writerow(row)


class RunLog:
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._steps = _CsvTable(folder / "steps.csv")
        self._epochs = _CsvTable(folder / "epochs.csv")
        self._tb = SummaryWriter(str(folder / "tensorboard"))

    def step(self, step: int, metrics: dict[str, Any]) -> None:
        self._write(self._steps, "train", step, metrics)

    def epoch(self, step: int, metrics: dict[str, Any]) -> None:
        self._write(self._epochs, "epoch", step, metrics)

    def _write(self, table: _CsvTable, prefix: str, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        table.append(row)
        for name, value in row.items():
            if name != "step":
                self._tb.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        self._tb.close()


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def _losses(values: dict[str, Any]) -> str:
    """'loss 0.5123 loss_coarse 0.4980 ...': the loss terms of a metrics dict."""
    return " ".join(f"{k} {v:.4f}" for k, v in values.items() if k.startswith("loss"))


def epoch_line(metrics: dict[str, Any], epochs: int, epoch_seconds: float) -> str:
    """One epoch's summary for the log: 'epoch 3/400 step 1200 loss 0.5123 ... 2450 samples/s
    2m10s/epoch, eta 14h20m' (the rest of the run at this epoch's pace), with the skipped samples
    when there were any."""
    epoch = int(metrics["epoch"])
    skipped = f" skipped {metrics['skipped_samples']}" if metrics.get("skipped_samples") else ""
    eta = _duration(epoch_seconds * (epochs - epoch - 1))
    return (f"epoch {epoch + 1}/{epochs} step {int(metrics['step'])} {_losses(metrics)} lr {metrics['lr']:.3g} "
            f"{metrics['samples_per_s']:.0f} samples/s{_waited(metrics.get('data_wait'))}{skipped} "
            f"{_duration(epoch_seconds)}/epoch, eta {eta}")


def _waited(share: float | None) -> str:
    """' (data wait 12%)': the share of the time the step waited for its batch (trainer.loop.DataWait)."""
    return "" if share is None else f" (data wait {share:.0%})"


def step_line(*, epoch: int, epochs: int, done: int, steps_per_epoch: int, step: int, values: dict[str, float],
              lr: float, samples_per_s: float, elapsed_s: float, data_wait: float | None = None) -> str:
    """Progress within a long epoch: 'step 1200 of epoch 3/400 (300/500): loss 0.5123 ... lr 0.00012
    2450 samples/s (data wait 3%), epoch ends in 1m10s' (the epoch's rest at its pace so far)."""
    left = elapsed_s / max(done, 1) * (steps_per_epoch - done)
    return (f"step {step} of epoch {epoch + 1}/{epochs} ({done}/{steps_per_epoch}): {_losses(values)} lr {lr:.3g} "
            f"{samples_per_s:.0f} samples/s{_waited(data_wait)}, epoch ends in {_duration(left)}")
