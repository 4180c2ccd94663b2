"""Per-sample random masking of patch tokens and its inverse (MAE, He et al. 2022, §3 "Masking"
and "MAE decoder").

Masking shuffles each sample's tokens by the argsort of uniform noise and keeps the first
`num_visible` of them: a uniform random subset, different per sample, with no replacement. The
decoder side appends mask tokens to the visible ones and undoes the shuffle with `ids_restore`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MaskedTokens(NamedTuple):
    visible: torch.Tensor  # (N, K, D): the kept tokens, in shuffled order
    mask: torch.Tensor  # (N, L) float32: 0 kept, 1 removed, in the original (raster) order
    ids_shuffle: torch.Tensor  # (N, L): position l of the shuffled sequence holds token ids_shuffle[l]
    ids_restore: torch.Tensor  # (N, L): the inverse permutation of ids_shuffle


def num_visible(length: int, mask_ratio: float) -> int:
    """Tokens kept out of `length`: int(length * (1 - mask_ratio)), truncated as MAE's released
    random_masking and DAMA's Algorithm 1 (line 9, len_keep) compute it: 64 patches of a 128 crop
    at DAMA's ratio 0.8 keep 12, 49 of a 112 crop at ratio 0.6 keep 19. The 1e-9 keeps a product
    that float arithmetic puts just under an integer on it (100 * (1 - 0.71) = 28.999...).
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(length * (1.0 - mask_ratio) + 1e-9)


def random_masking(tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None) -> MaskedTokens:
    """tokens: (N, L, D) -> MaskedTokens with visible (N, K, D), K = num_visible(L, mask_ratio).

    `generator` (on tokens.device) makes the mask repeatable, e.g. for the same picture every epoch.
    """
    n, length, dim = tokens.shape
    keep = num_visible(length, mask_ratio)
    noise = torch.rand(n, length, device=tokens.device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=tokens.device)  # float32 even under autocast: it is summed
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return MaskedTokens(visible, mask, ids_shuffle, ids_restore)


def unshuffle_with_mask_tokens(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """visible: (N, K, D) in shuffled order, mask_token: (1, 1, D), ids_restore: (N, L)
    -> (N, L, D) in raster order, the removed positions filled with the shared mask token."""
    n, keep, dim = visible.shape
    length = ids_restore.shape[1]
    fill = mask_token.expand(n, length - keep, dim).to(visible.dtype)
    shuffled = torch.cat([visible, fill], dim=1)
    return torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
