"""Adaptive masking of a second masked autoencoder from the first one's mask and per-patch losses
(DAMA, paper 004, supplement Algorithm 1), computed for each sample on its own.

Per sample, with L patches, K = `len_keep` patches seen by student 1 (set V1; the other L - K are
M1) and O = floor(K * overlap_ratio) (line 11, `int()`), the algorithm builds student 2's mask m2:

- line 19: m2 = not m1, so student 2 starts by seeing all of M1 and none of V1;
- lines 10, 14-16, 22: it also masks H, the L - 2K + O patches of M1 with the highest per-patch
  reconstruction loss of student 1 (`loss * m1` zeroes the losses of V1, so the highest ones lie
  in M1; here V1 is excluded outright, which also holds when a loss is exactly 0);
- lines 25-27: it unmasks S, O patches of V1 (`argsort(m1)[:, :O]`: the first O patches with
  m1 = 0, in an order the sort leaves unspecified; here drawn uniformly at random from V1 with
  `generator`).

So student 2 sees V2 = (M1 \\ H) | S: K - O patches student 1 could not see, the ones of M1 with the
lowest student-1 loss, plus O patches both see; |V2| = (L - K) - (L - 2K + O) + O = K, the same
budget as student 1. It masks M2 = H | (V1 \\ S). Guaranteed for every sample: |V2| = K,
|V1 & V2| = |S| = O, |V2 \\ V1| = K - O, H is masked for student 2, and every patch of M1 that
student 2 sees has a student-1 loss no higher than every patch of M1 it masks (ties broken
arbitrarily). This needs K - O <= L - K (e.g. mask_ratio 0.8, overlap 0.5: 13 - 6 <= 51 for 64
patches).

DAMA's released code indexes line 27 as `m2[:, m1_ids] = 0` with `m1_ids` of shape (N, O): every
sample gets the union of all samples' picks. Here each sample takes only its own S.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class AdaptiveMask(NamedTuple):
    mask: torch.Tensor  # (N, L) float32: 0 seen by student 2, 1 removed, raster order
    ids_shuffle: torch.Tensor  # (N, L): the K seen patches first (ascending), then the removed ones
    ids_restore: torch.Tensor  # (N, L): the inverse permutation of ids_shuffle


def adaptive_counts(length: int, len_keep: int, overlap_ratio: float) -> tuple[int, int]:
    """-> (O, |H|) = (floor(len_keep * overlap_ratio), length - 2 * len_keep + O), lines 9-11 and 16,
    after checking that student 2 can find its len_keep patches."""
    if not 0.0 <= overlap_ratio <= 1.0:
        raise ValueError(f"overlap_ratio must be in [0, 1], got {overlap_ratio}")
    if not 0 < len_keep <= length:
        raise ValueError(f"len_keep must be in [1, {length}], got {len_keep}")
    overlap = math.floor(len_keep * overlap_ratio + 1e-9)  # int() of line 11; 1e-9: 0.29 * 100 = 28.999...
    hard = length - 2 * len_keep + overlap
    if hard < 0:
        raise ValueError(
            f"student 2 needs {len_keep - overlap} patches student 1 masked but there are {length - len_keep}: "
            f"raise the mask ratio or the overlap ratio"
        )
    return overlap, hard


def adaptive_mask(
    mask1: torch.Tensor,
    patch_loss: torch.Tensor,
    len_keep: int,
    overlap_ratio: float,
    generator: torch.Generator | None = None,
) -> AdaptiveMask:
    """mask1: (N, L) student 1's mask (1 = removed), each row with exactly `len_keep` zeros;
    patch_loss: (N, L) student 1's per-patch reconstruction loss (values at V1 are ignored) ->
    student 2's AdaptiveMask. `generator` (on mask1.device) draws the shared patches S."""
    if mask1.shape != patch_loss.shape or mask1.ndim != 2:
        raise ValueError(f"mask1 {tuple(mask1.shape)} and patch_loss {tuple(patch_loss.shape)} must both be (N, L)")
    n, length = mask1.shape
    overlap, hard = adaptive_counts(length, len_keep, overlap_ratio)
    removed1 = mask1.bool()
    score = patch_loss.detach().float().masked_fill(~removed1, -math.inf)
    hard_ids = score.topk(hard, dim=1).indices  # H: the highest losses, all in M1 as hard <= L - K
    noise = torch.rand(n, length, device=mask1.device, generator=generator) + removed1  # V1 in [0, 1), M1 in [1, 2)
    shared_ids = noise.argsort(dim=1)[:, :overlap]  # S: O of V1, uniformly at random
    mask2 = (~removed1).float()  # line 19
    mask2.scatter_(1, hard_ids, 1.0)  # line 22
    mask2.scatter_(1, shared_ids, 0.0)  # line 27, per sample
    ids_shuffle = mask2.argsort(dim=1, stable=True)
    return AdaptiveMask(mask2, ids_shuffle, ids_shuffle.argsort(dim=1))
