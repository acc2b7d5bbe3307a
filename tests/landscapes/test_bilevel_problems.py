"""The bilevel problems (landscapes/bilevel.py): every closed form against an independent computation --
autograd Hessians and a dense solve for the implicit function theorem, finite differences for the
hypergradient, scikit-learn's Ridge for the ridge solution, a grid for the solution's optimality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

from engine.bilevel import BilevelProblem
from engine.problem import Problem
from landscapes import LANDSCAPES, get_landscape
from landscapes.bilevel import BilevelFunction
from landscapes.sizes import problem_size

CASES = [("bilevel_toy", {}), ("bilevel_toy", {"mu": 0.5, "rho": 0.3}), ("ridge_bilevel", {}),
         ("ridge_bilevel", {"seed": 3})]


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{o}" for n, o in CASES])
def problem(request: pytest.FixtureRequest) -> BilevelFunction:
    name, options = request.param
    return get_landscape(name, **options)


def uppers(problem: BilevelFunction) -> torch.Tensor:
    lo, hi = problem.bounds.low[0], problem.bounds.high[0]
    return torch.linspace(lo, hi, 7, dtype=torch.float64)[:, None]


def test_it_is_a_problem_the_engine_races_as_a_bilevel_one(problem: BilevelFunction) -> None:
    assert isinstance(problem, Problem) and isinstance(problem, BilevelProblem)
    assert problem.upper_dim == 1 and problem.lower_dim == problem.dim - 1
    assert problem.name in LANDSCAPES and problem.geometry == "bilevel"
    assert problem_size(problem.name, dict(problem.params)).params == problem.dim


def test_the_lower_solution_is_the_lower_levels_minimizer(problem: BilevelFunction) -> None:
    x = uppers(problem)
    y = problem.lower_solution(x)
    for xi, yi in zip(x, y, strict=True):
        p = torch.cat([xi, yi]).requires_grad_(True)
        (g,) = torch.autograd.grad(problem.lower_loss(p[None])[0], p)
        assert float(g[1:].norm()) < 1e-12
        h = hessian(lambda q: problem.lower_loss(q[None])[0], p.detach())[1:, 1:]
        assert float(torch.linalg.eigvalsh(h).min()) > 0  # strongly convex in y: the minimizer
    xy = torch.cat([x, y], 1)
    np.testing.assert_allclose(problem.value_function(x).numpy(), problem.lower_loss(xy).numpy(), rtol=1e-13)
    np.testing.assert_allclose(problem.hyperobjective(x).numpy(), problem.loss(xy).numpy(), rtol=1e-13)


def test_the_hypergradient_is_the_implicit_function_theorem_and_phis_derivative(
        problem: BilevelFunction) -> None:
    x = uppers(problem)
    y = problem.lower_solution(x)
    got = problem.hypergradient(x)
    for xi, yi, gi in zip(x, y, got, strict=True):
        p = torch.cat([xi, yi])
        q = p.clone().requires_grad_(True)
        (gf,) = torch.autograd.grad(problem.loss(q[None])[0], q)
        hg = hessian(lambda r: problem.lower_loss(r[None])[0], p)
        want = gf[:1] - hg[:1, 1:] @ torch.linalg.solve(hg[1:, 1:], gf[1:])
        torch.testing.assert_close(gi, want, rtol=1e-9, atol=1e-13)
    h = 1e-4
    phi = problem.hyperobjective
    fd = (-phi(x + 2 * h) + 8 * phi(x + h) - 8 * phi(x - h) + phi(x - 2 * h)) / (12 * h)
    torch.testing.assert_close(got[:, 0], fd, rtol=1e-7, atol=1e-10)


def test_the_listed_solution_minimizes_the_hyperobjective(problem: BilevelFunction) -> None:
    (best,) = problem.minima
    x_star = torch.tensor([best.x[:1]], dtype=torch.float64)
    assert abs(float(problem.hypergradient(x_star)[0, 0])) < 1e-12
    y_star = torch.tensor(best.x[1:], dtype=torch.float64)
    torch.testing.assert_close(problem.lower_solution(x_star)[0], y_star, rtol=0, atol=0)
    assert best.value == pytest.approx(float(problem.loss(torch.tensor([best.x], dtype=torch.float64))[0]),
                                       rel=1e-14)
    lo, hi = problem.bounds.low[0], problem.bounds.high[0]
    grid = torch.linspace(lo, hi, 4001, dtype=torch.float64)[:, None]
    assert float(problem.hyperobjective(grid).min()) >= best.value - 1e-14


def test_the_ridge_solution_is_scikit_learns_ridge() -> None:
    from sklearn.linear_model import Ridge

    from landscapes import data

    problem = get_landscape("ridge_bilevel")
    d = data.diabetes(seed=0)
    A, b = d.X_train.numpy(), d.y_train[:, 0].numpy()
    for x in (-6.0, -1.9, 0.0, 2.5):
        # scikit-learn minimizes |Ay - b|^2 + alpha |y|^2; g = |Ay - b|^2/(2n) + e^x |y|^2/2: alpha = n e^x
        ref = Ridge(alpha=len(A) * math.exp(x), fit_intercept=False, solver="cholesky").fit(A, b).coef_
        got = problem.lower_solution(torch.tensor([[x]], dtype=torch.float64))[0].numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def test_the_toys_solution_and_value_function_in_closed_form() -> None:
    toy = get_landscape("bilevel_toy")  # mu 2, rho 0.1
    x_star = toy.solution[0]
    assert math.cos(x_star) * (math.sin(x_star) - 1) + 0.1 * x_star == pytest.approx(0.0, abs=1e-15)
    assert x_star == pytest.approx(0.973546, abs=1e-6)
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    np.testing.assert_allclose(toy.value_function(x)[:].numpy(), -np.sin(x[:, 0].numpy()) ** 2, rtol=1e-14)


def test_metrics_along_a_run(problem: BilevelFunction) -> None:
    x = uppers(problem)
    on = torch.cat([x, problem.lower_solution(x)], 1)
    off = on + 0.1
    m_on, m_off = problem.metrics(on), problem.metrics(off)
    assert torch.all(m_on["lower_gap"].abs() < 1e-12) and torch.all(m_off["lower_gap"] > 0)
    torch.testing.assert_close(m_on["lower_distance"], torch.zeros(7, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(m_on["hypergradient_norm"], problem.hypergradient(x).norm(dim=1))
    torch.testing.assert_close(m_on["upper"], x[:, 0])
    torch.testing.assert_close(m_on["upper_distance"], (x[:, 0] - problem.solution[0]).abs())


@pytest.mark.parametrize(("options", "message"), [({"mu": 0.0}, "mu must be a finite number > 0"),
                                                   ({"rho": -1.0}, "rho must be a finite number >= 0"),
                                                   ({"mu": 5e3}, "mu=5000 is over its limit of 1000"),
                                                   ({"dim": 3}, "does not take 'dim'")])
def test_bad_options_are_refused_before_building(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_landscape("bilevel_toy", **options)
