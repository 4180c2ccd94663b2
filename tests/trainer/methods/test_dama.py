import math

import pytest
import torch

from trainer.layers.patchify import patchify
from trainer.methods.catalog import METHODS
from trainer.methods.dama import DAMA


def tiny(in_chans=7, img_size=64, **options):
    return METHODS["dama_vit_tiny_patch16"](img_size=img_size, in_chans=in_chans, **options)


def both_students(model, images, seed=0):
    """One DAMA forward, step by step, with repeatable masks."""
    g = torch.Generator().manual_seed(seed)
    latent1, mask1, ids_restore1, pred1 = model.forward_student1(images, g)
    patch_loss1 = model.student1.loss.per_patch(pred1, patchify(images, model.patch_size))
    hidden2, mask2, ids_restore2, _ = model.forward_student2(images, mask1, patch_loss1, g)
    return latent1, mask1, ids_restore1, hidden2, mask2, ids_restore2


def token_slots(ids_restore, keep):
    """-> per sample {patch position: index of its token in the encoder's output (cls is 0)}."""
    ids_shuffle = ids_restore.argsort(dim=1)
    return [{int(ids_shuffle[n, j]): j + 1 for j in range(keep)} for n in range(ids_restore.shape[0])]


@pytest.mark.parametrize("teacher", ["student", "ema"])
def test_seven_channel_forward_backward_reaches_every_trainable_parameter(teacher):
    torch.manual_seed(0)
    model = tiny(teacher=teacher)
    out = model({"image": torch.randn(2, 7, 64, 64)})
    assert set(out) == {"loss", "loss_rec1", "loss_rec2", "loss_feature"}
    assert all(v.shape == () and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    assert not [name for name, p in trainable if p.grad is None or not p.grad.any()]
    teacher_params = [p for name, p in model.named_parameters() if name.startswith("student2.")]
    assert all(p.requires_grad for p in teacher_params) == (teacher == "student")
    assert all(not b.requires_grad for b in model.buffers())


@pytest.mark.slow  # two ViT-B/16 MAEs: about 230M parameters to initialise
def test_base_is_two_vit_b_students_at_128_with_the_paper_settings():
    model = METHODS["dama_vit_base_patch16"](img_size=128, in_chans=7)
    assert isinstance(model, DAMA)
    for student in (model.student1, model.student2):
        assert len(student.encoder.blocks) == 12 and student.encoder.cls_token.shape[-1] == 768
        assert student.encoder.patch_embed.proj.in_channels == 7 and student.encoder.grid_size == (8, 8)
        assert student.decoder.pred.out_features == 16 * 16 * 7
    assert model.mask_ratio == 0.8 and model.overlap_ratio == 0.5 and model.len_keep == 12
    assert model.target_blocks == 6 and model.feature_loss.beta == 2.0 and model.teacher == "student"
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [1536, 768]


def test_students_start_from_their_own_initialisation():
    torch.manual_seed(0)
    model = tiny()
    qkv1, qkv2 = (s.encoder.blocks[0].attn.qkv.weight for s in (model.student1, model.student2))
    assert not torch.equal(qkv1, qkv2)
    assert not torch.equal(model.student1.mask_token, model.student2.mask_token)


def test_student2_sees_as_many_patches_with_the_overlap_per_sample():
    torch.manual_seed(0)
    model = tiny(img_size=128).eval()  # 64 patches, int(12.8) = 12 seen, floor(6) = 6 shared
    assert (model.mask_ratio, model.overlap_ratio, model.feature_loss.beta, model.teacher) == (0.8, 0.5, 2.0, "student")
    _, mask1, _, _, mask2, _ = both_students(model, torch.randn(3, 7, 128, 128))
    assert (1 - mask2).sum(dim=1).tolist() == [12.0] * 3
    assert ((1 - mask1) * (1 - mask2)).sum(dim=1).tolist() == [6.0] * 3
    assert not torch.equal(mask1[0], mask1[1])


def test_feature_loss_pairs_tokens_by_patch_position_and_only_where_both_students_see():
    torch.manual_seed(0)
    model = tiny(img_size=128).eval()
    latent1, mask1, ids_restore1, hidden2, mask2, ids_restore2 = both_students(model, torch.randn(3, 7, 128, 128))
    loss = model.forward_feature_loss(latent1, mask1, ids_restore1, hidden2, mask2, ids_restore2)
    slots1, slots2 = token_slots(ids_restore1, 12), token_slots(ids_restore2, 12)

    # independent computation: look each shared patch up in both students' token orders
    total, count = 0.0, 0
    for n in range(3):
        for patch in set(slots1[n]) & set(slots2[n]):
            pred = model.head(latent1[n, slots1[n][patch]])
            targets = []
            for h in hidden2[-2:]:  # the tiny's K = 2 last blocks
                x = h[n, slots2[n][patch]]
                targets.append((x - x.mean()) / torch.sqrt(((x - x.mean()) ** 2).mean() + 1e-5))
            diff = (pred - sum(targets) / 2).abs()
            total += torch.where(diff < 2.0, 0.25 * diff**2, diff - 1.0).mean().item()
            count += 1
    assert count == 3 * 6
    assert loss.item() == pytest.approx(total / count, rel=1e-5)

    # corrupt what only one student sees, and the cls tokens: the loss does not move
    latent_bad, hidden_bad = latent1.clone(), [h.clone() for h in hidden2]
    for n in range(3):
        for patch in set(slots1[n]) - set(slots2[n]):
            latent_bad[n, slots1[n][patch]] = 1e3
        for patch in set(slots2[n]) - set(slots1[n]):
            for h in hidden_bad:
                h[n, slots2[n][patch]] = torch.randn(h.shape[-1]) * 1e3
    latent_bad[:, 0] = -1e3
    for h in hidden_bad:
        h[:, 0] = 1e3
    same = model.forward_feature_loss(latent_bad, mask1, ids_restore1, hidden_bad, mask2, ids_restore2)
    assert same.item() == pytest.approx(loss.item(), rel=1e-6)
    shared = next(iter(set(slots1[0]) & set(slots2[0])))
    latent_bad[0, slots1[0][shared]] = torch.randn(latent1.shape[-1])
    changed = model.forward_feature_loss(latent_bad, mask1, ids_restore1, hidden_bad, mask2, ids_restore2)
    assert changed.item() != pytest.approx(loss.item(), rel=1e-6)  # one shared token of 18 moves it


def test_two_students_learn_from_the_feature_loss_without_stop_gradient():
    torch.manual_seed(0)
    model = tiny()
    latent1, mask1, ids_restore1, hidden2, mask2, ids_restore2 = both_students(model, torch.randn(2, 7, 64, 64))
    model.forward_feature_loss(latent1, mask1, ids_restore1, hidden2, mask2, ids_restore2).backward()
    assert model.student2.encoder.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0  # the target is trained too
    assert model.student1.encoder.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0
    assert model.head[0].weight.grad.abs().sum() > 0
    assert model.student2.decoder.pred.weight.grad is None and model.student1.decoder.pred.weight.grad is None


def test_student_loss_is_the_sum_of_both_reconstructions_and_the_feature_term():
    torch.manual_seed(0)
    out = tiny(feature_weight=0.5)({"image": torch.randn(2, 7, 64, 64)})
    assert torch.allclose(out["loss"], out["loss_rec1"] + out["loss_rec2"] + 0.5 * out["loss_feature"])


def test_ema_teacher_gets_no_gradient_and_follows_the_student():
    torch.manual_seed(0)
    model = tiny(teacher="ema", teacher_momentum=0.99)
    pairs = list(zip(model.student2.parameters(), model.student1.parameters()))
    assert all(torch.equal(t, s) and not t.requires_grad for t, s in pairs)
    out = model({"image": torch.randn(2, 7, 64, 64)})
    assert torch.allclose(out["loss"], out["loss_rec1"] + out["loss_feature"])  # loss_rec2 only reported
    assert not out["loss_rec2"].requires_grad
    out["loss"].backward()
    assert all(t.grad is None for t, _ in pairs)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    before = [t.clone() for t, _ in pairs]
    assert any(not torch.equal(t, s) for t, s in pairs)

    model.on_step_end(0.25)
    m = 1 - 0.01 * (1 + math.cos(math.pi / 4)) / 2  # MoCo v3's cosine from 0.99 towards 1
    for (t, s), old in zip(pairs, before):
        assert torch.allclose(t, m * old + (1 - m) * s, atol=1e-7)
    after = [t.clone() for t, _ in pairs]
    model.on_step_end(1.0)  # momentum 1 at the end: the teacher stays put
    assert all(torch.equal(t, a) for (t, _), a in zip(pairs, after))


def test_reconstruct_returns_picture_columns_for_both_students():
    torch.manual_seed(0)
    model = tiny(img_size=64).eval()
    images = torch.randn(2, 7, 64, 64)
    pictures = model.reconstruct(images, mask_seed=3)
    student_columns = ["mask", "masked", "pred", "pred+visible"]
    assert list(pictures) == ["image"] + [f"{s} {c}" for s in ("s1", "s2") for c in student_columns]
    for s in ("s1", "s2"):
        assert pictures[f"{s} mask"].shape == (2, 1, 64, 64)
        assert pictures[f"{s} mask"].mean().item() == pytest.approx(13 / 16)  # 3 of 16 patches seen, both
        visible = pictures[f"{s} mask"].expand_as(images) == 0
        assert torch.equal(pictures[f"{s} pred+visible"][visible], images[visible])
        assert pictures[f"{s} pred"].shape == (2, 7, 64, 64)
    assert not torch.equal(pictures["s1 mask"], pictures["s2 mask"])
    again = model.reconstruct(images, mask_seed=3)
    assert all(torch.equal(again[k], v) for k, v in pictures.items())


def test_rejects_settings_without_shared_patches_or_enough_blocks():
    with pytest.raises(ValueError, match="no patch seen by both"):
        tiny(img_size=64, overlap_ratio=0.2)  # floor(3 * 0.2) = 0
    with pytest.raises(ValueError, match="target_blocks"):
        tiny(target_blocks=3)  # the tiny has 2 blocks
    with pytest.raises(ValueError, match="teacher"):
        tiny(teacher="momentum")


@pytest.mark.parametrize("teacher", ["student", "ema"])
def test_overfits_one_batch(teacher):
    torch.manual_seed(0)
    model = tiny(img_size=64, teacher=teacher)  # 16 patches: 3 seen, 1 by both students
    images = torch.randn(2, 7, 64, 64)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for step in range(30):
        loss = model({"image": images})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.on_step_end((step + 1) / 30)
        losses.append(loss.item())
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4
