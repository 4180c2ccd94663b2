"""trainer/optimizer_steps.py: gradient accumulation gives the update one batch of the same samples gives."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.optimizer_steps import OptimizerSteps, group_size, updates_per_epoch


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3))


def _loss(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)  # a mean over the batch's samples, as every method's


def _add(steps, model, x, y, batch, batches) -> bool:
    """One batch as the loop runs it: forward and backward inside steps.batch()."""
    with steps.batch(batch, batches):
        return steps.backward(_loss(model, x, y))


def _steps(model, accumulate, clip=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return OptimizerSteps(model, optimizer, torch.amp.GradScaler(enabled=False), accumulate=accumulate,
                          clip_grad=clip)


def test_groups_cover_the_epoch_and_the_last_one_may_be_smaller():
    assert [group_size(i, 7, 3) for i in range(7)] == [3, 3, 3, 3, 3, 3, 1]
    assert [group_size(i, 6, 3) for i in range(6)] == [3] * 6
    assert [group_size(i, 2, 4) for i in range(2)] == [2, 2]  # fewer batches than one group
    assert [updates_per_epoch(b, 3) for b in (1, 3, 6, 7)] == [1, 1, 2, 3]
    assert [group_size(i, 5, 1) for i in range(5)] == [1] * 5


@pytest.mark.parametrize("clip", [None, 0.05])
def test_four_batches_of_two_accumulated_step_as_one_batch_of_eight(clip):
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(1)), torch.randn(8, 3)
    whole, parts = _model(), _model()
    one, four = _steps(whole, 1, clip), _steps(parts, 4, clip)
    assert _add(one, whole, x, y, 0, 1)
    stepped = [_add(four, parts, x[i:i + 2], y[i:i + 2], i // 2, 4) for i in range(0, 8, 2)]
    assert stepped == [False, False, False, True]
    for a, b in zip(whole.parameters(), parts.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert b.grad is None  # cleared after the step
    before = copy.deepcopy(parts.state_dict())
    assert not four.finish_epoch()  # nothing pending: no step
    assert all(torch.equal(v, parts.state_dict()[k]) for k, v in before.items())


def test_an_uneven_epoch_ends_on_a_mean_over_its_last_smaller_group():
    x, y = torch.randn(6, 6, generator=torch.Generator().manual_seed(2)), torch.randn(6, 3)
    reference, accumulated = _model(), _model()
    ref = _steps(reference, 1)
    _add(ref, reference, x[:4], y[:4], 0, 2)  # groups of 2 batches of 2 samples, then 1 batch
    _add(ref, reference, x[4:], y[4:], 1, 2)
    acc = _steps(accumulated, 2)
    assert [_add(acc, accumulated, x[i:i + 2], y[i:i + 2], i // 2, 3) for i in (0, 2, 4)] == [False, True, True]
    for a, b in zip(reference.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_epoch_cut_short_steps_on_what_it_summed():
    model = _model()
    steps = _steps(model, 4)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(2, 6), torch.randn(2, 3)
    assert not _add(steps, model, x, y, 0, 4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # summed, not stepped
    assert steps.finish_epoch() and steps.pending == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _ddp_rank(rank: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    model = DistributedDataParallel(_model())
    reductions = []

    def counted(state, bucket):  # the default all-reduce of the mean, counted
        reductions.append(1)
        tensor = bucket.buffer().div_(2)
        return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])

    model.register_comm_hook(None, counted)
    x, y = _data()
    steps = _steps(model, 2)
    mine = slice(4 * rank, 4 * rank + 4)  # each rank half of the samples, as two batches of 2
    xs, ys = x[mine], y[mine]
    for i in range(2):
        _add(steps, model, xs[2 * i:2 * i + 2], ys[2 * i:2 * i + 2], i, 2)
    torch.save({"params": [p.detach() for p in model.module.parameters()], "reductions": len(reductions)},
               f"{out}/rank{rank}.pt")


def _data():
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def test_under_ddp_gradients_are_all_reduced_once_a_group_and_match_one_batch(tmp_path, gloo_ranks):
    """Two gloo ranks, each accumulating two batches of 2 samples: one all-reduce per optimizer
    step (no_sync before a group's last batch), and the weights one batch of all 8 samples gives."""
    gloo_ranks(_ddp_rank, str(tmp_path))
    reference = _model()
    x, y = _data()
    _add(_steps(reference, 1), reference, x, y, 0, 1)
    for rank in range(2):
        saved = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert saved["reductions"] == 1
        for a, b in zip(reference.parameters(), saved["params"]):
            torch.testing.assert_close(a.detach(), b, rtol=1e-5, atol=1e-6)


def _scaled_steps(model, accumulate, clip, init_scale):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)  # fp16 training's scaler (on a GPU: "cuda")
    return OptimizerSteps(model, optimizer, scaler, accumulate=accumulate, clip_grad=clip)


def test_a_scaled_loss_steps_as_the_unscaled_one_clipping_the_true_gradient():
    """With fp16's GradScaler the gradients are unscaled before clipping: clipped while scaled
    (by 2**10 here), every step would have been cut to clip_grad's norm of 1024x the gradient."""
    x, y = torch.randn(8, 6, generator=torch.Generator().manual_seed(3)), torch.randn(8, 3)
    plain, scaled = _model(), _model()
    one, other = _steps(plain, 2, clip=0.05), _scaled_steps(scaled, 2, clip=0.05, init_scale=2.0**10)
    for i in range(0, 8, 2):
        _add(one, plain, x[i:i + 2], y[i:i + 2], i // 2, 4)
        _add(other, scaled, x[i:i + 2], y[i:i + 2], i // 2, 4)
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_overflowing_step_is_skipped_and_leaves_no_gradient_behind():
    """An fp16 overflow (inf in the scaled gradients, the loss itself finite) skips the step and
    lowers the scale; the next group trains on its own gradients only."""
    x, y = torch.randn(4, 6, generator=torch.Generator().manual_seed(4)), torch.randn(4, 3)
    model = _model()
    steps = _scaled_steps(model, 1, clip=None, init_scale=2.0**100)
    before = [p.detach().clone() for p in model.parameters()]
    assert _add(steps, model, x[:2], y[:2] * 1e15, 0, 2)  # a loss of ~1e30, finite; x 2**100: beyond float32
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # skipped
    assert steps.scaler.get_scale() < 2.0**100 and all(p.grad is None for p in model.parameters())
    reference = _model()
    reference.load_state_dict(model.state_dict())
    ref_steps = _steps(reference, 1)
    steps.scaler.update(2.0**4)  # a scale that fits, for the next group
    _add(steps, model, x[2:], y[2:], 1, 2)
    _add(ref_steps, reference, x[2:], y[2:], 0, 1)
    for a, b in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
