r"""Every optimizer with a budget in the case table (``tests/engine/optimizer_cases.py``) reaches
its stated tolerance with its registry defaults on two 2-D landscapes within that budget.

* bowl: :math:`f = \tfrac12 (x^2 + 10 y^2)`, condition number 10, minimum at 0, start (-1.5, 2).
* Rosenbrock: :math:`f = (1-x)^2 + 100 (y - x^2)^2`, minimum at (1, 1), start (-1.5, 2): a curved
  valley whose Hessian eigenvalues run from 0.4 (along the floor near the minimum) to about 2,000
  (across it at the start).

A run passes when :math:`\lVert\theta_t - \theta^*\rVert` stays below the tolerance for ``HOLD``
consecutive steps before the budget runs out (the loop stops there, so a passing case costs only
the steps it needs). The optimizer is stepped as a run steps it: the gradient in ``p.grad`` when its
spec consumes gradients, ``step(Oracles)`` when it is closure-driven, seed 0 (a run's first
trajectory). Where a case has no budget it says why; the table's comments say how budgets and
tolerances were set.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.oracles import Oracles
from engine.registry import Oracle, get_spec
from tests.engine.optimizer_cases import CASES, Target

HOLD = 25  # consecutive steps within the tolerance
_BOWL_WEIGHTS = torch.tensor([0.5, 5.0], dtype=torch.float64)


def bowl(x: torch.Tensor) -> torch.Tensor:
    return (_BOWL_WEIGHTS.to(x.device) * x * x).sum(-1)  # 1/2 (x^2 + 10 y^2)


def bowl_gradient(x: torch.Tensor) -> torch.Tensor:
    return 2 * _BOWL_WEIGHTS * x


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (1 - x[..., 0]) ** 2 + 100 * (x[..., 1] - x[..., 0] ** 2) ** 2


def rosenbrock_gradient(x: torch.Tensor) -> torch.Tensor:
    u, v = float(x[0]), float(x[1])
    return torch.tensor([-2 * (1 - u) - 400 * u * (v - u * u), 200 * (v - u * u)], dtype=x.dtype)


# the gradients written out (the loop's cost is mostly per-step overhead; autograd doubled it)
LANDSCAPES = {"bowl": (bowl, bowl_gradient, (0.0, 0.0)),
              "rosenbrock": (rosenbrock, rosenbrock_gradient, (1.0, 1.0))}
START = (-1.5, 2.0)


def steps_to_converge(name: str, landscape: str, target: Target) -> tuple[int | None, float]:
    """First step after which the iterate has stayed within ``target.tol`` for HOLD steps (None if
    the budget ran out or the iterate stopped being finite), and the last distance."""
    f, gradient, minimum = LANDSCAPES[landscape]
    spec = get_spec(name)
    p = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    x_star = torch.tensor(minimum, dtype=torch.float64)
    opt = spec.build([p], seed=0)  # registry defaults
    gets_gradient = spec.oracle in (Oracle.GRADIENTS, Oracle.HVPS)
    inside, dist = 0, math.inf
    for t in range(1, target.budget + 1):
        if gets_gradient:
            p.grad = gradient(p.detach())
        if spec.closure_driven:
            opt.step(Oracles(f, [p]))
        else:
            opt.step()
        dist = float((p.detach() - x_star).norm())
        if not math.isfinite(dist):
            return None, dist
        inside = inside + 1 if dist < target.tol else 0
        if inside >= HOLD:
            return t, dist
    return None, dist


def test_every_case_states_a_budget_or_why_not() -> None:
    for name, case in CASES.items():
        for budget in (case.bowl, case.rosenbrock):
            assert isinstance(budget, Target) or (isinstance(budget, str) and budget.strip()), name


def _cases() -> list:
    return [pytest.param(name, landscape, target, id=f"{name}-{landscape}")
            for name, case in CASES.items()
            for landscape, target in (("bowl", case.bowl), ("rosenbrock", case.rosenbrock))
            if isinstance(target, Target)]


@pytest.mark.parametrize(("name", "landscape", "target"), _cases())
def test_default_hyperparameters_converge(name: str, landscape: str, target: Target) -> None:
    steps, dist = steps_to_converge(name, landscape, target)
    assert steps is not None, (
        f"{name} on {landscape} with defaults {get_spec(name).defaults()}: not within {target.tol:g} of the "
        f"minimum for {HOLD} steps in {target.budget} steps (last distance {dist:.3g})")
