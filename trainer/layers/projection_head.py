"""MLP projection / prediction heads (SimCLR, SimSiam, VICReg expanders, BYOL predictors).

Linear layers with BatchNorm1d and ReLU between them; `last_bn` adds a BatchNorm after the last
linear, affine-free (SimSiam's projector ends so) or, with `last_bn_affine`, with its own scale and
shift (MLVICX's released expanders); the last layer has no ReLU.
"""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """(N, dims[0]) -> (N, dims[-1]). dims=(2048, 8192, 8192, 8192) is VICReg's 3-layer expander."""

    def __init__(self, dims: tuple[int, ...] | list[int], *, last_bn: bool = False, last_bn_affine: bool = False,
                 hidden_bn: bool = True):
        if len(dims) < 2:
            raise ValueError(f"a head needs at least an input and an output width, got {dims}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            layers.append(nn.Linear(d_in, d_out, bias=not (last and last_bn) and not (not last and hidden_bn)))
            if not last:
                if hidden_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.ReLU(inplace=True))
            elif last_bn:
                layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine))
        super().__init__(*layers)
