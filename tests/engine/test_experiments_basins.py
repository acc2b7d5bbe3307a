"""Basin maps against basins known in closed form: gradient descent on a quadratic (one basin, the
steps to tolerance by formula), on Himmelblau from points near each of its four minima, and a step
size that diverges; chunks stream in order; a pixel reopens as the race from its start."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.experiments import DIVERGED, NOT_CONVERGED, BasinMap, basin_chunks, basin_map
from engine.experiments.basins import new_map
from engine.run import Run
from landscapes import get_landscape


def test_gradient_descent_on_a_quadratic_has_one_basin_and_the_closed_form_steps() -> None:
    """f = (x^2 + 10 y^2) / 2 and lr = 0.1: y_1 = (1 - 0.1 * 10) y_0 = 0 and x_t = 0.9^t x_0. A start
    is within tol of the minimum from t = max(1, ceil(log(tol / |x_0|) / log 0.9)) (0 if it starts
    there)."""
    problem = get_landscape("quadratic", kappa=10.0)
    tol = 1e-3
    m = basin_map(problem, "sgd", {"lr": 0.1}, grid=(24, 16), steps=100, tol=tol, chunk=200, device="cpu")
    assert (m.label == 0).all()
    gx, gy = np.meshgrid(m.xs, m.ys)
    with np.errstate(divide="ignore"):
        t = np.maximum(1, np.ceil(np.log(tol / np.abs(gx)) / math.log(0.9)))
    t = np.where(np.hypot(gx, gy) <= tol, 0, t)
    near_edge = np.abs(0.9**t * np.abs(gx) - tol) < 1e-9  # rounding could go either way there
    assert (m.steps == t)[~near_edge].all() and (~near_edge).sum() > 0.99 * t.size


@pytest.mark.parametrize("k", range(4))
def test_gradient_descent_near_each_of_himmelblaus_minima_ends_in_it(k: int) -> None:
    problem = get_landscape("himmelblau")
    x, y = problem.minima[k].x
    m = basin_map(
        problem,
        "sgd",
        {"lr": 0.005},
        grid=8,
        steps=400,
        tol=1e-4,
        device="cpu",
        extent=((x - 0.3, x + 0.3), (y - 0.3, y + 0.3)),
    )
    assert (m.label == k).all() and (m.steps > 0).all()


@pytest.mark.parametrize(
    ("optimizer", "hyperparameters", "reference"),
    [
        ("sgd", {"lr": 0.01}, lambda z: torch.optim.SGD([z], lr=0.01)),
        ("adam", {"lr": 0.02}, lambda z: torch.optim.Adam([z], lr=0.02)),
        ("momentum", {"lr": 0.005, "momentum": 0.9}, lambda z: torch.optim.SGD([z], lr=0.005, momentum=0.9)),
    ],
)
def test_every_pixel_matches_its_own_plain_torch_loop(optimizer, hyperparameters, reference) -> None:
    """Each start of a Himmelblau grid, run alone with torch's optimizer on the closed form
    f = (x^2 + y - 11)^2 + (x + y^2 - 7)^2 and classified by hand (nearest minimum within tol, else
    not converged), gets the label the batched map gives it: the map's "not converged" areas are the
    optimizer's, not the map's. Adam at 0.02 for 60 steps leaves most starts on the way."""
    problem = get_landscape("himmelblau")
    steps, tol = 60, 5e-2
    m = basin_map(problem, optimizer, hyperparameters, grid=9, steps=steps, tol=tol, device="cpu")
    minima = torch.tensor([p.x for p in problem.minima], dtype=torch.float64)
    expected = np.empty_like(m.label)
    for i, y in enumerate(m.ys):
        for j, x in enumerate(m.xs):
            z = torch.tensor([x, y], dtype=torch.float64, requires_grad=True)
            opt = reference(z)
            for _ in range(steps):
                opt.zero_grad()
                ((z[0] ** 2 + z[1] - 11) ** 2 + (z[0] + z[1] ** 2 - 7) ** 2).backward()
                opt.step()
            d, k = torch.cdist(z.detach()[None], minima).min(dim=1)
            expected[i, j] = int(k) if float(d) <= tol else NOT_CONVERGED
    np.testing.assert_array_equal(m.label, expected)
    assert len(np.unique(expected)) >= 3  # the grid shows several outcomes, not one trivial answer


def test_a_step_size_past_the_stability_limit_is_labelled_diverged() -> None:
    """Himmelblau's Hessian has eigenvalues near 80 at its minima: GD with lr = 0.5 (> 2 / 80)
    cannot settle anywhere and blows up."""
    m = basin_map(get_landscape("himmelblau"), "sgd", {"lr": 0.5}, grid=10, steps=100, device="cpu")
    assert (m.label == DIVERGED).mean() > 0.9 and (m.steps[m.label == DIVERGED] == -1).all()


def test_chunks_stream_in_order_and_a_pixel_reopens_as_its_race() -> None:
    problem = get_landscape("himmelblau")
    into = new_map(problem, "adam", {"lr": 0.05}, grid=(7, 5), steps=150, tol=1e-3, device="cpu")
    fills = []
    for chunk in basin_chunks(
        problem, "adam", {"lr": 0.05}, grid=(7, 5), steps=150, tol=1e-3, chunk=8, device="cpu", into=into
    ):
        fills.append((chunk.index, into.filled))
    assert [f[0] for f in fills] == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 35)]
    assert [f[1] for f in fills] == [8, 16, 24, 32, 35]
    i, j = 3, 5
    assert into.pixel(*into.start(i, j)) == (i, j)
    name, options, rc = into.race(i, j)
    assert (name, rc.start, rc.n_starts) == ("himmelblau", into.start(i, j), 1)
    records = Run(get_landscape(name, **options), rc).run(151)
    final = records[-1].position[0]
    chunk_final = next(
        c
        for c in basin_chunks(
            problem, "adam", {"lr": 0.05}, grid=(7, 5), steps=150, tol=1e-3, chunk=8, device="cpu"
        )
        if c.index[0] <= i * 7 + j < c.index[1]
    )
    np.testing.assert_allclose(
        final, chunk_final.final[i * 7 + j - chunk_final.index[0]], rtol=1e-12, atol=1e-12
    )
    label = into.label[i, j]
    assert np.linalg.norm(final - np.array(problem.minima[label].x)) <= 1e-3


def test_bad_basin_requests_fail_clearly() -> None:
    with pytest.raises(ValueError, match="2-D landscapes"):
        basin_map(get_landscape("rosenbrock", dim=3), "sgd")
    with pytest.raises(ValueError, match="no known minima"):
        basin_map(get_landscape("saddle"), "sgd")
    with pytest.raises(ValueError, match="grid width must be an integer from 1 to 1,000"):
        basin_map(get_landscape("himmelblau"), "sgd", grid=1001)
    with pytest.raises(ValueError, match="limited to 4,096 starts"):
        basin_map(get_landscape("himmelblau"), "zo_sgd", grid=100)
    assert isinstance(new_map(get_landscape("himmelblau"), "sgd", grid=2, device="cpu"), BasinMap)
