"""A crop that training enlarges is handed over at its own size and resized on the device.

What a batch row holds (C, S, S) when the stream leaves a crop of h x w pixels (h, w <= S; see
Augment.on_device) to the device: rows [:h, :w] hold the crop's pixels, row h and column w repeat
its last row and column (`repeat_edges`; where h or w is S there is no such row or column), and
the rest is whatever the buffer held before. The batch says so per row in "resize_from"
(height, width: S, S for a row that is final) and "flip".

`finish_crops`, on the device, resizes those rows to S x S bilinearly, at OpenCV's sample
positions (INTER_LINEAR: output pixel x' reads source x = (x' + 0.5) * w / S - 0.5, clamped to
[0, w - 1]), so that the result is what Augment.apply gives on the CPU, less its rounding to
integers; then it mirrors the rows whose flip was drawn.

Why on the GPU: a DataLoader worker's resize and flip were 60 us of the ~0.5 ms a 224 px 16-bit
sample cost it, where decoding is the bound; on the GPU the same work is one grid_sample over
the batch. And since the crop's pixels are no more than the resized image's, nothing more is
handed over or copied to the device. Why only there (make_loader's resize_on_device, which the
trainer sets on CUDA): on one CPU core grid_sample took ~440 us a 224 px sample, OpenCV in a
worker ~45 us.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def repeat_edges(row: np.ndarray, height: int, width: int) -> None:
    """row (C, S, S) holding a crop in [:, :height, :width]: copy its last row into row `height`
    and its last column into column `width`, where the row has room for them. The device's
    bilinear samples at the crop's border then read only the crop's own values, whatever else
    the buffer held."""
    if height < row.shape[1]:
        row[:, height, :width] = row[:, height - 1, :width]
    if width < row.shape[2]:
        rows = min(height + 1, row.shape[1])
        row[:, :rows, width] = row[:, :rows, width - 1]


def finish_crops(images: torch.Tensor, resize_from: np.ndarray, flip: np.ndarray) -> torch.Tensor:
    """images (B, C, H, W) float, on any device; resize_from (B, 2) integer: the (height, width)
    each row holds in its top-left corner (see the module docstring); flip (B,) bool. Both on the
    host (numpy, or CPU tensors): which rows need work is decided there, so a GPU batch is never
    waited for. Every row resized to H x W and mirrored where flipped, in place; returns `images`."""
    resize_from, flip = np.asarray(resize_from), np.asarray(flip, dtype=bool)
    if resize_from.shape != (images.shape[0], 2) or flip.shape != images.shape[:1]:
        raise ValueError(f"resize_from {resize_from.shape} and flip {flip.shape} do not "
                         f"describe a batch of {images.shape[0]}")
    height, width = images.shape[-2:]
    pending = np.flatnonzero((resize_from[:, 0] != height) | (resize_from[:, 1] != width))
    if len(pending):
        rows = torch.from_numpy(pending).to(images.device)
        sizes = torch.from_numpy(resize_from[pending].astype(np.float32)).to(images.device, images.dtype)
        grid_y = _sample_positions(sizes[:, :1], height, images.device)
        grid_x = _sample_positions(sizes[:, 1:], width, images.device)
        grid = torch.stack(torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1)
        images[rows] = F.grid_sample(images[rows], grid, mode="bilinear", padding_mode="border", align_corners=False)
    flipped = np.flatnonzero(flip)
    if len(flipped):
        rows = torch.from_numpy(flipped).to(images.device)
        images[rows] = images[rows].flip(-1)
    return images


def _sample_positions(crop: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    """crop (n, 1): each row's crop length along one axis -> (n, size): where output pixels
    0..size-1 sample it (OpenCV's INTER_LINEAR positions, clamped to the crop), in grid_sample's
    [-1, 1] coordinates of the whole `size` buffer (align_corners=False)."""
    centres = torch.arange(size, device=device, dtype=crop.dtype) + 0.5
    source = torch.minimum((centres * crop / size - 0.5).clamp_(min=0), crop - 1)
    return (2 * source + 1) / size - 1
