"""Bezier intensity maps (paper 001 §3.2.1, eq. 1-2): monotone, invertible, endpoints fixed, one
curve per sample."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.views.bezier import (
    IntensityCurves, cubic_bezier, from_unit_range, random_control_points, random_intensity_curves, to_unit_range,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fine_grid(n: int, steps: int = 20001) -> torch.Tensor:
    return torch.linspace(0.0, 1.0, steps).expand(n, -1).contiguous()


def test_eq2_bernstein_form_at_points_of_t():
    points = torch.tensor([[[0.0, 0.0], [0.2, 0.9], [0.7, 0.1], [1.0, 1.0]]])
    t = torch.tensor([0.0, 0.3, 1.0])
    curve = cubic_bezier(points, t)
    for i, ti in enumerate(t.tolist()):
        expected = [sum(math.comb(3, k) * (1 - ti) ** (3 - k) * ti**k * float(points[0, k, d]) for k in range(4))
                    for d in range(2)]
        assert curve[0, i].tolist() == pytest.approx(expected, abs=1e-6)


def test_control_points_in_the_unit_square_with_the_paper_endpoints():
    points = random_control_points(4000, generator=seeded(0))
    assert ((points >= 0) & (points <= 1)).all()
    increasing = points[:, 0, 1] == 0
    assert torch.equal(points[increasing][:, [0, 3]], torch.tensor([[0.0, 0.0], [1.0, 1.0]]).expand(int(increasing.sum()), -1, -1))
    assert torch.equal(points[~increasing][:, [0, 3]], torch.tensor([[0.0, 1.0], [1.0, 0.0]]).expand(int((~increasing).sum()), -1, -1))
    assert 0.45 < increasing.float().mean() < 0.55  # decreasing with probability 1/2
    assert points[:, 1:3].std(dim=0).min() > 0.25  # P1, P2 spread over [0, 1] (uniform: std 0.289)
    assert (random_control_points(100, decreasing_p=0.0, generator=seeded(1))[:, 0, 1] == 0).all()


def test_increasing_curves_strictly_increase_and_decreasing_strictly_decrease():
    curves = random_intensity_curves(64, generator=seeded(2))
    mapped = curves.apply(fine_grid(64))
    steps = mapped.diff(dim=1)
    up = curves.increasing
    assert 10 < int(up.sum()) < 54
    assert (steps[up] > 0).all()
    assert (steps[~up] < 0).all()


@pytest.mark.parametrize("p1, p2", [((0.0, 0.0), (1.0, 1.0)), ((1.0, 0.0), (0.0, 1.0)), ((0.0, 1.0), (1.0, 0.0)),
                                    ((0.9, 0.95), (0.95, 1.0)), ((0.05, 0.0), (0.1, 0.02))])
def test_extreme_control_points_still_give_monotone_maps(p1, p2):
    """The corners of [0, 1]^2 are where dx/dt or dy/dt touch 0 (module docstring): still monotone."""
    points = torch.tensor([[[0.0, 0.0], p1, p2, [1.0, 1.0]], [[0.0, 1.0], p1, p2, [1.0, 0.0]]])
    mapped = IntensityCurves.from_control_points(points).apply(fine_grid(2, 4001))
    assert (mapped[0].diff() >= 0).all() and (mapped[1].diff() <= 0).all()
    assert mapped[0, -1] - mapped[0, 0] == pytest.approx(1.0) and mapped[1, 0] - mapped[1, -1] == pytest.approx(1.0)


def test_endpoints_are_fixed():
    curves = random_intensity_curves(32, generator=seeded(3))
    ends = curves.apply(torch.tensor([[0.0, 1.0]]).expand(32, -1))
    up = curves.increasing
    assert torch.allclose(ends[up], torch.tensor([0.0, 1.0]).expand(int(up.sum()), -1))
    assert torch.allclose(ends[~up], torch.tensor([1.0, 0.0]).expand(int((~up).sum()), -1))
    assert ((curves.tables >= 0) & (curves.tables <= 1)).all()


def test_linear_control_points_give_the_identity_and_its_mirror():
    """Fig. 2, rows 1 and 6: P0 = P1 and P2 = P3 make the map linear."""
    points = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    values = torch.rand(2, 1000, generator=seeded(4))
    mapped = IntensityCurves.from_control_points(points).apply(values)
    assert torch.allclose(mapped[0], values[0], atol=1e-5)
    assert torch.allclose(mapped[1], 1 - values[1], atol=1e-5)


def test_the_lookup_follows_the_curve():
    """Points on the curve (x(t), y(t)) of eq. 2 are mapped x -> y by the table."""
    points = random_control_points(8, generator=seeded(5))
    t = torch.linspace(0.02, 0.98, 49)
    curve = cubic_bezier(points.double(), t.double()).float()
    mapped = IntensityCurves.from_control_points(points).apply(curve[..., 0])
    assert torch.allclose(mapped, curve[..., 1], atol=2e-3)


def test_inverting_through_the_lookup_recovers_the_input():
    curves = random_intensity_curves(16, generator=seeded(6))
    values = torch.rand(16, 5000, generator=seeded(7))
    assert torch.allclose(curves.invert(curves.apply(values)), values, atol=1e-3)
    assert (curves.invert(curves.apply(values)) - values).abs().median() < 1e-5
    outputs = torch.rand(16, 5000, generator=seeded(8))
    assert torch.allclose(curves.apply(curves.invert(outputs)), outputs, atol=1e-5)


def test_each_sample_gets_its_own_curve():
    curves = random_intensity_curves(8, generator=seeded(9))
    same_input = fine_grid(8, 101)
    mapped = curves.apply(same_input)
    for i in range(8):
        for j in range(i + 1, 8):
            assert (mapped[i] - mapped[j]).abs().max() > 1e-3
    again = random_intensity_curves(8, generator=seeded(9))
    assert torch.equal(again.tables, curves.tables)


def test_images_map_to_the_unit_range_and_back_per_sample():
    images = torch.randn(3, 7, 16, 16) * torch.tensor([1.0, 5.0, 0.1])[:, None, None, None] + 4
    unit, low, span = to_unit_range(images)
    assert torch.allclose(unit.amin(dim=(1, 2, 3)), torch.zeros(3)) and torch.allclose(unit.amax(dim=(1, 2, 3)), torch.ones(3))
    assert torch.allclose(from_unit_range(unit, low, span), images, atol=1e-5)
    curves = random_intensity_curves(3, generator=seeded(10))
    translated = curves.apply(unit)
    assert translated.shape == images.shape
    assert torch.allclose(curves.invert(translated), unit, atol=1e-3)
    flat, _, _ = to_unit_range(torch.full((1, 1, 4, 4), 2.0))  # a constant image does not divide by zero
    assert torch.isfinite(flat).all()
