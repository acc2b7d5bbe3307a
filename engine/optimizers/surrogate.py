r"""Stochastic surrogate optimization in target space: SSO (Lavington, Vaswani, Babanezhad, Schmidt &
Le Roux 2023, Algorithm 1), with gradient steps as the inner optimizer.

Each step builds the surrogate :math:`g_t` of :mod:`engine.targets` from one loss gradient at
:math:`\theta_t` on this step's minibatch and takes ``inner_steps`` (m) gradient steps on it from
:math:`\theta_t`::

    z_t = f_{θ_t}(X_b),   θ_{k+1} = θ_k − α_k ∇_θ g_t(θ_k)   (k = 0 .. m−1),   θ_{t+1} = θ_m

with :math:`\nabla_\theta g_t(\theta) = J_\theta^\top[\nabla_z\ell(z_t) + (f_\theta(X_b) - z_t)/(\eta|b|)]
+ \nabla r(\theta)`. Without ``line_search``, :math:`\alpha_k` = ``lr``. With it, as in the authors' code
(``optimizers/lsopt.py``, Armijo with :math:`c = 1/2`), each step starts from the last accepted size
(``lr`` at every outer step) and halves it until :math:`g_t(\theta_k - \alpha\nabla g_t) \le g_t(\theta_k)
- \tfrac12\alpha\lVert\nabla g_t(\theta_k)\rVert^2` (at most :data:`MAX_HALVINGS` times; the inner loop
stops where no size is accepted). The surrogate is cheap to evaluate: a forward through the model.

At :math:`\theta_t`, :math:`\nabla g_t = \nabla L`, so without a line search ``inner_steps = 1`` is SGD
exactly. **Counts**: the run's gradient pass (``p.grad``, one gradient with its function value) is the
first inner step's gradient and pays for :math:`z_t` and :math:`\nabla_z\ell(z_t)` (recomputed here,
uncounted); every later inner gradient is a ``surrogate_gradients`` call and every line-search trial a
model forward (``function_values``). Without a run's gradient the step counts the same, itself.
"""

from __future__ import annotations

from typing import Any

import torch

from engine.optimizers.base import ClosureOptimizer, Params
from engine.oracles import flatten, unflatten
from engine.specs import Hyperparameter, OptimizerSpec, Oracle, Paper, lr
from engine.targets import REQUIRES, TargetSpace

__all__ = ["MAX_HALVINGS", "SPECS", "SSO"]

MAX_HALVINGS = 30
"""Line-search trials per inner step, at most (the size then is ``2^-30`` of where it started)."""
ARMIJO = 0.5
"""The sufficient-decrease constant c of the Armijo test (the authors' ``c = 0.5``)."""


class SSO(ClosureOptimizer):
    """SSO with gradient-step inner iterations (see the module docstring)."""

    label = "sso"

    def __init__(self, params: Params, lr: float = 1.0, eta: float = 1.0, inner_steps: int = 10,
                 line_search: bool = True, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eta=eta, inner_steps=inner_steps, line_search=line_search), seed)

    @torch.no_grad()
    def step(self, closure: Any) -> None:
        oracles = self._oracles(closure)
        space = TargetSpace(oracles, self.label)
        group = self.param_groups[0]
        alpha, eta, search = group["lr"], group["eta"], bool(group["line_search"])
        params = self._params()
        theta = oracles.flat()
        z, gz = space.linearize(theta)
        value = float(space.penalty(theta))  # g_t(theta_t) - l(z_t): the targets term vanishes there
        if all(p.grad is not None for p in params):
            g = flatten([p.grad for p in params])
        else:  # the loss gradient a run would have handed over: J^T grad_z l + grad r
            _, g = space.surrogate_gradient(theta, z, gz, eta, counted=False)
            oracles._count(function_values=1, gradients=1)
        m = int(group["inner_steps"])
        for k in range(m):
            if k:
                value, g = space.surrogate_gradient(theta, z, gz, eta)
            if not search:
                theta = theta - alpha * g
                continue
            decrease = ARMIJO * float(g @ g)
            for _ in range(MAX_HALVINGS):
                trial = theta - alpha * g
                if space.surrogate_value(trial, z, gz, eta) <= value - alpha * decrease:
                    theta = trial
                    break
                alpha *= 0.5
            else:
                break  # no size decreases the surrogate enough: this step is done
        for p, v in zip(params, unflatten(theta, params), strict=True):
            p.copy_(v)
        self._advance()


_LAVINGTON = Paper("Target-based Surrogates for Stochastic Optimization",
                   "J. W. Lavington, S. Vaswani, R. Babanezhad, M. Schmidt, N. Le Roux", 2023,
                   "https://arxiv.org/abs/2302.02607")

SPECS = [
    # Hand-written (the authors' code drives its line search through a closure of their trainer). eta 1:
    # the majorization bound for half squared error with one output, inside the bounds for the
    # logistic (4) and softmax cross-entropy (2) losses; the line search starts at lr = 1 each step.
    OptimizerSpec(
        name="sso", label="SSO (target-space surrogate)", factory=SSO,
        hyperparameters=(
            lr(1.0, high=1e3),
            Hyperparameter("eta", 1.0, 1e-4, 1e4, log=True,
                           doc="target-space step \\eta: the surrogate's proximity weight is 1/(2 eta)"),
            Hyperparameter("inner_steps", 10, 1, 10_000, kind="int",
                           doc="gradient steps on each surrogate (m); 1 without line search is SGD"),
            Hyperparameter("line_search", True, kind="bool",
                           doc="Armijo backtracking on the surrogate from lr (else the fixed step lr)"),
        ),
        update_rule=(r"g_t(\theta) = \langle\nabla_z\ell(z_t), f_\theta(X) - z_t\rangle + \tfrac{1}{2\eta}"
                     r"\lVert f_\theta(X) - z_t\rVert^2 + r(\theta),\ "
                     r"\theta \leftarrow \theta - \alpha\nabla g_t(\theta)\ (m\text{ times})"),
        paper=_LAVINGTON, oracle=Oracle.GRADIENTS, lookahead=True, family="surrogate", requires=REQUIRES,
    ),
]
