r"""The seed papers' behaviours on games on simplices, through the engine's Run (the ascent mask, one
simplex per player, the game's curves in the records' metrics).

Linearized at the uniform equilibrium of rock-paper-scissors, in the log-coordinates
:math:`v = \delta\log x`, :math:`w = \delta\log y` (sum zero), the descent field of
:math:`f = x^\top A y + \tau(\sum x\log x - \sum y\log y)` is :math:`M(v, w) = (\tau v + Aw/3,
\tau w - A^\top v/3)`, a normal map with eigenvalues :math:`\lambda = \tau \pm i/\sqrt3` (:math:`A`
is antisymmetric with eigenvalues :math:`\pm i\sqrt3` on the sum-zero plane). The KL divergence to
the equilibrium is a multiple of :math:`\lVert(v, w)\rVert^2` to second order, so near the
equilibrium it changes per step by exactly

* multiplicative weights :math:`(v, w) \mapsto (I - \eta M)(v, w)`: :math:`|1 - \eta\lambda|^2 =
  (1 - \eta\tau)^2 + \eta^2/3` (:math:`> 1` at :math:`\tau = 0`: it spirals out);
* mirror prox :math:`I - \eta M + \eta^2 M^2`: :math:`|1 - \eta\lambda + \eta^2\lambda^2|^2`;
* optimistic weights :math:`z_{t+1} = z_t - \eta M(2z_t - z_{t-1})`: the larger :math:`|\mu|^2` of
  :math:`\mu^2 - (1 - 2\eta\lambda)\mu - \eta\lambda = 0`.

These closed forms, not the code, are what the measured rates are held to.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.run import Run, RunConfig
from landscapes import get_landscape

LR = 0.1
METHODS = ("exp_gradient", "optimistic_mw", "mirror_prox_entropic")


def race(name: str, tau: float, steps: int, device: str = "cpu",
         methods: tuple[str, ...] = METHODS) -> dict[str, dict[str, np.ndarray]]:
    """Every method as a lane at lr 0.1 from the game's start; per lane the records' ``kl`` and ``gap``
    (metrics every step) and the positions ``z`` read between steps (``[steps, 6]``)."""
    game = get_landscape(name, tau=tau)
    lanes = tuple({"optimizer": m, "hyperparameters": {"lr": LR}} for m in methods)
    run = Run(game, RunConfig(lanes=lanes, metrics_every=1, divergence_factor=None, device=device))
    out = {m: {"kl": [], "gap": [], "z": []} for m in methods}
    for _ in range(steps):
        for k, m in enumerate(methods):
            out[m]["z"].append(run.positions(k)[0])
        for r in run.step():
            out[methods[r.lane]]["kl"].append(float(r.metrics["kl_to_equilibrium"][0]))
            out[methods[r.lane]]["gap"].append(float(r.metrics["duality_gap"][0]))
    return {m: {k: np.array(v) for k, v in d.items()} for m, d in out.items()}


def kl_by_hand(z: np.ndarray, star: np.ndarray) -> np.ndarray:
    return (star * np.log(star / z)).sum(-1)


def per_step(kl: np.ndarray, start: int, end: int) -> float:
    """The KL's mean change factor per step between two steps (its geometric rate)."""
    return float((kl[end] / kl[start]) ** (1.0 / (end - start)))


def optimistic_rate(lam: complex, eta: float = LR) -> float:
    return float(max(abs(np.roots([1.0, -(1.0 - 2.0 * eta * lam), -eta * lam]))) ** 2)


@pytest.fixture(scope="module")
def rps() -> dict[str, dict[str, np.ndarray]]:
    return race("rps_game", 0.0, 1000)


