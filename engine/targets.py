r"""Target-space surrogates (Lavington, Vaswani, Babanezhad, Schmidt & Le Roux 2023, "Target-based
Surrogates for Stochastic Optimization", ICML).

A network problem's loss is a function of the model's outputs, its **targets**
:math:`z = f_\theta(X)`: :math:`L(\theta) = \ell(f_\theta(X_b), y_b) + r(\theta)` on a minibatch
:math:`b` (:math:`\ell` the criterion, a mean over the batch; :math:`r` a parameter penalty such as
weight decay). At :math:`\theta_t`, with :math:`z_t = f_{\theta_t}(X_b)` and one loss gradient in target
space :math:`\nabla_z \ell(z_t)`, the surrogate is

.. math:: g_t(\theta) = \ell(z_t) + \langle\nabla_z \ell(z_t), f_\theta(X_b) - z_t\rangle
          + \frac{1}{2\eta}\,\frac{1}{|b|}\lVert f_\theta(X_b) - z_t\rVert^2 + r(\theta).

Minimizing it over the targets alone gives :math:`z_t - \eta |b| \nabla_z\ell(z_t)`, a gradient step in
target space (:math:`|b|\nabla_z\ell` is the per-sample gradient, as :math:`\ell` is a mean); minimizing
it over :math:`\theta` projects that step onto what the model can output: SSO is projected SGD in
target space. When one sample's loss is :math:`1/\eta`-smooth in its outputs (:math:`\eta \le 1` for
half squared error with one output, :math:`\le 2` for softmax cross-entropy, :math:`\le 4` for the
logistic loss), :math:`g_t \ge L` on the full batch: a majorizer, and :math:`g_t(\theta_t) = L(\theta_t)`,
:math:`\nabla g_t(\theta_t) = \nabla L(\theta_t)`.

Inner steps need the model's forward and backward passes only, never the loss: they are counted as
``surrogate_gradients`` (:class:`~engine.records.OracleCounts`), the loss gradients as ``gradients``.

**Problem protocol** (:class:`TargetProblem`, what :class:`landscapes.networks.NetworkProblem` offers):
``forward(theta [P], X) -> outputs``, ``criterion(outputs, targets) -> scalar`` (a mean over
samples), the training set ``X_train``, ``y_train`` (a minibatch is a tensor of indices into them, or
None for all) and optionally ``penalty(theta) -> scalar``. The module is used in the mode it is in.

The data API (:func:`oracle_trace`, :func:`calls_to_reach`, :func:`tune`) runs a
:class:`~engine.run.Run` and returns plain arrays: the full training loss against loss gradients and
model passes, for SSO and any other optimizer on the same minibatches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

REQUIRES = {"forward": "a model whose loss is a function of its outputs (a network problem)",
            "criterion": "a loss on the model's outputs (a network problem)"}
"""What a target-space method needs of the problem (``OptimizerSpec.requires``)."""


@runtime_checkable
class TargetProblem(Protocol):
    """See the module docstring."""

    X_train: torch.Tensor
    y_train: torch.Tensor

    def forward(self, theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor: ...

    def criterion(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...


class TargetSpace:
    """A network problem's target space on this step's minibatch, every call counted in the closure's
    :class:`~engine.records.OracleCounts` (built from the :class:`~engine.oracles.Oracles` a run hands
    to ``step``, which carries the problem and the minibatch)."""

    def __init__(self, oracles: Any, method: str) -> None:
        problem = getattr(oracles, "problem", None)
        if problem is None or not all(hasattr(problem, a) for a in (*REQUIRES, "X_train", "y_train")):
            what = getattr(problem, "name", "a bare loss")
            raise TypeError(f"{method} needs a network problem (a model's forward, a criterion on its "
                            f"outputs and a training set), stepped through a run's Oracles; got {what}")
        self.oracles = oracles
        self.problem = problem
        batch = getattr(oracles, "batch", None)
        X, y = problem.X_train, problem.y_train
        self.X, self.y = (X, y) if batch is None else (X[batch], y[batch])

    def penalty(self, theta: torch.Tensor) -> torch.Tensor:
        fn = getattr(self.problem, "penalty", None)
        return theta.new_zeros(()) if fn is None else fn(theta)

    def linearize(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(z_t, ∇_z ℓ(z_t))`` at ``theta``: one forward and one loss gradient in target space
        (counted by the caller: a run's gradient pass already paid for them)."""
        with torch.no_grad():
            z = self.problem.forward(theta.detach(), self.X)
        zz = z.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (gz,) = torch.autograd.grad(self.problem.criterion(zz, self.y.to(device=z.device)), zz)
        return z.detach(), gz

    def surrogate(self, theta: torch.Tensor, z: torch.Tensor, gz: torch.Tensor, eta: float) -> torch.Tensor:
        r""":math:`g_t(\theta) - \ell(z_t)` (the constant dropped), differentiable in ``theta``."""
        out = self.problem.forward(theta, self.X)
        d = out - z
        return (gz * d).sum() + (d * d).sum() / (2.0 * eta * out.shape[0]) + self.penalty(theta)

    def surrogate_value(self, theta: torch.Tensor, z: torch.Tensor, gz: torch.Tensor, eta: float) -> float:
        r""":math:`g_t(\theta) - \ell(z_t)`: one forward pass through the model (a function value)."""
        with torch.no_grad():
            value = float(self.surrogate(theta, z, gz, eta))
        self.oracles._count(function_values=1)
        return value

    def surrogate_gradient(self, theta: torch.Tensor, z: torch.Tensor, gz: torch.Tensor, eta: float, *,
                           counted: bool = True) -> tuple[float, torch.Tensor]:
        r"""``(g_t(θ) - ℓ(z_t), ∇g_t(θ))``: one forward and backward pass through the model, no loss
        (one ``surrogate_gradients`` call unless the caller counts it otherwise)."""
        x = theta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            value = self.surrogate(x, z, gz, eta)
            (g,) = torch.autograd.grad(value, x)
        if counted:
            self.oracles._count(surrogate_gradients=1)
        return float(value), g


