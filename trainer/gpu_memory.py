"""What a run that ran out of GPU memory tells its user.

torch's own message ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity
of 31.74 GiB ...") names the allocation, not the setting that caused it, and on Ray it arrives
inside a worker's traceback. GpuMemoryError keeps torch's message and adds where the run was
(training or the validation pass, epoch, step), the batch each GPU held, and the settings that
lower it: a smaller per-GPU batch with more accumulation steps keeps the global batch (and so the
learning rate, lr = blr x global batch / 256) as it was. It is a torch.OutOfMemoryError, so
code that catches torch's still catches it.
"""

from __future__ import annotations

import torch

from trainer.config import ExperimentConfig


class GpuMemoryError(torch.OutOfMemoryError):
    """The GPU ran out of memory; the message says where and which settings to lower."""


def gpu_memory_error(exc: torch.OutOfMemoryError, config: ExperimentConfig, *, phase: str, epoch: int, step: int,
                     device: torch.device) -> GpuMemoryError:
    """The error to raise in place of `exc` (torch's), at `phase` "training" or "validation"."""
    data, optim = config.data, config.optim
    where = f"{phase} at epoch {epoch + 1}, step {step}"
    gpu = _gpu(device)
    if phase == "validation":
        advice = (f"validation.batch_size={config.validation.batch_size or data.batch_size} samples a GPU: lower "
                  "validation.batch_size (training's data.batch_size is not the one to change)")
    else:
        advice = f"data.batch_size={data.batch_size} samples a GPU: {_smaller_batch(data.batch_size, optim.accumulate_steps)}"
    if config.model.name.startswith("miram") and config.model.options.get("fine_attention", "sdpa") != "sdpa":
        advice += ("; MIRAM's fine decoder needs the least memory with model.options.fine_attention=sdpa "
                   "(README: Sizing a run)")
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
    return GpuMemoryError(f"GPU out of memory in {where}{gpu}, with {advice}.\n  torch said: {first_line}")


def _smaller_batch(batch_size: int, accumulate_steps: int) -> str:
    """Halve the batch and double the accumulation, where that keeps the global batch."""
    if batch_size >= 2 and batch_size % 2 == 0:
        return (f"data.batch_size={batch_size // 2} optim.accumulate_steps={2 * accumulate_steps} keeps the global "
                "batch (data.batch_size x run.workers x optim.accumulate_steps) and so the learning rate")
    return ("lower data.batch_size and raise optim.accumulate_steps so that their product stays "
            f"{batch_size * accumulate_steps}, keeping the global batch and so the learning rate")


def _gpu(device: torch.device) -> str:
    """' on NVIDIA A100 (39.4 GiB)', or '' where there is no CUDA device to name."""
    if device.type != "cuda":
        return ""
    props = torch.cuda.get_device_properties(device)
    return f" on {props.name} ({props.total_memory / 2**30:.1f} GiB)"
