"""trainer/gpu_memory.py: a run out of GPU memory says where, with what batch, and what to lower."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.config import config_from_dict
from trainer.gpu_memory import GpuMemoryError, gpu_memory_error

PROJECT = Path(__file__).resolve().parents[2]
TINY = PROJECT / "trainer" / "configs" / "tiny_cpu.yaml"
TORCH_SAID = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 31.74 GiB of which "
              "1.1 GiB is free.\nOf the allocated memory 29 GiB is allocated by PyTorch")


def config(**sections):
    return config_from_dict({"model": {"name": "miram_vit_base_patch16", "options": {}}, **sections})


def test_training_out_of_memory_names_the_batch_and_halves_it_keeping_the_global_batch():
    error = gpu_memory_error(torch.OutOfMemoryError(TORCH_SAID),
                             config(data={"batch_size": 256}, optim={"accumulate_steps": 2}),
                             phase="training", epoch=2, step=41, device=torch.device("cpu"))
    assert isinstance(error, GpuMemoryError) and isinstance(error, torch.OutOfMemoryError)
    said = str(error)
    assert said.startswith("GPU out of memory in training at epoch 3, step 41, with data.batch_size=256 samples a GPU")
    assert "data.batch_size=128 optim.accumulate_steps=4 keeps the global batch" in said
    assert said.endswith("torch said: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                         "31.74 GiB of which 1.1 GiB is free.")  # torch's first line, not its allocator report
    assert "fine_attention" not in said  # MIRAM's default is already sdpa


def test_an_odd_batch_is_not_halved_and_validation_names_its_own_batch_and_miram_its_attention():
    odd = str(gpu_memory_error(torch.OutOfMemoryError("x"), config(data={"batch_size": 3}, optim={"accumulate_steps": 5}),
                               phase="training", epoch=0, step=0, device=torch.device("cpu")))
    assert "so that their product stays 15" in odd and "data.batch_size=1 " not in odd
    nystrom = config(data={"batch_size": 64}, validation={"every_epochs": 1, "batch_size": 32},
                     model={"name": "miram_vit_base_patch16", "options": {"fine_attention": "nystrom"}})
    val = str(gpu_memory_error(torch.OutOfMemoryError("x"), nystrom, phase="validation", epoch=4, step=100,
                               device=torch.device("cpu")))
    assert val.startswith("GPU out of memory in validation at epoch 5, step 100, with validation.batch_size=32")
    assert "data.batch_size=32 " not in val and "model.options.fine_attention=sdpa" in val


def test_a_one_process_run_that_runs_out_of_gpu_memory_ends_with_that_line(lesion_shards, tmp_path, monkeypatch, capsys):
    """The loop turns torch's OutOfMemoryError (raised here by the model's second training forward,
    as a GPU would) into GpuMemoryError, and pretrain.py prints it as one line and exits 1."""
    import trainer.loop
    from trainer.pretrain import main

    real_build = trainer.loop.build_method
    calls = []

    def build_then_fail(*args, **kwargs):
        model = real_build(*args, **kwargs)
        forward = model.forward

        def forward_until_full(batch):
            calls.append(1)
            if len(calls) == 2:
                raise torch.OutOfMemoryError(TORCH_SAID)
            return forward(batch)

        model.forward = forward_until_full
        return model

    monkeypatch.setattr(trainer.loop, "build_method", build_then_fail)
    args = ["--config", str(TINY), f"data.sources=[{{root: {lesion_shards}}}]", f"run.storage_path={tmp_path}",
            "run.use_ray=false", "data.batch_size=8", "optim.epochs=1"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "pretrain: GPU out of memory in training at epoch 1, step 1, with data.batch_size=8 samples a GPU: " \
           "data.batch_size=4 optim.accumulate_steps=2" in err
    assert "Traceback" not in err


def test_the_error_survives_pickling_as_a_ray_worker_sends_it():
    import pickle

    error = gpu_memory_error(torch.OutOfMemoryError("x"), config(), phase="training", epoch=0, step=0,
                             device=torch.device("cpu"))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is GpuMemoryError and str(again) == str(error)
