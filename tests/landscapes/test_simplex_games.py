"""The simplex problems and the bilinear game: exact constrained minimizers and equilibria, the
barycentric drawing map, uniform random starts on the simplex, the ascent mask, and the Problem
contract (batching, dtypes, devices, gradients) the catalog's other landscapes meet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

from engine.problem import Problem
from landscapes import LANDSCAPES, available_landscapes, get_landscape
from landscapes.games import GameProblem, bilinear_game
from landscapes.simplex import SIMPLEX_VERTICES_2D, SimplexProblem, barycentric

SIMPLEX = ["simplex_linear", "simplex_quadratic"]
NEW = [*SIMPLEX, "bilinear_game"]


def _grad(f, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f.loss(x).sum(), x)
    return g


def simplex_grid(n: int = 60) -> np.ndarray:
    """Every point (i, j, n - i - j) / n of the simplex."""
    pts = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
    return np.array(pts, dtype=np.float64) / n


# ---------------------------------------------------------------------------- simplex problems

@pytest.mark.parametrize("name", SIMPLEX)
def test_simplex_problem_contract(name: str) -> None:
    f = get_landscape(name)
    assert isinstance(f, SimplexProblem) and isinstance(f, Problem) and f.geometry == "simplex"
    assert f.dim == 3 and f.name == name and len(f.minima) == 1
    assert f.bounds.low == (0.0, 0.0, 0.0) and f.bounds.high == (1.0, 1.0, 1.0)  # the box holds Delta
    assert f.start == (0.6, 0.3, 0.1) and math.isclose(sum(f.start), 1.0, abs_tol=1e-15)
    assert f.latex.startswith("f(") and r"\Delta" in f.latex
    assert f.description.endswith(".") and len(f.description) > 30 and LANDSCAPES[name].__doc__


def test_linear_minimizer_is_the_cheapest_vertex() -> None:
    f = get_landscape("simplex_linear")
    (m,) = f.minima
    assert m.x == (0.0, 1.0, 0.0) and m.value == 0.25
    assert f.loss(torch.tensor(m.x, dtype=torch.float64)).item() == 0.25
    c = _grad(f, torch.tensor(f.start, dtype=torch.float64)).numpy()  # the cost vector
    np.testing.assert_array_equal(c, [0.75, 0.25, 0.5])
    values = f.loss(torch.tensor(simplex_grid()))
    assert values.min().item() == pytest.approx(0.25, abs=1e-15)
    assert int(torch.argmin(values)) == int(np.flatnonzero((simplex_grid() == [0, 1, 0]).all(axis=1))[0])


def test_quadratic_minimizer_satisfies_kkt_and_beats_the_simplex() -> None:
    """Convex f with an interior point where grad f = mu * 1 (equal partial derivatives along the
    simplex): the constrained minimizer, exactly; no point of a fine grid of the simplex is lower."""
    f = get_landscape("simplex_quadratic")
    (m,) = f.minima
    p = torch.tensor(m.x, dtype=torch.float64)
    assert m.x == (0.5, 0.25, 0.25) and m.value == 0.0625 and f.loss(p).item() == 0.0625
    g = _grad(f, p)
    assert torch.equal(g, torch.full((3,), 0.25, dtype=torch.float64))  # KKT multiplier mu = 1/4
    q = hessian(lambda x: f.loss(x), p)
    torch.testing.assert_close(q, torch.tensor([[2.0, -1, 0], [-1, 2, -1], [0, -1, 2]], dtype=torch.float64))
    assert torch.linalg.eigvalsh(q).min().item() == pytest.approx(2 - math.sqrt(2), rel=1e-12)  # convex
    assert f.loss(torch.tensor(simplex_grid())).min().item() >= 0.0625 - 1e-15


def test_barycentric_map() -> None:
    eye = np.eye(3)
    np.testing.assert_allclose(barycentric(eye), np.array(SIMPLEX_VERTICES_2D), atol=1e-16)
    centroid = barycentric(np.full(3, 1 / 3))
    np.testing.assert_allclose(centroid, [0.5, math.sqrt(3) / 6], atol=1e-15)
    sides = [np.linalg.norm(np.subtract(SIMPLEX_VERTICES_2D[i], SIMPLEX_VERTICES_2D[j]))
             for i, j in ((0, 1), (1, 2), (0, 2))]
    np.testing.assert_allclose(sides, 1.0, rtol=1e-15)  # equilateral
    pts = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 5))
    xy = barycentric(pts)
    assert xy.shape == (4, 5, 2)
    np.testing.assert_allclose(xy, pts @ np.array(SIMPLEX_VERTICES_2D), atol=1e-15)  # sum_i p_i V_i
    t = get_landscape("simplex_linear").barycentric(torch.tensor(pts, dtype=torch.float32))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), xy, rtol=1e-6)


def test_random_starts_are_uniform_on_the_simplex() -> None:
    f = get_landscape("simplex_quadratic")
    x = f.random_starts(20_000, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 3) and x.dtype == torch.float64
    assert (x > 0).all() and (x.sum(dim=1) - 1).abs().max().item() <= 1e-15
    # Dirichlet(1, 1, 1): each marginal is Beta(1, 2), mean 1/3, variance 1/18
    np.testing.assert_allclose(x.mean(dim=0).numpy(), 1 / 3, atol=0.01)
    np.testing.assert_allclose(x.var(dim=0).numpy(), 1 / 18, atol=0.003)


# ---------------------------------------------------------------------------- bilinear game

def test_bilinear_game_contract_and_equilibrium() -> None:
    f = get_landscape("bilinear_game")
    assert isinstance(f, GameProblem) and isinstance(f, Problem)
    assert f.dim == 2 and f.ascent == (False, True) and f.equilibrium == (0.0, 0.0)
    assert f.minima[0].x == (0.0, 0.0) and f.minima[0].value == 0.0
    assert "equilibrium" in f.description and f.description.endswith(".")
    assert f.latex == r"f(x, y) = x y,\quad \min_x \max_y"
    assert _grad(f, torch.zeros(2, dtype=torch.float64)).abs().max().item() == 0.0
    h = hessian(lambda z: f.loss(z), torch.zeros(2, dtype=torch.float64))
    assert torch.equal(h, torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64))  # a saddle of f
    x0 = f.x0()
    assert all(lo <= v <= hi for v, lo, hi in zip(x0.tolist(), f.bounds.low, f.bounds.high, strict=True))


@pytest.mark.parametrize(("n", "coupling", "alpha"), [(1, 1.0, 0.0), (3, 2.0, 0.5), (2, 0.0, 1.0)])
def test_bilinear_game_field_is_linear(n: int, coupling: float, alpha: float) -> None:
    """grad f = [[alpha I, a I], [a I, -alpha I]] z; the descent field flips y's rows."""
    f = bilinear_game(n=n, coupling=coupling, alpha=alpha)
    assert f.dim == 2 * n and f.ascent == (False,) * n + (True,) * n
    z = torch.tensor(np.random.default_rng(n).normal(size=(5, 2 * n)))
    eye = np.eye(n)
    h = np.block([[alpha * eye, coupling * eye], [coupling * eye, -alpha * eye]])
    np.testing.assert_allclose(_grad(f, z).numpy(), z.numpy() @ h, rtol=1e-13, atol=1e-15)
    x, y = z[:, :n].numpy(), z[:, n:].numpy()
    want = coupling * (x * y).sum(1) + alpha / 2 * ((x * x).sum(1) - (y * y).sum(1))
    np.testing.assert_allclose(f.loss(z).numpy(), want, rtol=1e-13, atol=1e-15)
    assert dict(f.params) == {"n": n, "coupling": coupling, "alpha": alpha}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 0}, "n must be an int >= 1"),
    ({"n": True}, "n must be an int >= 1"),
    ({"coupling": 0.0}, "not both 0"),
    ({"alpha": -1.0}, "alpha >= 0"),
])
def test_bilinear_game_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_landscape("bilinear_game", **kwargs)