def test_the_records_carry_the_games_curves(rps: dict) -> None:
    """The records' metrics are the KL and the gap at the point each step's gradient was taken."""
    star = np.full(6, 1 / 3)
    for m in METHODS:
        z = rps[m]["z"]
        np.testing.assert_allclose(rps[m]["kl"], kl_by_hand(z, star), rtol=1e-12, atol=1e-15)
        x, y = z[:, :3], z[:, 3:]
        a = np.array([[0, 1, -1], [-1, 0, 1], [1, -1, 0]], dtype=float)
        np.testing.assert_allclose(rps[m]["gap"], (x @ a).max(1) - (y @ a.T).min(1), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(z.reshape(-1, 2, 3).sum(-1), 1.0, atol=1e-12)  # each player on its simplex


def test_multiplicative_weights_cycles_outwards_its_average_converges(rps: dict) -> None:
    """Bailey & Piliouras (2018): on a game with an interior equilibrium, multiplicative weights'
    KL to it increases at every step. Measured from (0.5, 0.3, 0.2) / (0.2, 0.3, 0.5) at lr 0.1:
    KL 0.140 -> 2.25 in 1,000 steps, last-iterate gap 0.5 -> 1.63, while the gap of the running
    average falls to 0.032 (0.056 after 100 steps)."""
    mw = rps["exp_gradient"]
    assert np.all(np.diff(mw["kl"]) > 0)
    assert mw["kl"][-1] > 10 * mw["kl"][0]
    assert mw["gap"][-1] > 1.0 > mw["gap"][0]
    game = get_landscape("rps_game")
    average = np.cumsum(mw["z"], axis=0) / np.arange(1, len(mw["z"]) + 1)[:, None]
    average_gap = game.duality_gap(torch.from_numpy(average)).numpy()
    assert average_gap[-1] < 0.05 and average_gap[-1] < 0.6 * average_gap[99]


@pytest.mark.parametrize("method", ["optimistic_mw", "mirror_prox_entropic"])
def test_optimistic_weights_and_mirror_prox_last_iterates_converge(rps: dict, method: str) -> None:
    """Measured: KL 0.140 -> 0.0046 in 1,000 steps for both, gap 0.5 -> 0.09; the KL's rate over the
    last 500 steps is the linearized one (mirror prox 1 - eta^2/3 + eta^4/9 = 0.99668, optimistic
    weights 0.99666; measured 0.99665 and 0.99663: the remaining KL of ~1e-2 still bends it)."""
    run = rps[method]
    assert run["kl"][-1] < 0.05 * run["kl"][0] and run["gap"][-1] < 0.2 * run["gap"][0]
    lam = 1j / np.sqrt(3)
    prox = abs(1 - LR * lam + LR**2 * lam**2) ** 2
    want = prox if method == "mirror_prox_entropic" else optimistic_rate(lam)
    assert per_step(run["kl"], 500, 999) == pytest.approx(want, abs=1e-4)
    assert per_step(rps["exp_gradient"]["kl"], 0, 999) > 1.0  # against which MW grows


def test_entropic_regularization_makes_every_method_converge_linearly(device: str) -> None:
    """tau = 0.1, lr 0.1: every method's KL falls at every step, at the linearized rate (multiplicative
    weights (1 - eta tau)^2 + eta^2/3 = 0.98343; measured 0.983437 over steps 200-399, and
    optimistic weights / mirror prox 0.97689 / 0.97691, measured to 1e-6)."""
    runs = race("rps_game", 0.1, 400, device=device)
    lam = 0.1 + 1j / np.sqrt(3)
    want = {"exp_gradient": (1 - LR * 0.1) ** 2 + LR**2 / 3, "optimistic_mw": optimistic_rate(lam),
            "mirror_prox_entropic": abs(1 - LR * lam + LR**2 * lam**2) ** 2}
    for m in METHODS:
        kl = runs[m]["kl"]
        assert np.all(np.diff(kl) < 0), m
        assert per_step(kl, 200, 399) == pytest.approx(want[m], abs=2e-5), m
        assert kl[-1] < 2e-3 * kl[0] and runs[m]["gap"][-1] < 1e-3, m
    assert want["exp_gradient"] < 1.0 < (1 + LR**2 / 3)  # what tau buys multiplicative weights


def test_last_iterates_find_the_asymmetric_equilibrium() -> None:
    """The biased game's equilibrium (1/4, 1/3, 5/12) / (1/3, 1/4, 5/12): optimistic weights and mirror
    prox are within KL 4e-4 of it after 1,500 steps (measured 3.5e-4, 3.7e-4); multiplicative weights'
    KL still grows at every step."""
    runs = race("biased_rps_game", 0.0, 1500)
    star = np.array([3, 4, 5, 4, 3, 5]) / 12
    for m in ("optimistic_mw", "mirror_prox_entropic"):
        z = runs[m]["z"]
        assert runs[m]["kl"][-1] < 1e-3 and np.abs(z[-1] - star).max() < 0.02, m
        np.testing.assert_allclose(runs[m]["kl"], kl_by_hand(z, star), rtol=1e-12)
    assert np.all(np.diff(runs["exp_gradient"]["kl"]) > 0)
