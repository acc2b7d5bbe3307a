"""The bilevel methods (engine/optimizers/bilevel.py) in a run, against closed forms and their papers' claims.

The update rules themselves are checked step by step against numpy transcriptions in the case table
(tests/engine/optimizer_cases.py); here: the oracles and their units, the implicit hypergradient by
conjugate gradients against the closed forms, and the behaviour each paper claims, at small scale on the
2-D toy (f = (y - 1)^2/2 + rho x^2/2, g = mu y^2/2 - mu y sin x, mu = 2, rho = 0.1):

* Kwon et al.: the penalty method's stationary point is O(sigma) from the bilevel solution -- its bias
  shrinks linearly with the penalty parameter (and equals the stationary point of psi_sigma, solved here
  by Newton's method on its closed form);
* Hao et al. (BO-REP): the hypergradient error falls over the run, and the initialization refinement
  makes the first estimates better;
* Yao et al. (LV-HBA): with its growing penalty the iterate keeps approaching the bilevel solution, past
  where a fixed penalty stops.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.bilevel import (
    DIAGNOSTICS,
    HYPERGRADIENT_ERROR,
    INNER_ORACLES,
    INNER_STEPS,
    LOWER,
    UPPER,
    Levels,
    penalty_bias,
    trace,
)
from engine.oracles import Oracles
from engine.records import OracleCounts
from engine.registry import get_spec
from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_landscape

MU, RHO = 2.0, 0.1
BILEVEL_METHODS = ("implicit_hypergradient", "penalty_bilevel", "bo_rep", "lv_hba")


@pytest.fixture(scope="module")
def toy():
    return get_landscape("bilevel_toy", mu=MU, rho=RHO)


@pytest.fixture(scope="module")
def ridge():
    return get_landscape("ridge_bilevel")


def levels_at(problem, point) -> tuple[Levels, Oracles]:
    p = torch.tensor(point, dtype=torch.float64, requires_grad=True)
    oracles = Oracles(lambda x: problem.loss(x), [p], problem=problem)
    return Levels(oracles, "test"), oracles


def psi_sigma_stationary(sigma: float) -> float:
    """The stationary point of the toy's penalty function psi_sigma near the solution: y_sigma =
    (sigma + mu sin x)/(sigma + mu) makes psi_sigma'(x) = rho x + mu/(sigma + mu) cos x (sin x - 1)."""
    k, x = MU / (sigma + MU), 1.0
    for _ in range(100):
        x -= (RHO * x + k * math.cos(x) * (math.sin(x) - 1)) / (RHO + k * (math.cos(2 * x) + math.sin(x)))
    return x


# ---------------------------------------------------------------------------------- oracles

def test_levels_count_every_call_in_the_documented_units(toy) -> None:
    levels, oracles = levels_at(toy, [0.4, -0.3])
    theta = levels.point()
    g = levels.gradients(LOWER, torch.stack([theta, theta + 0.1]), inner=True)
    x, y = 0.4, -0.3
    np.testing.assert_allclose(g[0].numpy(), [-MU * y * math.cos(x), MU * y - MU * math.sin(x)], rtol=1e-14)
    levels.gradients(UPPER, theta[None])
    hx, hy = levels.mixed(theta, torch.tensor([2.0], dtype=torch.float64), inner=True)
    assert float(hx) == pytest.approx(-2 * MU * math.cos(x), rel=1e-14) and float(hy) == pytest.approx(2 * MU)
    assert oracles.counts == OracleCounts(function_values=3, gradients=3, hvps=1)
    assert levels.inner == 3  # the two lower gradients and the HVP marked as lower-level work


@pytest.mark.parametrize("x", [-2.0, 0.3, 1.4])
def test_cg_hypergradient_equals_the_closed_form_on_the_toy(toy, x: float) -> None:
    levels, oracles = levels_at(toy, [x, math.sin(x)])
    theta = levels.point()
    h = levels.implicit_hypergradient(theta, levels.gradients(UPPER, theta[None])[0], 1e-12, 50)
    assert float(h) == pytest.approx(math.cos(x) * (math.sin(x) - 1) + RHO * x, rel=1e-13, abs=1e-15)
    assert oracles.counts.hvps == 1  # one lower coordinate: CG converges in one product


@pytest.mark.parametrize("x", [-4.0, -1.9, 1.0])
def test_cg_hypergradient_equals_the_closed_form_on_the_ridge_problem(ridge, x: float) -> None:
    xt = torch.tensor([[x]], dtype=torch.float64)
    levels, oracles = levels_at(ridge, torch.cat([xt, ridge.lower_solution(xt)], dim=1)[0].tolist())
    theta = levels.point()
    h = levels.implicit_hypergradient(theta, levels.gradients(UPPER, theta[None])[0], 1e-13, 100)
    torch.testing.assert_close(h, ridge.hypergradient(xt)[0], rtol=1e-8, atol=1e-13)
    assert 1 <= oracles.counts.hvps <= 15  # CG in R^10: 10 products in exact arithmetic, a few more here


