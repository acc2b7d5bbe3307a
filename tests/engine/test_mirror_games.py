"""Mirror descent and game optimizers: exponentiated gradient, optimistic mirror descent and
mirror prox (extragradient) against closed forms on the simplex problems and the bilinear game.
Their first steps against numpy transcriptions of the papers' rules are in the case table
(tests/engine/optimizer_cases.py, driven by test_optimizer_rules.py)."""

from __future__ import annotations

import numpy as np
import torch

from engine.optimizers.mirror import SIMPLEX_MIX, project_simplex
from engine.oracles import Oracles
from engine.registry import Oracle, get_spec
from engine.run import Run, RunConfig
from landscapes.catalog import get_landscape
from tests.engine.optimizer_cases import simplex_projection

RTOL, ATOL = 1e-12, 1e-14


def config(*lanes: tuple[str, dict], device: str, **kw: object) -> RunConfig:
    lanes_ = tuple({"optimizer": n, "hyperparameters": h} for n, h in lanes)
    return RunConfig(lanes=lanes_, device=device, **kw)


# ---------------------------------------------------------------------------- exponentiated gradient

def test_exp_gradient_moves_its_start_onto_the_simplex() -> None:
    positive = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    mixed = torch.tensor([1.5, -1.0], dtype=torch.float64, requires_grad=True)
    get_spec("exp_gradient").build([positive, mixed])
    np.testing.assert_allclose(positive.detach().numpy(), [0.5, 0.25, 0.25], rtol=RTOL)  # divided by its sum
    want = (1 - SIMPLEX_MIX) * simplex_projection(np.array([1.5, -1.0])) + SIMPLEX_MIX / 2
    np.testing.assert_allclose(mixed.detach().numpy(), want, rtol=1e-12)  # (0.995, 0.005)
    for seed in range(3):  # the projection itself, on generic vectors
        v = 2 * np.random.default_rng(seed).normal(size=7)
        np.testing.assert_allclose(project_simplex(torch.tensor(v)).numpy(), simplex_projection(v),
                                   atol=1e-12)


def test_exp_gradient_stays_on_the_simplex_and_follows_the_closed_form(device: str) -> None:
    """On a linear cost c the iterates are p_t = p_0 exp(-lr t c) / Z exactly; every start of the
    race (the problem's and three drawn uniformly on the simplex) stays on it to 1e-12 and the
    default start reaches the vertex e_2 to 1e-6 within 800 steps (measured: 523)."""
    problem = get_landscape("simplex_linear")
    run = Run(problem, config(("exp_gradient", {}), n_starts=4, seed=5, device=device))
    records = run.run(800)
    starts = run.starts.numpy()
    np.testing.assert_allclose(starts.sum(axis=1), 1.0, atol=1e-12)  # random starts drawn on the simplex
    c, lr = np.array([0.75, 0.25, 0.5]), 0.1
    for t in (0, 10, 100, 799):
        pos = records[t].position  # the point the step-t gradient was taken at
        assert np.abs(pos.sum(axis=1) - 1).max() <= 1e-12 and (pos > 0).all()
        closed = starts * np.exp(-lr * t * c)
        closed /= closed.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(pos, closed, rtol=1e-10, atol=1e-300)
    final = run.positions(0)
    assert np.abs(final.sum(axis=1) - 1).max() <= 1e-12 and (final > 0).all()
    np.testing.assert_allclose(final[0], problem.minima[0].x, atol=1e-6)


def test_exp_gradient_reaches_the_interior_minimizer_of_the_quadratic(device: str) -> None:
    problem = get_landscape("simplex_quadratic")
    run = Run(problem, config(("exp_gradient", {}), ("sgd", {"lr": 0.1}), device=device))
    run.run(400)  # measured: within 1e-6 after 199 steps
    eg, gd = run.positions(0)[0], run.positions(1)[0]
    np.testing.assert_allclose(eg, problem.minima[0].x, atol=1e-9)
    assert abs(eg.sum() - 1) <= 1e-12
    # unconstrained gradient descent finds the unconstrained minimizer Q^-1(-c), off the simplex
    q = np.array([[2.0, -1, 0], [-1, 2, -1], [0, -1, 2]])
    np.testing.assert_allclose(gd, np.linalg.solve(q, [0.5, -0.5, 0.0]), atol=1e-6)
    assert abs(gd.sum() - 1) > 0.1


