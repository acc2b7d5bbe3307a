"""Mirror descent and game optimizers: exponentiated gradient, optimistic mirror descent and
mirror prox (extragradient), against numpy transcriptions of the papers' rules and against closed
forms on the simplex problems and the bilinear game."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.optimizers.mirror import SIMPLEX_MIX, project_simplex
from engine.oracles import Oracles
from engine.registry import Oracle, get_spec
from engine.run import Run, RunConfig
from landscapes.catalog import get_landscape

torch.set_num_threads(1)

RTOL, ATOL = 1e-12, 1e-14
SCALES = (1.0, 0.3, 2.0, 0.05, 1.5)


def given_gradients(shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [s * rng.standard_normal(shape) for s in SCALES]


def run_registry(name: str, hp: dict, th0: np.ndarray, grads: list[np.ndarray]) -> np.ndarray:
    p = torch.tensor(th0, dtype=torch.float64, requires_grad=True)
    opt = get_spec(name).build([p], hp)
    out = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        out.append(p.detach().numpy().copy())
    return np.array(out)


def config(*lanes: tuple[str, dict], **kw: object) -> RunConfig:
    lanes_ = tuple({"optimizer": n, "hyperparameters": h} for n, h in lanes)
    return RunConfig(lanes=lanes_, device="cpu", **kw)


# ---------------------------------------------------------------------------- exponentiated gradient

def ref_exp_gradient(p: np.ndarray, g: np.ndarray, lr: float) -> np.ndarray:
    # Beck & Teboulle (2003), eq. (5.1): p_i <- p_i exp(-lr g_i) / sum_j p_j exp(-lr g_j)
    w = p * np.exp(-lr * g)
    return w / w.sum()


def project_simplex_bisection(v: np.ndarray) -> np.ndarray:
    """Euclidean projection onto the simplex by bisection on the threshold tau of
    sum(max(v - tau, 0)) = 1 (a different algorithm from the sort-based one under test)."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        tau = 0.5 * (lo + hi)
        if np.maximum(v - tau, 0).sum() > 1:
            lo = tau
        else:
            hi = tau
    return np.maximum(v - 0.5 * (lo + hi), 0)