def test_game_ascent_mask_is_validated() -> None:
    f = get_landscape("bilinear_game")
    fields = {k: getattr(f, k) for k in ("name", "dim", "latex", "fn", "bounds", "minima", "start")}
    with pytest.raises(ValueError, match="ascent must mark some but not all"):
        GameProblem(**fields, ascent=(True, True))
    with pytest.raises(ValueError, match="ascent must mark some but not all"):
        GameProblem(**fields, ascent=(False,))


# ---------------------------------------------------------------------------- shared contract

def test_registered_in_the_catalog() -> None:
    names = available_landscapes()
    assert names[-5:-2] == NEW and all(get_landscape(n).name == n for n in NEW)  # then the matrix games


@pytest.mark.parametrize("name", NEW)
def test_batched_dtypes_devices_and_gradients(name: str) -> None:
    f = get_landscape(name)
    gen = torch.Generator().manual_seed(3)
    x = f.bounds.sample(37, gen, dtype=torch.float64, device=torch.device("cpu"))
    for dtype in (torch.float64, torch.float32):
        xd = x.to(dtype)
        rows = torch.cat([f.fn(xd[i:i + 1]) for i in range(37)])
        assert torch.equal(f.fn(xd), rows) and rows.dtype == dtype
    torch.testing.assert_close(f.loss(x.float()).double(), f.loss(x), rtol=1e-5, atol=1e-6)
    out = f.loss(torch.empty(4, f.dim, device="meta", dtype=torch.float64))
    assert out.device.type == "meta" and out.shape == (4,)
    h = 1e-5  # central differences: exact up to rounding for these quadratic and linear functions
    eye = torch.eye(f.dim, dtype=torch.float64) * h
    fd = torch.stack([(f.loss(x + e) - f.loss(x - e)) / (2 * h) for e in eye], dim=1)
    torch.testing.assert_close(_grad(f, x), fd, rtol=1e-8, atol=1e-8)