def surrogate_value(problem: Any, theta_t: torch.Tensor, theta: torch.Tensor, eta: float,
                    batch: Any = None) -> float:
    r""":math:`g_t(\theta)` of the module docstring built at ``theta_t`` (flat parameters) on ``batch``
    (None: the full training set), constant included: for tests and notebooks."""

    class _Bare:
        pass

    bare = _Bare()
    bare.problem, bare.batch = problem, batch  # type: ignore[attr-defined]
    space = TargetSpace(bare, "surrogate_value")
    z, gz = space.linearize(theta_t)
    with torch.no_grad():
        base = problem.criterion(z, space.y.to(device=z.device))
        return float(base + space.surrogate(theta, z, gz, eta))


# =================================================================================== data API

@dataclass(frozen=True)
class OracleTrace:
    r"""One optimizer's run on a network problem as plain arrays (row 0 of a one-lane run), each
    ``[T+1]`` over the states :math:`\theta_0 .. \theta_T`: ``loss`` the full training loss (penalty
    included), and the calls made to reach that state: ``loss_gradients`` (gradients of the loss:
    SGD's steps, SSO's outer steps), ``model_passes`` (backward passes through the model: a loss
    gradient's plus every surrogate gradient) and ``function_values``."""

    optimizer: str
    hyperparameters: Mapping[str, Any]
    loss: np.ndarray
    loss_gradients: np.ndarray
    model_passes: np.ndarray
    function_values: np.ndarray


def oracle_trace(problem: Any, optimizer: str, hyperparameters: Mapping[str, Any] | None = None,
                 steps: int = 100, seed: int = 0) -> OracleTrace:
    """Run ``optimizer`` on ``problem`` for ``steps`` steps from its default start (minibatches drawn
    from ``seed``: two optimizers at the same seed see the same ones) and return its :class:`OracleTrace`."""
    from engine.run import LaneConfig, Run, RunConfig  # the run imports every optimizer: not at module load

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    run = Run(problem, RunConfig(lanes=(LaneConfig(optimizer, dict(hyperparameters or {})),), device="cpu",
                                 seed=seed, metrics_every=10**9, divergence_factor=None))
    thetas, counts = [run.positions(0)[0].copy()], [(0, 0, 0)]
    for _ in range(steps):
        (record,) = run.step()
        c = record.counts
        counts.append((c.gradients, c.gradients + c.surrogate_gradients, c.function_values))
        thetas.append(run.positions(0)[0].copy())
    with torch.no_grad():
        loss = problem.loss(torch.as_tensor(np.stack(thetas)), None).cpu().numpy().astype(np.float64)
    c = np.array(counts, dtype=np.int64)
    return OracleTrace(optimizer, dict(run.lanes[0].values), loss, c[:, 0], c[:, 1], c[:, 2])


def calls_to_reach(trace: OracleTrace, level: float, calls: str = "loss_gradients") -> float:
    """The ``calls`` (a count of the trace) spent when the training loss first reaches ``level``
    (inf if it never does)."""
    hit = np.flatnonzero(trace.loss <= level)
    return math.inf if hit.size == 0 else float(getattr(trace, calls)[hit[0]])


def tune(problem: Any, optimizer: str, grid: Sequence[Mapping[str, Any]], level: float, steps: int = 100,
         seed: int = 0, calls: str = "loss_gradients") -> tuple[OracleTrace, list[float]]:
    """The trace of the best setting in ``grid`` (fewest ``calls`` to reach ``level``, then lowest final
    loss) and every setting's calls: equal tuning is the same number of settings for each method."""
    traces = [oracle_trace(problem, optimizer, hp, steps, seed) for hp in grid]
    spent = [calls_to_reach(t, level, calls) for t in traces]
    final = [float(np.nan_to_num(t.loss[-1], nan=np.inf)) for t in traces]
    best = min(range(len(traces)), key=lambda i: (spent[i], final[i]))
    return traces[best], spent
