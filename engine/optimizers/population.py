r"""Population methods: consensus-based optimization (CBO).

CBO (Pinnau, Totzeck, Tse & Martin 2017; Carrillo, Choi, Totzeck & Tse 2018; anisotropic noise:
Carrillo, Jin, Li & Zhu 2021) moves N particles :math:`X^i` by function values alone. Each step
weighs the particles by :math:`\omega_\alpha(x) = e^{-\alpha f(x)}`, forms the consensus point

.. math:: v_\alpha = \sum_i X^i \omega_\alpha(X^i) \Big/ \sum_i \omega_\alpha(X^i)

(a softmax over :math:`-\alpha f`, computed with log-sum-exp so that large :math:`\alpha` cannot
underflow), and takes one Euler-Maruyama step of the SDE
:math:`dX = -\lambda (X - v_\alpha)\,dt + \sigma D(X - v_\alpha)\,dB`:

.. math:: X^i \leftarrow X^i - \lambda\,\Delta t\,(X^i - v_\alpha)
          + \sigma \sqrt{\Delta t}\, D(X^i - v_\alpha)\,\xi^i,\quad \xi^i \sim N(0, I),

with :math:`D(z) = \lVert z\rVert_2 I` (isotropic) or :math:`\mathrm{diag}(z)` (anisotropic).
The constants are those of the CBXPy reference implementation (``cbx/dynamics/cbo.py`` and
``cbx/noise.py``: drift ``lamda * dt * (x - c)``, noise ``sigma * sqrt(dt) * |x - c| * xi`` or
``sigma * sqrt(dt) * (x - c) * xi``). Riedl, Klock, Geldhauser & Fornasier (2023) read the same
dynamics as a stochastic relaxation of gradient descent.

The optimizer's parameter :math:`\theta` is the consensus point, so the trajectory a view draws is
:math:`v_\alpha`'s. The particles live in the optimizer (an attribute, which the memory report
counts as optimizer state) and :meth:`CBO.particles` returns them (``[N, P]``, flattened like
``Oracles.flat``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.optimizers.base import ClosureOptimizer, Params
from engine.oracles import flatten
from engine.specs import Hyperparameter, OptimizerSpec, Oracle, Paper, choice, lr


def consensus(points: torch.Tensor, values: torch.Tensor, alpha: float) -> torch.Tensor:
    r""":math:`v_\alpha` of ``points [N, P]`` with losses ``values [N]``: the softmax of
    :math:`-\alpha f` (log-sum-exp, so :math:`e^{-\alpha f}` never underflows) as weights."""
    weights = torch.softmax(-alpha * values, dim=0)
    return weights @ points


CBO_INITS = ("gaussian", "uniform")
"""Where CBO's particles start: a Gaussian cloud around the start, or uniformly in the view box."""