def test_a_bilevel_method_is_refused_on_a_problem_without_a_lower_level() -> None:
    with pytest.raises(ValueError, match="needs a bilevel problem: a lower objective"):
        Run(get_landscape("rosenbrock"), RunConfig(lanes=(LaneConfig("bo_rep"),), device="cpu"))
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = get_spec("penalty_bilevel").build([p])
    with pytest.raises(TypeError, match="penalty_bilevel needs a bilevel problem"):
        opt.step(Oracles(lambda x: (x * x).sum(-1), [p]))


# ---------------------------------------------------------------------------------- in a run

def test_a_race_records_diagnostics_metrics_and_counts_in_the_documented_units(toy) -> None:
    lanes = (LaneConfig("implicit_hypergradient"), LaneConfig("penalty_bilevel", {"inner_steps": 4}),
             LaneConfig("bo_rep", {"period": 3, "inner_steps": 2, "refine_steps": 5}), LaneConfig("lv_hba"),
             LaneConfig("sgd"))
    run = Run(toy, RunConfig(lanes=lanes, device="cpu", metrics_every=1))
    records = run.run(4)
    by_lane = {k: [r for r in records if r.lane == k] for k in range(5)}
    for k in range(4):
        assert all(set(r.diagnostics) == set(DIAGNOSTICS) for r in by_lane[k])
        assert all(math.isfinite(r.diagnostics[HYPERGRADIENT_ERROR][0]) for r in by_lane[k])
        assert all({"hyperobjective", "hypergradient_norm", "lower_gap", "upper_distance"} <= set(r.metrics)
                   for r in by_lane[k])
    # per step: the run's gradient (1) plus the method's calls
    assert by_lane[0][-1].counts == OracleCounts(function_values=4, gradients=4)  # closed forms: nothing else
    # penalty: step 0 = 1 + 1 (y moved) + 2 + 2 x 3 K; later steps 1 + 2 + 3 K
    assert by_lane[1][-1].counts.gradients == (2 + 2 + 2 * 12) + 3 * (1 + 2 + 12)
    assert by_lane[1][-1].diagnostics[INNER_STEPS][0] == 4 * 2 * 4 + 2 * 4
    # BO-REP: 2 HVPs a step; lower steps 5 (t = 0) and 2 (t = 3), each step a fresh grad f where y moved
    calls = 4 + 5 + 2 + 2
    assert by_lane[2][-1].counts == OracleCounts(function_values=calls, gradients=calls, hvps=8)
    assert by_lane[2][-1].diagnostics[INNER_ORACLES][0] == 5 + 2 + 4  # lower gradients + the v-step HVPs
    assert by_lane[3][-1].counts.gradients == 4 * (1 + 3)  # LV-HBA: g at (x, theta), then (x, y), (x, theta')
    assert by_lane[4][-1].diagnostics == {}  # plain SGD minimizes f over both blocks: no bilevel estimate


def test_a_bilevel_race_replays_exactly(toy) -> None:
    config = RunConfig(lanes=(LaneConfig("penalty_bilevel"), LaneConfig("bo_rep")), device="cpu", n_starts=2)
    run = Run(toy, config)
    first = run.run(12)
    _, again = Run.replay(toy, config, run.log, 12)
    assert all(a.same_values(b) for a, b in zip(first, again, strict=True))


def test_the_trace_is_the_runs_positions_and_records(toy) -> None:
    tr = trace(toy, "bo_rep", steps=30)
    run = Run(toy, RunConfig(lanes=(LaneConfig("bo_rep"),), device="cpu"))
    records = run.run(30)
    np.testing.assert_array_equal(np.stack([r.position[0] for r in records])[:, 0], tr.upper[:-1, 0])
    np.testing.assert_array_equal(run.positions(0)[0], np.concatenate([tr.upper[-1], tr.lower[-1]]))
    errors = [r.diagnostics[HYPERGRADIENT_ERROR][0] for r in records]
    np.testing.assert_array_equal(tr.hypergradient_error, errors)
    np.testing.assert_array_equal(tr.gradients, [r.counts.gradients for r in records])
    phi = 0.5 * (np.sin(tr.upper[:, 0]) - 1) ** 2 + 0.5 * RHO * tr.upper[:, 0] ** 2
    np.testing.assert_allclose(tr.hyperobjective, phi, rtol=1e-14)
    assert tr.solution == pytest.approx([toy.solution[0]])


# ---------------------------------------------------------------------------------- the reference