# ---------------------------------------------------------------------------- optimistic mirror descent

# ---------------------------------------------------------------------------- mirror prox

def test_mirror_prox_asks_two_gradients_and_no_hvp_per_step() -> None:
    """Stepped alone (no p.grad) it asks the closure for F(z) and F(z_half)."""
    problem = get_landscape("bilinear_game", alpha=0.5)
    p = torch.tensor([1.5, -0.5], dtype=torch.float64, requires_grad=True)
    opt = get_spec("mirror_prox").build([p], {"lr": 0.3})
    oracles = Oracles(lambda x: problem.loss(x), [p], ascent=torch.tensor(problem.ascent))
    for _ in range(5):
        opt.step(oracles)
    assert oracles.counts.gradients == 10 and oracles.counts.hvps == 0


def test_mirror_prox_in_a_run_counts_two_gradients_per_step(device: str) -> None:
    spec = get_spec("mirror_prox")
    assert spec.oracle is Oracle.GRADIENTS and spec.lookahead and spec.closure_driven
    records = Run(get_landscape("bilinear_game"), config(("mirror_prox", {"lr": 0.3}), device=device)).run(3)
    assert [(r.counts.gradients, r.counts.function_values, r.counts.hvps) for r in records] == [
        (2, 2, 0), (4, 4, 0), (6, 6, 0)]


# ---------------------------------------------------------------------------- the bilinear game

def test_gda_spirals_out_while_extragradient_and_optimism_converge(device: str) -> None:
    """On f = x y (x minimizes, y maximizes) the field is a rotation, F(z) = M z, M^2 = -I. Gradient
    descent-ascent (the run turns sgd into GDA) multiplies the distance to the equilibrium by
    sqrt(1 + lr^2) every step; extragradient by sqrt((1 - lr^2)^2 + lr^2) < 1 (both exact for this
    field). Budget 300 steps at lr 0.3: GDA ends 1.09^150 = 4e5 times farther out, extragradient
    and optimistic GDA within 1e-4 of the origin (measured: 5e-6 and 3e-7)."""
    lr, steps = 0.3, 300
    lanes = [("sgd", {"lr": lr}), ("mirror_prox", {"lr": lr}), ("optimistic_md", {"lr": lr})]
    # divergence_factor None: GDA's distance grows 4e5-fold, on purpose
    run = Run(get_landscape("bilinear_game"), config(*lanes, device=device, divergence_factor=None))
    records = run.run(steps)
    dist = {k: np.array([np.linalg.norm(r.position[0]) for r in records if r.lane == k]
                        + [np.linalg.norm(run.positions(k)[0])]) for k in range(3)}
    np.testing.assert_allclose(dist[0][1:] / dist[0][:-1], np.sqrt(1 + lr**2), rtol=1e-12)
    np.testing.assert_allclose(dist[1][1:] / dist[1][:-1], np.sqrt((1 - lr**2) ** 2 + lr**2), rtol=1e-12)
    assert dist[0][-1] > 1e5 * dist[0][0]
    assert dist[1][-1] < 1e-4 and dist[2][-1] < 1e-4
    assert np.all(np.diff(dist[0]) > 0)  # GDA: every step farther out


def test_regularized_game_gda_converges(device: str) -> None:
    """With alpha > 0 the field's eigenvalues are alpha +- i a, and GDA contracts by
    sqrt((1 - lr alpha)^2 + lr^2 a^2) per step: 0.9899 at lr 0.1, alpha 0.5."""
    lr, alpha = 0.1, 0.5
    run = Run(get_landscape("bilinear_game", alpha=alpha), config(("sgd", {"lr": lr}), device=device))
    records = run.run(50)
    d = np.array([np.linalg.norm(r.position[0]) for r in records])
    np.testing.assert_allclose(d[1:] / d[:-1], np.sqrt((1 - lr * alpha) ** 2 + lr**2), rtol=1e-12)
