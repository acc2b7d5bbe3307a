"""The linear-path instrument (engine.connectivity) against closed forms: the loss along a segment,
the barrier above the chord, the problem's metrics along the path, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.connectivity import interpolate, l2_distance, linear_path, loss_barrier
from engine.problem import Bounds
from landscapes.analytic import AnalyticFunction
from landscapes.networks import class_accuracy, cross_entropy, problem_from_module, seeded


def double_well() -> AnalyticFunction:
    """f(x, y) = (x^2 - 1)^2 + y^2: minima (+-1, 0), a barrier of height 1 between them."""
    return AnalyticFunction(name="double_well", dim=2, latex="f", bounds=Bounds((-2.0, -2.0), (2.0, 2.0)),
                            fn=lambda z: (z[..., 0] ** 2 - 1) ** 2 + z[..., 1] ** 2)


def test_the_path_and_barrier_of_a_double_well_are_the_closed_forms() -> None:
    """From (-1, 0) to (1, 0): x = 2 alpha - 1, L(alpha) = ((2 alpha - 1)^2 - 1)^2, chord 0, barrier 1 at
    alpha = 1/2; from (-1, 0.5) to (1, -0.5) the chord is 0.25 and L = ((2a-1)^2-1)^2 + (0.5-a)^2."""
    f = double_well()
    path = linear_path(f, [-1.0, 0.0], [1.0, 0.0], k=11)
    a = np.linspace(0, 1, 11)
    assert path.alphas[0] == 0.0 and path.alphas[-1] == 1.0
    np.testing.assert_allclose(path.alphas, a, rtol=1e-15)
    np.testing.assert_allclose(path.curves["loss"], ((2 * a - 1) ** 2 - 1) ** 2, atol=1e-15)
    assert set(path.curves) == {"loss"} and path.barriers == {"loss": pytest.approx(1.0, abs=1e-15)}
    tilted = linear_path(f, [-1.0, 0.5], [1.0, -0.5], k=11)
    values = ((2 * a - 1) ** 2 - 1) ** 2 + (0.5 - a) ** 2
    np.testing.assert_allclose(tilted.curves["loss"], values, atol=1e-15)
    assert tilted.barriers["loss"] == pytest.approx(0.75, abs=1e-15)  # L(1/2) = 1 above a chord of 0.25
    assert loss_barrier(a, values) == pytest.approx(np.max(values - 0.25), abs=1e-15)


def test_a_convex_loss_has_no_barrier() -> None:
    """For f = |x|^2 / 2 the path lies below the chord by alpha (1 - alpha) |a - b|^2 / 2: barrier 0."""
    f = AnalyticFunction(name="bowl", dim=3, latex="f", bounds=Bounds((-1.0,) * 3, (1.0,) * 3),
                         fn=lambda z: 0.5 * (z * z).sum(-1))
    a, b = np.array([1.0, -2.0, 0.5]), np.array([-0.5, 1.0, 2.0])
    path = linear_path(f, a, b, k=9)
    alphas = path.alphas
    chord = (1 - alphas) * 0.5 * (a @ a) + alphas * 0.5 * (b @ b)
    below = 0.5 * alphas * (1 - alphas) * np.sum((a - b) ** 2)
    np.testing.assert_allclose(chord - path.curves["loss"], below, atol=1e-14)
    assert path.barriers["loss"] == 0.0
    assert l2_distance(a, b) == pytest.approx(np.linalg.norm(a - b), rel=1e-15)
    pts = interpolate(torch.tensor(a), torch.tensor(b), torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64))
    np.testing.assert_allclose(pts.numpy(), [a, 0.75 * a + 0.25 * b, b], rtol=1e-15)


def test_a_network_path_carries_its_metrics() -> None:
    """Each curve is the problem's own figure at the interpolated parameters (chunks of 4 points)."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (40,), generator=g)
    module = seeded(lambda: nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3)), 0)
    net = problem_from_module(module, cross_entropy, X[:30], y[:30], X_test=X[30:], y_test=y[30:],
                              accuracy=class_accuracy)
    a = net.x0()
    b = torch.randn(net.dim, generator=g, dtype=torch.float64)
    path = linear_path(net, a, b, k=10, chunk=4)
    assert set(path.curves) == {"loss", "train_loss", "test_loss", "train_accuracy", "test_accuracy"}
    assert set(path.barriers) == {"loss", "train_loss", "test_loss"}
    points = interpolate(a, b, torch.tensor(path.alphas))
    direct = net.metrics(points)
    for name, v in direct.items():
        np.testing.assert_allclose(path.curves[name], v.numpy(), rtol=1e-13)
    np.testing.assert_allclose(path.curves["loss"], net.loss(points).detach().numpy(), rtol=1e-13)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"theta_a": [0.0, 0.0, 0.0]}, r"theta_a must be a flat parameter vector of size 2 .* got shape \[3\]"),
    ({"theta_b": [np.nan, 0.0]}, "theta_b has non-finite entries"),
    ({"k": 1}, r"k must be an integer in \[2, 10000\], got 1"),
    ({"k": 2.5}, "k must be an integer"),
])
def test_bad_input_is_refused_in_the_users_terms(kwargs: dict, message: str) -> None:
    call = {"theta_a": [-1.0, 0.0], "theta_b": [1.0, 0.0], "k": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        linear_path(double_well(), call["theta_a"], call["theta_b"], call["k"])
    with pytest.raises(ValueError, match="alphas from 0 to 1"):
        loss_barrier([0.1, 1.0], [1.0, 2.0])
