"""Metrics of a run, written by rank 0 to the run folder: steps.csv (every few steps),
epochs.csv (one row per epoch) and TensorBoard events; and a line per epoch for the job's log.

A run that continues from a checkpoint (`--resume`, or Ray Train restarting failed workers)
first drops what was logged after that checkpoint's step, in the CSVs and (through
SummaryWriter's purge_step) in TensorBoard: those steps are trained again, and their rows would
otherwise appear twice, the superseded ones first."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from shards.atomic_files import atomic_write_bytes


class _CsvTable:
    """Appends rows under the header of the first row (kept when a resumed run reopens it); a row
    with columns the header lacks (a validation pass after epochs without one, a resumed run with a
    new metric) widens it, the rows before left blank there. Rows past `resumed_at` (a step) are
    dropped when it is opened."""

    def __init__(self, path: Path, resumed_at: int = 0):
        self.path = path
        self.fields: list[str] | None = None
        if path.exists():
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            self.fields = rows[0] if rows else None
            if self.fields and "step" in self.fields:
                at = self.fields.index("step")
                kept = [rows[0], *(r for r in rows[1:] if len(r) > at and _step(r[at]) <= resumed_at)]
                if len(kept) != len(rows):
                    text = io.StringIO()
                    csv.writer(text).writerows(kept)
                    atomic_write_bytes(path, text.getvalue().encode())

    def append(self, row: dict[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(self.fields)
        elif new := [name for name in row if name not in self.fields]:
            self._widen(self.fields + new)
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, self.fields, extrasaction="ignore").writerow(row)

    def _widen(self, fields: list[str]) -> None:
        """The table rewritten (atomically) under `fields`, its rows blank in the new columns."""
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        text = io.StringIO()
        writer = csv.DictWriter(text, fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path, text.getvalue().encode())
        self.fields = fields


def _step(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # a row cut short by a killed run: dropped with the rest past the checkpoint
        return float("inf")


class RunLog:
    """resumed_at: the step of the checkpoint the run continues from (0 for a new run)."""

    def __init__(self, folder: Path, resumed_at: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._steps = _CsvTable(folder / "steps.csv", resumed_at)
        self._epochs = _CsvTable(folder / "epochs.csv", resumed_at)
        self._tb = SummaryWriter(str(folder / "tensorboard"), purge_step=resumed_at + 1 if resumed_at else None)

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
    eta = _duration(epoch_seconds * (epochs - epoch - 1))
    return (f"epoch {epoch + 1}/{epochs} step {int(metrics['step'])} {_losses(metrics)}{_val(metrics)} "
            f"lr {metrics['lr']:.3g} "
            f"{metrics['samples_per_s']:.0f} samples/s{_waited(metrics.get('data_wait'))}{_skipped(metrics)} "
            f"{_duration(epoch_seconds)}/epoch, eta {eta}")


def finished_line(metrics: dict[str, Any], epochs: int) -> str:
    """The run's last report, for the console: 'finished after epoch 400/400, step 480000: loss
    0.4123 loss_coarse ... 2450 samples/s (data wait 4%)', with the skipped samples when there
    were any (worded apart from the epoch lines, which a reader of the log counts)."""
    return (f"finished after epoch {int(metrics['epoch']) + 1}/{epochs}, step {int(metrics['step'])}: "
            f"{_losses(metrics)}{_val(metrics)} "
            f"{metrics['samples_per_s']:.0f} samples/s{_waited(metrics.get('data_wait'))}{_skipped(metrics)}")


def _val(metrics: dict[str, Any]) -> str:
    """' val_loss 0.5311': the validation pass's loss, after the epochs that had one."""
    return f" val_loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""


def _skipped(metrics: dict[str, Any]) -> str:
    """' skipped 3': the samples left out as unreadable, when there were any."""
    return f" skipped {metrics['skipped_samples']}" if metrics.get("skipped_samples") else ""


def _waited(share: float | None) -> str:
    """' (data wait 12%)': the share of the time the step waited for its batch (trainer.device_batches.DataWait)."""
    return "" if share is None else f" (data wait {share:.0%})"


def step_line(*, epoch: int, epochs: int, done: int, steps_per_epoch: int, step: int, values: dict[str, float],
              lr: float, samples_per_s: float, elapsed_s: float, data_wait: float | None = None) -> str:
    """Progress within a long epoch: 'step 1200 of epoch 3/400 (300/500): loss 0.5123 ... lr 0.00012
    2450 samples/s (data wait 3%), epoch ends in 1m10s' (the epoch's rest at its pace so far)."""
    left = elapsed_s / max(done, 1) * (steps_per_epoch - done)
    return (f"step {step} of epoch {epoch + 1}/{epochs} ({done}/{steps_per_epoch}): {_losses(values)} lr {lr:.3g} "
            f"{samples_per_s:.0f} samples/s{_waited(data_wait)}, epoch ends in {_duration(left)}")
