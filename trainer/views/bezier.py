"""Monotone intensity translation by cubic Bezier curves: TOWER's non-linear translation proxy task
(paper 001 §3.2.1, eq. 1-2, Fig. 2), the non-linear transformation of Models Genesis (Zhou et al.
2019) that TOWER's generative branch builds on. Batched, one curve per sample, on the batch's device.

A curve through P0, P1, P2, P3 (eq. 2, the cubic case of eq. 1) is
    B(t) = P0 (1-t)^3 + 3 P1 (1-t)^2 t + 3 P2 (1-t) t^2 + P3 t^3,     t in [0, 1],
with P0 = (0, 0), P3 = (1, 1) for an increasing map and P0 = (0, 1), P3 = (1, 0) for a decreasing one
(Fig. 2), and control points P1, P2 drawn uniformly in [0, 1]^2 per sample ("the control points set
... evolves with different Bezier curves", §3.3.2; Models Genesis draws them so, and flips the map to
decreasing for half the samples). Eq. 2 writes the pixel value p in place of t; what the released
TOWER code and Models Genesis compute, and what "monotonic invertible functions" (§3.2.1) needs, is
the curve read as the graph of a function, p' = y(x^-1(p)): each pixel value p in [0, 1] is looked up
on the x axis and replaced by the curve's y there.

That graph is a function and monotone for every P1, P2 in [0, 1]^2: with x-coordinates (0, u, v, 1),
dx/dt = 3 [u (1-t)^2 + 2 (v-u) (1-t) t + (1-v) t^2], a quadratic in Bernstein form that stays >= 0 on
[0, 1] because (u - v)^2 <= u (1 - v) whenever u, v are in [0, 1] (each of u - v <= u, u - v <= 1 - v);
it vanishes at most at one isolated t (u = 1, v = 0), so x(t) is strictly increasing. The same argument
on the y-coordinates (0, P1y, P2y, 1), or on 1 - y for the decreasing endpoints, makes y strictly
monotone in t, hence in x: the map is strictly monotone and invertible.

A curve is kept as a lookup table of y at `table_size` evenly spaced x in [0, 1] (built in float64
from a finer sampling of t); the map applied to pixels is the piecewise-linear interpolation of the
table, itself strictly monotone, so `invert` undoes `apply` exactly up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TABLE_SIZE = 1024  # knots of the lookup table on [0, 1]
CURVE_SAMPLES = 8  # samples of t per knot when the table is built


def cubic_bezier(points: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Eq. 2. points: (N, 4, 2) as (P0, P1, P2, P3) with (x, y) each; t: (T,) -> (N, T, 2)."""
    s = 1.0 - t
    weights = torch.stack([s**3, 3 * s**2 * t, 3 * s * t**2, t**3], dim=1)  # (T, 4) Bernstein basis
    return torch.einsum("tk,nkd->ntd", weights.to(points.dtype), points)


def random_control_points(
    n: int, *, decreasing_p: float = 0.5, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> torch.Tensor:
    """-> (n, 4, 2): P1, P2 uniform in [0, 1]^2; endpoints (0, 0), (1, 1), or with probability
    decreasing_p (0, 1), (1, 0)."""
    u = torch.rand(n, 5, device=device, generator=generator)
    decreasing = (u[:, 4] < decreasing_p).to(u.dtype)
    points = torch.empty(n, 4, 2, device=device)
    points[:, 0] = torch.stack([torch.zeros_like(decreasing), decreasing], dim=1)
    points[:, 1:3] = u[:, :4].reshape(n, 2, 2)
    points[:, 3] = torch.stack([torch.ones_like(decreasing), 1.0 - decreasing], dim=1)
    return points


def _interpolate(values: torch.Tensor, knots_x: torch.Tensor, knots_y: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation per row. values: (N, M), knots_x: (N, K) increasing, knots_y:
    (N, K) -> (N, M); values outside the knots take the end values."""
    k = knots_x.shape[1]
    right = torch.searchsorted(knots_x, values.contiguous()).clamp(1, k - 1)
    x0, x1 = knots_x.gather(1, right - 1), knots_x.gather(1, right)
    y0, y1 = knots_y.gather(1, right - 1), knots_y.gather(1, right)
    w = ((values - x0) / (x1 - x0).clamp_min(torch.finfo(values.dtype).tiny)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


@dataclass(frozen=True)
class IntensityCurves:
    """One monotone map of [0, 1] onto itself per sample, as a lookup table `tables`: (N, K), the
    curve's y at x = k / (K - 1)."""

    tables: torch.Tensor

    @classmethod
    def from_control_points(cls, points: torch.Tensor, table_size: int = TABLE_SIZE) -> IntensityCurves:
        """points: (N, 4, 2) -> the curves of eq. 2 read as functions y(x), tabulated."""
        t = torch.linspace(0.0, 1.0, CURVE_SAMPLES * table_size, device=points.device, dtype=torch.float64)
        curve = cubic_bezier(points.double(), t)  # x strictly increasing in t (module docstring)
        grid = torch.linspace(0.0, 1.0, table_size, device=points.device, dtype=torch.float64)
        tables = _interpolate(grid.expand(points.shape[0], -1), curve[..., 0].contiguous(), curve[..., 1].contiguous())
        return cls(tables.float())

    @property
    def increasing(self) -> torch.Tensor:
        """(N,) bool: True where the map increases (P0 = (0, 0)), False where it decreases."""
        return self.tables[:, -1] > self.tables[:, 0]

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """values: (N, ...) in [0, 1] -> p' = y(p), same shape (values outside [0, 1] are clamped)."""
        n, k = self.tables.shape
        flat = values.reshape(n, -1).clamp(0.0, 1.0)
        position = flat * (k - 1)
        left = position.floor().long().clamp(max=k - 2)  # uniform knots: the table index is arithmetic
        y0 = self.tables.gather(1, left).to(flat.dtype)
        y1 = self.tables.gather(1, left + 1).to(flat.dtype)
        return (y0 + (position - left) * (y1 - y0)).reshape(values.shape)

    def invert(self, values: torch.Tensor) -> torch.Tensor:
        """values: (N, ...) in [0, 1] -> p with y(p) = value, the inverse of `apply`."""
        n, k = self.tables.shape
        grid = torch.linspace(0.0, 1.0, k, device=self.tables.device).expand(n, -1)
        # Knots sorted by y: a decreasing table read from its right end.
        up = self.increasing[:, None]
        knots_y = torch.where(up, self.tables, self.tables.flip(1))
        knots_x = torch.where(up, grid, grid.flip(1))
        flat = values.reshape(n, -1).to(knots_y.dtype)
        return _interpolate(flat, knots_y.contiguous(), knots_x.contiguous()).to(values.dtype).reshape(values.shape)


def random_intensity_curves(
    n: int, *, decreasing_p: float = 0.5, device: torch.device | str = "cpu", generator: torch.Generator | None = None,
) -> IntensityCurves:
    """n random curves (control points as `random_control_points`)."""
    return IntensityCurves.from_control_points(
        random_control_points(n, decreasing_p=decreasing_p, device=device, generator=generator))


def to_unit_range(images: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, C, H, W) -> (images rescaled to [0, 1] per sample over all its channels, low (N, 1, 1, 1),
    span (N, 1, 1, 1)). The curves act on normalised intensities (eq. 2: "p ... in the normalized x_n");
    standardised images are mapped there and back per sample, one range for all channels so their
    balance is kept."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    span = (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(eps)
    return (images - low) / span, low, span


def from_unit_range(unit: torch.Tensor, low: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_unit_range`: [0, 1] back to the sample's own range."""
    return unit * span + low