@pytest.mark.parametrize("hp", [{}, {"lr": 0.7}], ids=["defaults", "non-default"])
@pytest.mark.parametrize("shape", [(4,), (2, 3)])
def test_exp_gradient_matches_beck_teboulle(hp: dict, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    p0 = rng.uniform(0.1, 1.0, shape)
    p0 /= p0.sum()  # on the simplex (a matrix is one simplex over all its entries)
    grads = given_gradients(shape)
    got = run_registry("exp_gradient", hp, p0, grads)
    lr = get_spec("exp_gradient").validate(hp)["lr"]
    want, p = [], p0.copy()
    for g in grads:
        p = ref_exp_gradient(p.reshape(-1), g.reshape(-1), lr).reshape(shape)
        want.append(p)
    np.testing.assert_allclose(got, np.array(want), rtol=RTOL, atol=ATOL)
    assert not np.allclose(got[-1], p0)


def test_exp_gradient_moves_its_start_onto_the_simplex() -> None:
    positive = torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    mixed = torch.tensor([1.5, -1.0], dtype=torch.float64, requires_grad=True)
    get_spec("exp_gradient").build([positive, mixed])
    np.testing.assert_allclose(positive.detach().numpy(), [0.5, 0.25, 0.25], rtol=RTOL)  # divided by its sum
    want = (1 - SIMPLEX_MIX) * project_simplex_bisection(np.array([1.5, -1.0])) + SIMPLEX_MIX / 2
    np.testing.assert_allclose(mixed.detach().numpy(), want, rtol=1e-12)  # (0.995, 0.005)
    for seed in range(3):  # the projection itself, on generic vectors
        v = 2 * np.random.default_rng(seed).normal(size=7)
        np.testing.assert_allclose(project_simplex(torch.tensor(v)).numpy(), project_simplex_bisection(v),
                                   atol=1e-12)


def test_exp_gradient_stays_on_the_simplex_and_follows_the_closed_form() -> None:
    """On a linear cost c the iterates are p_t = p_0 exp(-lr t c) / Z exactly; every start of the
    race (the problem's and three drawn uniformly on the simplex) stays on it to 1e-12 and the
    default start reaches the vertex e_2 to 1e-6 within 800 steps (measured: 523)."""
    problem = get_landscape("simplex_linear")
    run = Run(problem, config(("exp_gradient", {}), n_starts=4, seed=5))
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


def test_exp_gradient_reaches_the_interior_minimizer_of_the_quadratic() -> None:
    problem = get_landscape("simplex_quadratic")
    run = Run(problem, config(("exp_gradient", {}), ("sgd", {"lr": 0.1})))
    run.run(400)  # measured: within 1e-6 after 199 steps
    eg, gd = run.positions(0)[0], run.positions(1)[0]
    np.testing.assert_allclose(eg, problem.minima[0].x, atol=1e-9)
    assert abs(eg.sum() - 1) <= 1e-12
    # unconstrained gradient descent finds the unconstrained minimizer Q^-1(-c), off the simplex
    q = np.array([[2.0, -1, 0], [-1, 2, -1], [0, -1, 2]])
    np.testing.assert_allclose(gd, np.linalg.solve(q, [0.5, -0.5, 0.0]), atol=1e-6)
    assert abs(gd.sum() - 1) > 0.1


# ---------------------------------------------------------------------------- optimistic mirror descent

def ref_optimistic(lr: float):
    # Rakhlin & Sridharan (2013) with hint M_t = g_{t-1}, M_1 = 0: theta -= lr (2 g_t - g_{t-1})
    state = {"prev": 0.0}

    def step(th: np.ndarray, g: np.ndarray) -> np.ndarray:
        out = th - lr * (2 * g - state["prev"])
        state["prev"] = g
        return out
    return step


@pytest.mark.parametrize("hp", [{}, {"lr": 0.2}], ids=["defaults", "non-default"])
@pytest.mark.parametrize("shape", [(2,), (3, 4)])
def test_optimistic_md_matches_the_rule(hp: dict, shape: tuple[int, ...]) -> None:
    th0 = np.random.default_rng(1).uniform(-1.5, 1.5, shape)
    grads = given_gradients(shape, seed=2)
    got = run_registry("optimistic_md", hp, th0, grads)
    step, th, want = ref_optimistic(get_spec("optimistic_md").validate(hp)["lr"]), th0.copy(), []
    for g in grads:
        th = step(th, g)
        want.append(th)
    np.testing.assert_allclose(got, np.array(want), rtol=RTOL, atol=ATOL)
    assert get_spec("optimistic_md").row_separable  # elementwise: a [3, 4] tensor is 3 independent rows


# ---------------------------------------------------------------------------- mirror prox

def game_field(z: np.ndarray, a: float = 1.0, alpha: float = 0.0) -> np.ndarray:
    """(grad_x f, -grad_y f) of f = a x y + alpha/2 (x^2 - y^2), written by hand."""
    x, y = z
    return np.array([a * y + alpha * x, -(a * x - alpha * y)])


@pytest.mark.parametrize(("hp", "alpha"), [({}, 0.0), ({"lr": 0.3}, 0.5)], ids=["defaults", "non-default"])
def test_mirror_prox_matches_extragradient(hp: dict, alpha: float) -> None:
    """Nemirovski (2004) / Korpelevich (1976): z_half = z - lr F(z), z <- z - lr F(z_half), with the
    game's descent field computed by hand; stepped alone (no p.grad), it asks the closure for F(z)."""
    problem = get_landscape("bilinear_game", alpha=alpha)
    p = torch.tensor([1.5, -0.5], dtype=torch.float64, requires_grad=True)
    opt = get_spec("mirror_prox").build([p], hp)
    lr = get_spec("mirror_prox").validate(hp)["lr"]
    oracles = Oracles(lambda x: problem.loss(x), [p], ascent=torch.tensor(problem.ascent))
    z = np.array([1.5, -0.5])
    for _ in range(5):
        opt.step(oracles)
        z = z - lr * game_field(z - lr * game_field(z, alpha=alpha), alpha=alpha)
        np.testing.assert_allclose(p.detach().numpy(), z, rtol=RTOL, atol=ATOL)
    assert oracles.counts.gradients == 10 and oracles.counts.hvps == 0  # two field evaluations a step


def test_mirror_prox_in_a_run_counts_two_gradients_per_step() -> None:
    spec = get_spec("mirror_prox")
    assert spec.oracle is Oracle.GRADIENTS and spec.lookahead and spec.closure_driven
    records = Run(get_landscape("bilinear_game"), config(("mirror_prox", {"lr": 0.3}))).run(3)
    assert [(r.counts.gradients, r.counts.function_values, r.counts.hvps) for r in records] == [
        (2, 2, 0), (4, 4, 0), (6, 6, 0)]


# ---------------------------------------------------------------------------- the bilinear game

def test_gda_spirals_out_while_extragradient_and_optimism_converge() -> None:
    """On f = x y (x minimizes, y maximizes) the field is a rotation, F(z) = M z, M^2 = -I. Gradient
    descent-ascent (the run turns sgd into GDA) multiplies the distance to the equilibrium by
    sqrt(1 + lr^2) every step; extragradient by sqrt((1 - lr^2)^2 + lr^2) < 1 (both exact for this
    field). Budget 300 steps at lr 0.3: GDA ends 1.09^150 = 4e5 times farther out, extragradient
    and optimistic GDA within 1e-4 of the origin (measured: 5e-6 and 3e-7)."""
    lr, steps = 0.3, 300
    lanes = [("sgd", {"lr": lr}), ("mirror_prox", {"lr": lr}), ("optimistic_md", {"lr": lr})]
    run = Run(get_landscape("bilinear_game"), config(*lanes, divergence_factor=None))  # GDA runs to 4e5 x
    records = run.run(steps)
    dist = {k: np.array([np.linalg.norm(r.position[0]) for r in records if r.lane == k]
                        + [np.linalg.norm(run.positions(k)[0])]) for k in range(3)}
    np.testing.assert_allclose(dist[0][1:] / dist[0][:-1], np.sqrt(1 + lr**2), rtol=1e-12)
    np.testing.assert_allclose(dist[1][1:] / dist[1][:-1], np.sqrt((1 - lr**2) ** 2 + lr**2), rtol=1e-12)
    assert dist[0][-1] > 1e5 * dist[0][0]
    assert dist[1][-1] < 1e-4 and dist[2][-1] < 1e-4
    assert np.all(np.diff(dist[0]) > 0)  # GDA: every step farther out


def test_regularized_game_gda_converges() -> None:
    """With alpha > 0 the field's eigenvalues are alpha +- i a, and GDA contracts by
    sqrt((1 - lr alpha)^2 + lr^2 a^2) per step: 0.9899 at lr 0.1, alpha 0.5."""
    lr, alpha = 0.1, 0.5
    run = Run(get_landscape("bilinear_game", alpha=alpha), config(("sgd", {"lr": lr})))
    records = run.run(50)
    d = np.array([np.linalg.norm(r.position[0]) for r in records])
    np.testing.assert_allclose(d[1:] / d[:-1], np.sqrt((1 - lr * alpha) ** 2 + lr**2), rtol=1e-12)
