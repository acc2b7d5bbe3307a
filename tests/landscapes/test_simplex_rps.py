"""Rock-paper-scissors games on two simplices: equilibria against a linear program and against the
regularized fixed-point equations, the duality gap against brute force over the simplex, the KL, the
Problem contract, the catalog entry and the arrays of ``play``."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from engine.limits import LimitError
from engine.problem import Problem
from landscapes import get_landscape, problem_size
from landscapes.simplex import barycentric
from landscapes.simplex_games import BIASED_RPS, RPS, SimplexGame, play, regularized_equilibrium

GAMES = {"rps_game": RPS, "biased_rps_game": BIASED_RPS}


def lp_equilibrium(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """min_x max_j (A'x)_j and max_y min_i (Ay)_i over the simplices as two linear programs (HiGHS)."""
    m, n = a.shape
    # x: minimize v subject to A'x - v <= 0, sum x = 1, x >= 0
    rx = linprog(np.r_[np.zeros(m), 1.0], A_ub=np.c_[a.T, -np.ones(n)], b_ub=np.zeros(n),
                 A_eq=np.r_[np.ones(m), 0.0][None], b_eq=[1.0], bounds=[(0, None)] * m + [(None, None)])
    # y: maximize w subject to w - Ay <= 0, sum y = 1, y >= 0
    ry = linprog(np.r_[np.zeros(n), -1.0], A_ub=np.c_[-a, np.ones(m)], b_ub=np.zeros(m),
                 A_eq=np.r_[np.ones(n), 0.0][None], b_eq=[1.0], bounds=[(0, None)] * n + [(None, None)])
    assert rx.status == 0 and ry.status == 0
    assert rx.x[-1] == pytest.approx(-ry.fun, abs=1e-9)  # the LP duality: one value
    return rx.x[:m], ry.x[:n], float(rx.x[-1])


def simplex_grid(k: int) -> np.ndarray:
    return np.array([(i, j, k - i - j) for i in range(k + 1) for j in range(k + 1 - i)], dtype=float) / k


def softmax(u: np.ndarray) -> np.ndarray:
    e = np.exp(u - u.max())
    return e / e.sum()


# ---------------------------------------------------------------------------- equilibria

@pytest.mark.parametrize("name", GAMES)
def test_unregularized_equilibrium_is_the_linear_programs(name: str) -> None:
    game = get_landscape(name)
    x, y, value = lp_equilibrium(np.array(GAMES[name]))
    star = np.array(game.equilibrium)
    np.testing.assert_allclose(star[:3], x, atol=1e-9)
    np.testing.assert_allclose(star[3:], y, atol=1e-9)
    assert game.minima[0].value == pytest.approx(value, abs=1e-15)
    assert value == pytest.approx({"rps_game": 0.0, "biased_rps_game": 1 / 12}[name], abs=1e-9)


def test_the_biased_equilibrium_is_exact_in_rationals() -> None:
    """A y* = (1/12) 1 and A' x* = (1/12) 1 in exact arithmetic, with the fractions the problem states."""
    a = [[Fraction(v).limit_denominator() for v in row] for row in BIASED_RPS]
    x = [Fraction(1, 4), Fraction(1, 3), Fraction(5, 12)]
    y = [Fraction(1, 3), Fraction(1, 4), Fraction(5, 12)]
    assert [sum(a[i][j] * y[j] for j in range(3)) for i in range(3)] == [Fraction(1, 12)] * 3
    assert [sum(a[i][j] * x[i] for i in range(3)) for j in range(3)] == [Fraction(1, 12)] * 3
    assert get_landscape("biased_rps_game").equilibrium == tuple(float(v) for v in (*x, *y))


@pytest.mark.parametrize("tau", [1e-3, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("name", GAMES)
def test_regularized_equilibrium_solves_the_fixed_point_equations(name: str, tau: float) -> None:
    """x* = softmax(-A y*/tau), y* = softmax(A'x*/tau), the unique equilibrium for tau > 0; for the
    symmetric game it stays uniform for every tau (A 1 = A'1 = 0)."""
    game = get_landscape(name, tau=tau)
    a = np.array(GAMES[name])
    star = np.array(game.equilibrium)
    x, y = star[:3], star[3:]
    tol = 1e-13 / tau  # the equations divide by tau; the solver's residual is ~1e-16
    np.testing.assert_allclose(x, softmax(-(a @ y) / tau), atol=tol)
    np.testing.assert_allclose(y, softmax((a.T @ x) / tau), atol=tol)
    if name == "rps_game":
        assert star.tolist() == [1 / 3] * 6
        solved = np.concatenate(regularized_equilibrium(RPS, tau, ((0.3, 0.3, 0.4), (0.5, 0.2, 0.3))))
        np.testing.assert_allclose(solved, 1 / 3, atol=1e-14)
    assert game.duality_gap(torch.tensor(star)[None]).item() == pytest.approx(0.0, abs=1e-13)


# ---------------------------------------------------------------------------- curves

@pytest.mark.parametrize("tau", [0.0, 0.3])
@pytest.mark.parametrize("name", GAMES)
def test_duality_gap_is_the_brute_force_one(name: str, tau: float) -> None:
    """max_y' f(x, y') - min_x' f(x', y) over a grid of 20,301 points of each simplex: the closed form
    is above it by at most the grid's resolution (and equal at tau = 0, where the extremes are
    vertices, which the grid holds)."""
    game = get_landscape(name, tau=tau)
    grid = torch.tensor(simplex_grid(200))
    rng = np.random.default_rng(1)
    z = torch.tensor(np.concatenate([rng.dirichlet(np.ones(3), 5), rng.dirichlet(np.ones(3), 5)], axis=1))
    gap = game.duality_gap(z).numpy()
    for k in range(5):
        x, y = z[k, :3], z[k, 3:]
        best_y = game.loss(torch.cat([x.expand(len(grid), 3), grid], 1)).max().item()
        best_x = game.loss(torch.cat([grid, y.expand(len(grid), 3)], 1)).min().item()
        brute = best_y - best_x
        if tau == 0.0:
            assert gap[k] == pytest.approx(brute, abs=1e-14)
        else:
            assert brute - 1e-14 <= gap[k] <= brute + 1e-3
    assert (gap > 0).all()


@pytest.mark.parametrize("name", GAMES)
def test_kl_to_the_equilibrium(name: str) -> None:
    game = get_landscape(name, tau=0.2)
    star = np.array(game.equilibrium)
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.dirichlet(np.ones(3), 4), rng.dirichlet(np.ones(3), 4)], axis=1)
    want = (star * np.log(star / z)).sum(1)
    np.testing.assert_allclose(game.kl_to_equilibrium(torch.tensor(z)).numpy(), want, rtol=1e-13)
    assert game.kl_to_equilibrium(torch.tensor(star)[None]).item() == 0.0
    metrics = game.metrics(torch.tensor(z))
    assert set(metrics) == {"duality_gap", "kl_to_equilibrium"}
    assert all(v.shape == (4,) for v in metrics.values())


# ---------------------------------------------------------------------------- the problem

@pytest.mark.parametrize("name", GAMES)
def test_contract(name: str) -> None:
    game = get_landscape(name, tau=0.5)
    assert isinstance(game, SimplexGame) and isinstance(game, Problem) and game.name == name
    assert game.dim == 6 and game.param_shapes == ((3,), (3,)) and game.sizes == (3, 3)
    assert game.ascent == (False,) * 3 + (True,) * 3 and game.geometry == "simplex_game"
    assert dict(game.params) == {"tau": 0.5} and "tau = 0.5" in game.title
    assert game.latex.startswith("f(") and r"\Delta^2" in game.latex and "pmatrix" in game.latex
    assert game.description.endswith(".") and len(game.description) > 30
    x0 = np.array(game.start)
    np.testing.assert_allclose(x0.reshape(2, 3).sum(1), 1.0, rtol=1e-15)
    starts = game.random_starts(2000, torch.Generator().manual_seed(0))
    assert starts.shape == (2000, 6) and (starts > 0).all()
    np.testing.assert_allclose(starts.reshape(-1, 2, 3).sum(-1).numpy(), 1.0, atol=1e-15)
    np.testing.assert_allclose(starts.mean(0).numpy(), 1 / 3, atol=0.02)  # Dirichlet(1, 1, 1) marginals
    x, y = game.players(starts)
    assert torch.equal(torch.cat([x, y], 1), starts)


@pytest.mark.parametrize("tau", [0.0, 0.4])
@pytest.mark.parametrize("name", GAMES)
def test_loss_is_the_formula_batched_exactly_with_autograd_gradients(name: str, tau: float) -> None:
    game = get_landscape(name, tau=tau)
    a = np.array(GAMES[name])
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.dirichlet(np.ones(3), 17), rng.dirichlet(np.ones(3), 17)], axis=1)
    x, y = z[:, :3], z[:, 3:]
    want = ((x @ a) * y).sum(1) + tau * ((x * np.log(x)).sum(1) - (y * np.log(y)).sum(1))
    zt = torch.tensor(z)
    np.testing.assert_allclose(game.loss(zt).numpy(), want, rtol=1e-13, atol=1e-15)
    rows = torch.cat([game.fn(zt[i:i + 1]) for i in range(17)])
    assert torch.equal(game.fn(zt), rows)
    assert game.loss(zt.float()).dtype == torch.float32
    g = zt.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(game.loss(g).sum(), g)
    want_grad = np.concatenate([y @ a.T + tau * (np.log(x) + 1), x @ a - tau * (np.log(y) + 1)], axis=1)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-12, atol=1e-14)
    out = game.loss(torch.empty(4, 6, device="meta", dtype=torch.float64))
    assert out.device.type == "meta" and out.shape == (4,)


