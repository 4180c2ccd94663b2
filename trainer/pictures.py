"""Reconstruction pictures: a PNG grid of input, mask and reconstruction at each scale."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def _display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) float, any normalisation -> (H, W) or (H, W, 3) uint8, windowed to its own
    1st-99th percentiles (display only). More than 3 channels: the first one."""
    arr = image.detach().float().cpu().numpy()
    arr = arr[:3] if arr.shape[0] == 3 else arr[:1]
    lo, hi = np.percentile(arr, [1, 99])
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    out = (arr.transpose(1, 2, 0) * 255).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_RGB2BGR) if out.shape[2] == 3 else cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)


def reconstruction_grid(columns: dict[str, torch.Tensor], tile: int = 160) -> np.ndarray:
    """{name: (N, C, H, W)} -> one BGR uint8 picture: a row per sample, a column per name, titled."""
    names = list(columns)
    rows = next(iter(columns.values())).shape[0]
    title = 22
    sheet = np.full((title + rows * tile, len(names) * tile, 3), 32, np.uint8)
    for c, name in enumerate(names):
        cv2.putText(sheet, name, (c * tile + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        for r in range(rows):
            tile_img = cv2.resize(_display(columns[name][r]), (tile, tile), interpolation=cv2.INTER_AREA)
            sheet[title + r * tile : title + (r + 1) * tile, c * tile : (c + 1) * tile] = tile_img
    return sheet


def write_png(path: Path, picture: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", picture)
    if ok:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buf.tobytes())
        tmp.replace(path)