def test_the_exact_method_follows_the_lower_solution_curve_to_the_solution(toy) -> None:
    tr = trace(toy, "implicit_hypergradient", steps=200)
    np.testing.assert_allclose(tr.lower[1:, 0], np.sin(tr.upper[1:, 0]), rtol=0, atol=1e-15)  # [0]: the start
    assert tr.upper_distance[-1] < 1e-12 and np.all(tr.hypergradient_error == 0.0)


def test_without_closed_forms_implicit_differentiation_reaches_the_ridge_optimum(ridge) -> None:
    """The HVP route (gradient steps for y*, CG for the linear system) lands on the closed form's
    optimum of the validation error, with a hypergradient error at the level of its inner solve."""
    exact = trace(ridge, "implicit_hypergradient", {"lr": 30.0}, steps=150)
    hvp = trace(ridge, "implicit_hypergradient", {"lr": 30.0, "closed_form": False, "inner_steps": 200,
                                                  "inner_lr": 0.15}, steps=150)
    assert exact.upper_distance[-1] < 1e-5 and exact.upper_distance[0] > 3.9
    np.testing.assert_allclose(hvp.upper, exact.upper, rtol=0, atol=3e-6)
    assert np.max(hvp.hypergradient_error[-50:]) < 1e-9 and hvp.hvps[-1] > 0 and exact.hvps[-1] == 0


def test_plain_gradient_descent_solves_the_single_level_problem_not_the_bilevel_one(toy) -> None:
    run = Run(toy, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.5}),), device="cpu"))
    run.run(500)
    np.testing.assert_allclose(run.positions(0)[0], [0.0, 1.0], atol=1e-8)  # argmin f, off y = sin x
    assert abs(toy.solution[0]) > 0.9


# ---------------------------------------------------------------------------------- the papers' claims

def test_penalty_bias_shrinks_linearly_with_sigma(toy) -> None:
    """Kwon et al. (2024): stationary points of psi_sigma are O(sigma) from the bilevel solution. Measured:
    bias 0.0740, 0.0247, 0.00854, 0.00260 at sigma 1, 0.3, 0.1, 0.03 (about 0.087 sigma)."""
    sigmas = [1.0, 0.3, 0.1, 0.03]
    pb = penalty_bias(toy, sigmas, steps=800)
    for sigma, x in zip(sigmas, pb.upper[:, 0], strict=True):
        assert x == pytest.approx(psi_sigma_stationary(sigma), abs=1e-7)
    assert np.all(np.diff(pb.bias) < 0)
    slope = pb.bias / pb.sigmas
    assert slope.max() / slope.min() < 1.2  # linear in sigma
    assert pb.bias[-1] < 3e-3 and pb.bias[0] > 0.05
    np.testing.assert_allclose(pb.hypergradient_norm, [abs(math.cos(x) * (math.sin(x) - 1) + RHO * x)
                                                       for x in pb.upper[:, 0]], rtol=1e-12)


def test_bo_rep_hypergradient_error_falls_and_refinement_helps(toy) -> None:
    """Hao et al. (2024): periodic lower updates and one step per iteration on the linear system keep the
    hypergradient bias under control. Measured on the toy (defaults): error 0.42 at step 0, median 0.019
    over the last 40 of 400 steps; without the refinement 0.77 at step 0."""
    refined = trace(toy, "bo_rep", steps=400)
    cold = trace(toy, "bo_rep", {"refine_steps": 0}, steps=400)
    e = refined.hypergradient_error
    assert np.median(e[-40:]) < 0.1 * e[0]
    assert np.median(e[-40:]) < np.median(e[:40]) < e[0]
    assert cold.hypergradient_error[0] > 1.5 * e[0]
    assert refined.inner_steps[0] == 100 + 1 and cold.inner_steps[0] == 1
    assert refined.upper_distance[-1] < 0.1  # normalized steps of 0.02: x hovers near x*


def test_lv_hba_keeps_approaching_the_solution_past_a_fixed_penalty(toy) -> None:
    """Yao et al. (2024): with c_k growing the value-function penalty's bias vanishes. Measured distance
    to x*: 0.062, 0.022, 0.016 after 100, 1,000, 3,000 steps, still falling (c_k ~ 5.5 by then)."""
    tr = trace(toy, "lv_hba", steps=3_000)
    d = tr.upper_distance
    assert d[3_000] < d[1_000] < d[100] and d[3_000] < 0.02
    assert np.all(np.diff(d[1_000::250]) < 0)  # still shrinking at the end
    fixed = penalty_bias(toy, [1 / (0.5 * 1_000 ** 0.3)], steps=800)  # a fixed penalty at c_1000
    assert d[3_000] < fixed.bias[0]