def test_catalog_and_declared_options() -> None:
    for name in GAMES:
        size = problem_size(name, {"tau": 0.5})
        assert size.params == 6 and size.label == f"{name} tau=0.5"
    with pytest.raises(LimitError, match=r"^rps_game: tau=11 is over its limit of 10$"):
        get_landscape("rps_game", tau=11.0)
    with pytest.raises(ValueError, match=r"tau must be a finite number >= 0, got -0\.1"):
        get_landscape("biased_rps_game", tau=-0.1)
    with pytest.raises(ValueError, match="tau must be a finite number"):
        get_landscape("rps_game", tau=math.nan)
    with pytest.raises(ValueError, match=r"does not take 'n'; it takes: tau"):
        get_landscape("rps_game", n=2)


# ---------------------------------------------------------------------------- play: what a view draws

def test_play_returns_the_arrays_a_view_draws() -> None:
    game = get_landscape("biased_rps_game")
    p = play(game, "mirror_prox_entropic", 50, {"lr": 0.2})
    assert p.steps.tolist() == list(range(51)) and p.x.shape == p.y.shape == (51, 3)
    np.testing.assert_allclose(p.x[0], game.start[:3])
    np.testing.assert_allclose(p.x_2d, barycentric(p.x))
    np.testing.assert_allclose(p.y_2d, barycentric(p.y))
    z = np.concatenate([p.x, p.y], 1)
    star = np.array(game.equilibrium)
    np.testing.assert_allclose(p.kl_to_equilibrium, (star * np.log(star / z)).sum(1), rtol=1e-12)
    average = np.cumsum(z, 0) / np.arange(1, 52)[:, None]
    np.testing.assert_allclose(p.average_gap, game.duality_gap(torch.tensor(average)).numpy(), rtol=1e-12)
    assert p.duality_gap[-1] < p.duality_gap[0] and p.equilibrium.tolist() == list(game.equilibrium)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        play(game, "exp_gradient", 0)