class CBO(ClosureOptimizer):
    r"""Consensus-based optimization; see the module docstring. Stepped as ``step(oracles)``.

    The N particles start as ``init`` says: ``"gaussian"`` draws them at construction as
    :math:`\theta_0 + s\,\xi^i` (``spread`` s, :math:`\xi^i \sim N(0, I)`); ``"uniform"`` draws them at
    the first step uniformly in the problem's view box (``oracles.box()``, the problem's ``bounds``:
    :math:`X^i = \ell + (u - \ell) \odot U^i`, :math:`U^i \sim U[0, 1]^P`), the initialization of the
    CBO papers' experiments, which covers the whole box whatever the start. All randomness comes
    from a ``torch.Generator`` seeded with ``seed``, drawn on the CPU in float64 and moved, so a run
    replays identically on any device. Changing ``n_particles``, ``init`` or (for the Gaussian cloud)
    ``spread`` mid-run draws a fresh cloud at the next step (a Gaussian one around the current
    consensus). Each step costs N function values (one batched ``oracles.values`` call).
    """

    label = "cbo"

    def __init__(self, params: Params, lr: float = 0.1, lam: float = 1.0, sigma: float = 0.8,
                 alpha: float = 100.0, n_particles: int = 100, spread: float = 3.0,
                 anisotropic: bool = False, init: str = "gaussian", seed: int = 0) -> None:
        if init not in CBO_INITS:
            raise ValueError(f"CBO: init must be one of {', '.join(CBO_INITS)}, got {init!r}")
        super().__init__(params, dict(lr=lr, lam=lam, sigma=sigma, alpha=alpha, n_particles=n_particles,
                                      spread=spread, anisotropic=anisotropic, init=init), seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._cloud: torch.Tensor | None = None
        self._drawn_with: tuple[Any, ...] | None = None
        if init == "gaussian":
            self._cloud = self._draw(flatten(self._params()), None)

    def _normal(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        z = torch.randn(*shape, generator=self.generator, dtype=torch.float64)
        return z.to(device=like.device, dtype=like.dtype)

    def _wanted(self) -> tuple[Any, ...]:
        group = self.param_groups[0]
        gaussian = group["init"] == "gaussian"
        return int(group["n_particles"]), float(group["spread"]) if gaussian else None, group["init"]

    def _draw(self, centre: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        group = self.param_groups[0]
        n = int(group["n_particles"])
        self._drawn_with = self._wanted()
        if group["init"] == "gaussian":
            return centre[None] + group["spread"] * self._normal(n, centre.numel(), like=centre)
        if box is None:
            raise ValueError("CBO's uniform initialization draws the particles in the problem's view box, "
                             "and this problem has none (bounds): use init='gaussian'")
        low, high = box
        u = torch.rand(n, centre.numel(), generator=self.generator, dtype=torch.float64)
        return low[None] + (high - low)[None] * u.to(device=centre.device, dtype=centre.dtype)

    def particles(self) -> torch.Tensor:
        """The current particles ``[N, P]`` (a copy; ``[0, P]`` before a uniform cloud is drawn)."""
        if self._cloud is None:
            return flatten(self._params()).detach().new_zeros(0, sum(p.numel() for p in self._params()))
        return self._cloud.detach().clone()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        group = self.param_groups[0]
        if self._cloud is None or self._drawn_with != self._wanted():
            box = oracles.box() if hasattr(oracles, "box") else None
            self._cloud = self._draw(oracles.flat(), box)
        x = self._cloud
        v = consensus(x, oracles.values(x), group["alpha"])
        diff = x - v
        xi = self._normal(*x.shape, like=x)
        if group["anisotropic"]:
            noise = diff * xi
        else:
            noise = diff.norm(dim=1, keepdim=True) * xi
        dt = group["lr"]
        self._cloud = x - group["lam"] * dt * diff + group["sigma"] * math.sqrt(dt) * noise
        for p, new in zip(self._params(), oracles.unflat(v), strict=True):
            p.copy_(new)


_CBO = Paper("A consensus-based model for global optimization and its mean-field limit",
             "R. Pinnau, C. Totzeck, O. Tse, S. Martin", 2017, "https://arxiv.org/abs/1604.05648")

SPECS = [
    # Hand-written (CBXPy is numpy-only and has no torch.optim interface). lambda = 1 and dt = 0.1
    # are CBXPy's defaults. The rest were set on 2-D Rastrigin and Ackley from the catalog's starts
    # (measured, 16 seeds, 300 steps): isotropic noise with sigma = 0.8 (below the concentration
    # bound sigma^2 < 2 lambda / d = 1 in 2-D) found Rastrigin's global minimum far more often than
    # anisotropic noise, whose per-coordinate noise dies with each coordinate's spread; alpha = 100
    # beat 10; a cloud of spread 3 around the start covers the catalog's boxes (spread 2 missed
    # Rastrigin's origin from (-4.5, 3.7) in 10 of 16 seeds); 100 particles. init "gaussian" by default
    # (each start of a race has its own cloud around it); "uniform" is the papers' initialization over
    # the problem's box (it needs bounds). No stability threshold
    # (no gradient step) and no clipping (no gradient estimate to clip).
    OptimizerSpec(
        name="cbo", label="Consensus-based optimization", factory=CBO,
        hyperparameters=(
            lr(0.1, high=1.0),
            Hyperparameter("lam", 1.0, 0.0, 10.0, doc="drift towards the consensus \\lambda"),
            Hyperparameter("sigma", 0.8, 0.0, 10.0, doc="noise strength \\sigma"),
            Hyperparameter("alpha", 100.0, 1e-3, 1e8, log=True, doc="weight sharpness \\alpha"),
            Hyperparameter("n_particles", 100, 2, 5000, kind="int", doc="number of particles N"),
            Hyperparameter("spread", 3.0, 0.0, 100.0, doc="standard deviation of the initial cloud"),
            Hyperparameter("anisotropic", False, kind="bool",
                           doc="noise D(z) = diag(z) (else ||z|| I)"),
            choice("init", "gaussian", CBO_INITS,
                   doc="initial particles: a Gaussian cloud of the spread around the start, or uniform "
                       "in the problem's view box"),
        ),
        update_rule=(r"X^i_0 \sim N(\theta_0, s^2 I)\ \text{or}\ U(\text{box}),\;"
                     r"v_\alpha = \frac{\sum_i X^i e^{-\alpha f(X^i)}}{\sum_i e^{-\alpha f(X^i)}},\;"
                     r"X^i \leftarrow X^i - \lambda\,\Delta t\,(X^i - v_\alpha)"
                     r" + \sigma\sqrt{\Delta t}\,D(X^i - v_\alpha)\,\xi^i,\; \theta = v_\alpha"),
        paper=_CBO, oracle=Oracle.VALUES, family="population", row_separable=False, seeded=True,
    ),
]

__all__ = ["CBO", "CBO_INITS", "SPECS", "consensus"]
