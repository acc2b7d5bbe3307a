r"""Bilevel problems :math:`\min_x \Phi(x) = f(x, y^*(x))`, :math:`y^*(x) = \arg\min_y g(x, y)`, in a race.

**Representation.** A bilevel problem is an ordinary :class:`~engine.problem.Problem` over the joint
point :math:`\theta = (x, y) \in \mathbb{R}^{n+m}`, the upper variable first: ``upper_dim`` is
:math:`n`. Its ``loss`` is the upper objective :math:`f(x, y)` (what records carry, and what a plain
gradient lane minimizes over both blocks: the naive single-level baseline, which lands on a minimizer
of :math:`f` and not on the bilevel solution) and ``lower_loss`` the lower objective :math:`g(x, y)`,
both batched ``[B, n+m] -> [B]``. The bilevel methods (:mod:`engine.optimizers.bilevel`) are
closure-driven optimizers that know the split: they reach both levels through the run's
:class:`~engine.oracles.Oracles` (its ``problem`` and ``batch``) with :class:`Levels`, keep what is
neither :math:`x` nor :math:`y` (an auxiliary lower copy, a linear-system variable, a momentum) in
their state, and write the new :math:`(x, y)` back. A 2-D problem (:math:`n = m = 1`) therefore
draws its upper trajectory :math:`x_t` and lower iterate :math:`y_t` as any race's positions.

A problem may also know, in closed form, for upper points ``x [B, n]``: ``lower_solution``
:math:`y^*(x)` ``[B, m]``, ``hyperobjective`` :math:`\Phi(x)` ``[B]`` and ``hypergradient``
:math:`\nabla\Phi(x)` ``[B, n]``. The hypergradient is what every method's estimate is measured
against (their ``hypergradient_error`` diagnostic); where it is missing the error is NaN.

**Implicit function theorem** (lower level strongly convex in :math:`y`):

.. math:: \nabla\Phi(x) = \nabla_x f - \nabla^2_{xy} g\, [\nabla^2_{yy} g]^{-1} \nabla_y f
          \quad\text{at } (x, y^*(x)),

where :math:`\nabla^2_{xy} g` is the :math:`n\times m` block of mixed second derivatives.
:meth:`Levels.implicit_hypergradient` solves :math:`\nabla^2_{yy} g\, v = \nabla_y f` by conjugate
gradients with Hessian-vector products of :math:`g` (one product with :math:`(0, p)` gives both
:math:`\nabla^2_{xy} g\, p` and :math:`\nabla^2_{yy} g\, p`, so :math:`\nabla^2_{xy} g\, v` accumulates
along the iterations for free).

**Oracle units** (per trajectory, in :class:`~engine.records.OracleCounts`): every gradient of
:math:`f` or of :math:`g` with respect to the whole :math:`(x, y)` is one ``gradients`` call (one
backward pass, with its forward in ``function_values``); every Hessian-vector product of :math:`g` is
one ``hvps`` call. Upper and lower calls are counted alike; the lower level's share is the
``inner_oracles`` diagnostic. Closed forms (the reference method's ``closed_form``) are formulas, not
oracle calls, and count nothing.

The data API for views and notebooks (:func:`trace`, :func:`penalty_bias`) runs a
:class:`~engine.run.Run` and returns plain arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

UPPER = "upper"
LOWER = "lower"

HYPERGRADIENT_ERROR = "hypergradient_error"
INNER_STEPS = "inner_steps"
INNER_ORACLES = "inner_oracles"
DIAGNOSTICS = {
    HYPERGRADIENT_ERROR: "distance of this step's hypergradient estimate from the exact one, "
                         "|h_t - grad Phi(x_t)| (NaN when the problem has no closed form)",
    INNER_STEPS: "lower-level updates so far (y, an auxiliary lower copy, the linear-system variable)",
    INNER_ORACLES: "gradients and Hessian-vector products spent on those lower-level updates so far",
}
"""The diagnostics every bilevel method reports (see :attr:`engine.specs.OptimizerSpec.diagnostics`)."""

REQUIRES = {"lower_loss": "a bilevel problem: a lower objective g(x, y) beside its upper loss f(x, y)",
            "upper_dim": "a bilevel problem: how many of its coordinates are the upper variable x"}
"""What a bilevel method needs of the problem (``OptimizerSpec.requires``)."""


@runtime_checkable
class BilevelProblem(Protocol):
    """What the bilevel methods need (see the module docstring); closed forms are optional."""

    name: str
    dim: int
    upper_dim: int

    def loss(self, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """Upper objective :math:`f(x, y)`: ``[B, n+m] -> [B]``."""
        ...

    def lower_loss(self, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """Lower objective :math:`g(x, y)`: ``[B, n+m] -> [B]``."""
        ...


class Levels:
    """Both levels of a bilevel problem at one trajectory's point, every call counted in the
    closure's :class:`~engine.records.OracleCounts` (and the lower-level share in :attr:`inner`).

    Built from the :class:`~engine.oracles.Oracles` a run hands to ``step``: it carries the problem
    and this step's minibatch; every call of a step sees the same minibatch."""

    def __init__(self, oracles: Any, method: str) -> None:
        problem = getattr(oracles, "problem", None)
        if problem is None or not all(hasattr(problem, a) for a in REQUIRES):
            what = getattr(problem, "name", "a bare loss")
            raise TypeError(f"{method} needs a bilevel problem (an upper loss f(x, y), a lower_loss g(x, y) "
                            f"and upper_dim), stepped through a run's Oracles; got {what}")
        self.oracles = oracles
        self.problem = problem
        self.batch = getattr(oracles, "batch", None)
        self.n = int(problem.upper_dim)
        self.inner = 0
        """Gradients and HVPs spent on the lower level by the calls marked ``inner``."""

    # -- layout ------------------------------------------------------------------------------
    def point(self) -> torch.Tensor:
        """The trajectory's current :math:`(x, y)`, flat ``[n+m]`` (a copy)."""
        return self.oracles.flat()

    def split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return theta[..., :self.n], theta[..., self.n:]

    @staticmethod
    def join(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, y], dim=-1)

    # -- first order -------------------------------------------------------------------------
    def gradients(self, level: str, points: torch.Tensor, *, inner: bool = False) -> torch.Tensor:
        r""":math:`\nabla f` (``level="upper"``) or :math:`\nabla g` with respect to :math:`(x, y)` at each
        row of ``points [k, n+m]``, in one batched call: k gradients."""
        fn = self.problem.loss if level == UPPER else self.problem.lower_loss
        x = points.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(fn(x, self.batch).sum(), x)
        k = points.shape[0]
        self.oracles._count(function_values=k, gradients=k)
        if inner:
            self.inner += k
        return g

    def lower_descent(self, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
        r"""``steps`` gradient steps :math:`y \leftarrow y - \gamma \nabla_y g(x, y)` (lower-level work)."""
        for _ in range(steps):
            y = y - lr * self.split(self.gradients(LOWER, self.join(x, y)[None], inner=True)[0])[1]
        return y

    # -- second order ------------------------------------------------------------------------
    def lower_hvp(self, theta: torch.Tensor, vectors: torch.Tensor, *, inner: bool = False) -> torch.Tensor:
        r""":math:`\nabla^2 g(\theta)\, v` for each row of ``vectors [k, n+m]`` (k HVPs, by double
        differentiation of one fresh graph)."""
        x = theta.detach().clone().requires_grad_(True)
        rows = []
        with torch.enable_grad():
            g_lower = self.problem.lower_loss(x[None], self.batch).sum()
            (g,) = torch.autograd.grad(g_lower, x, create_graph=True)
            for i, v in enumerate(vectors):
                last = i == len(vectors) - 1
                (hv,) = torch.autograd.grad(g, x, grad_outputs=v.to(g.dtype), retain_graph=not last)
                rows.append(hv)
        k = vectors.shape[0]
        self.oracles._count(hvps=k)
        if inner:
            self.inner += k
        return torch.stack(rows)

    def mixed(self, theta: torch.Tensor, v: torch.Tensor, *, inner: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(∇²_xy g v, ∇²_yy g v)`` at ``theta`` for a lower vector ``v [m]``: one HVP with
        :math:`(0, v)`."""
        hv = self.lower_hvp(theta, self.join(torch.zeros_like(theta[:self.n]), v)[None], inner=inner)[0]
        return self.split(hv)

    def implicit_hypergradient(self, theta: torch.Tensor, upper_gradient: torch.Tensor, tol: float,
                               max_iter: int) -> torch.Tensor:
        r""":math:`\nabla_x f - \nabla^2_{xy} g\, v` with :math:`\nabla^2_{yy} g\, v = \nabla_y f` solved by
        conjugate gradients from :math:`v = 0` until :math:`\lVert r\rVert \le` ``tol`` :math:`\lVert
        \nabla_y f\rVert` or ``max_iter`` products (one HVP each, counted as lower-level work)."""
        fx, b = self.split(upper_gradient)
        v = torch.zeros_like(b)
        hxv = torch.zeros_like(fx)  # ∇²_xy g v, accumulated
        r = b.clone()
        p = r.clone()
        rr = float(r @ r)
        stop = (tol * math.sqrt(rr)) ** 2
        for _ in range(max_iter):
            if rr <= stop or rr == 0.0:
                break
            hxp, hyp = self.mixed(theta, p, inner=True)
            curvature = float(p @ hyp)
            if not curvature > 0.0:  # converged to rounding, or g not convex in y here: stop
                break
            alpha = rr / curvature
            v = v + alpha * p
            hxv = hxv + alpha * hxp
            r = r - alpha * hyp
            rr_new = float(r @ r)
            p = r + (rr_new / rr) * p
            rr = rr_new
        return fx - hxv

    # -- closed forms (formulas, not oracle calls) -------------------------------------------
    def exact(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """The problem's closed form ``name`` at one upper point ``x [n]`` (None if it has none)."""
        fn = getattr(self.problem, name, None)
        if fn is None:
            return None
        with torch.no_grad():
            return fn(x.detach()[None])[0].to(x.dtype)

    def hypergradient_error(self, x: torch.Tensor, estimate: torch.Tensor) -> float:
        r""":math:`\lVert h - \nabla\Phi(x)\rVert` against the closed form (NaN without one)."""
        exact = self.exact("hypergradient", x)
        return math.nan if exact is None else float((estimate.detach() - exact).norm())


# =================================================================================== data API

@dataclass(frozen=True)
class BilevelTrace:
    r"""One bilevel method's run on one problem, as plain arrays (row 0 of a one-lane run).

    ``upper [T+1, n]`` and ``lower [T+1, m]`` are :math:`x_t` and :math:`y_t` before step t (the last
    row: after the last step); ``hyperobjective [T+1]`` is :math:`\Phi(x_t)` (NaN without a closed
    form). Per step ``[T]``: ``hypergradient_error`` (the method's estimate at :math:`x_t` against
    :math:`\nabla\Phi(x_t)`), cumulative ``inner_steps`` and ``inner_oracles`` (lower-level work), and
    cumulative ``gradients`` and ``hvps`` (all oracle calls, both levels, as the records count them)
    and every cumulative ``counts`` (:class:`engine.records.OracleCounts`, to price in oracle units).
    ``solution`` is the known :math:`x^\star` (the first listed minimum's upper part) or None.
    ``status`` is "running" for a run that took all its steps, else the race's "diverged at step N:
    ..." (states then stop before step N, and the step that led there is left out)."""

    optimizer: str
    hyperparameters: Mapping[str, Any]
    upper: np.ndarray
    lower: np.ndarray
    hyperobjective: np.ndarray
    hypergradient_error: np.ndarray
    inner_steps: np.ndarray
    inner_oracles: np.ndarray
    gradients: np.ndarray
    hvps: np.ndarray
    solution: np.ndarray | None
    counts: tuple[Any, ...] = ()
    status: str = "running"

    @property
    def diverged(self) -> bool:
        return self.status != "running"

    @property
    def steps(self) -> np.ndarray:
        return np.arange(self.hypergradient_error.shape[0])

    @property
    def upper_distance(self) -> np.ndarray | None:
        r""":math:`\lVert x_t - x^\star\rVert` ``[T+1]`` (None without a known solution)."""
        return None if self.solution is None else np.linalg.norm(self.upper - self.solution, axis=1)


def solution(problem: Any) -> np.ndarray | None:
    """The upper part of a bilevel problem's first listed minimum (its solution), or None."""
    minima = getattr(problem, "minima", ())
    return None if not minima else np.array(minima[0].x[:problem.upper_dim], dtype=np.float64)


def trace(problem: Any, optimizer: str, hyperparameters: Mapping[str, Any] | None = None, steps: int = 200,
          start: Sequence[float] | None = None, seed: int = 0, *, divergence_factor: float | None = None,
          on_step: Callable[[int], None] | None = None) -> BilevelTrace:
    """Run ``optimizer`` on the bilevel ``problem`` for ``steps`` steps (one start: ``start`` or the
    problem's) and return its :class:`BilevelTrace`. Without ``divergence_factor`` a state that is not
    finite raises; with it (the race's rule, ``RunConfig.divergence_factor``) the trace stops there and
    says so in its ``status``. ``on_step(t)`` after each step t = 1..steps (a job's progress; a cancel
    stops the run at its own checkpoint)."""
    from engine.run import LaneConfig, Run, RunConfig  # the run imports every optimizer: not at module load

    if not isinstance(problem, BilevelProblem):
        raise ValueError(f"{getattr(problem, 'name', problem)} is not a bilevel problem (it needs lower_loss "
                         f"and upper_dim)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    config = RunConfig(lanes=(LaneConfig(optimizer, dict(hyperparameters or {})),), device="cpu", seed=seed,
                       start=None if start is None else tuple(start), metrics_every=1,
                       divergence_factor=divergence_factor)
    run = Run(problem, config)
    n = problem.upper_dim
    points, errors, inner_steps, inner_oracles, counts = [], [], [], [], []
    status = "running"
    for t in range(steps):
        points.append(run.positions(0)[0].copy())
        (record,) = run.step()
        if record.status[0] != "running":  # x_t itself left the finite (or bounded) region
            if divergence_factor is None:
                raise RuntimeError(f"{optimizer} on {problem.name}: {record.status[0]}")
            status = record.status[0]
            points.pop()
            del errors[-1:], inner_steps[-1:], inner_oracles[-1:], counts[-1:]  # the step that led there
            break
        d = record.diagnostics
        errors.append(float(d[HYPERGRADIENT_ERROR][0]))
        inner_steps.append(float(d[INNER_STEPS][0]))
        inner_oracles.append(float(d[INNER_ORACLES][0]))
        counts.append(record.counts)
        if on_step is not None:
            on_step(t + 1)
    else:
        points.append(run.positions(0)[0].copy())
    theta = np.stack(points) if points else np.empty((0, problem.dim))
    phi = getattr(problem, "hyperobjective", None)
    with torch.no_grad():
        values = (np.full(theta.shape[0], math.nan) if phi is None or not len(theta)
                  else phi(torch.as_tensor(theta[:, :n])).cpu().numpy().astype(np.float64))
    return BilevelTrace(optimizer, dict(run.lanes[0].values), theta[:, :n], theta[:, n:], values,
                        np.array(errors), np.array(inner_steps), np.array(inner_oracles),
                        np.array([c.gradients for c in counts], dtype=np.int64),
                        np.array([c.hvps for c in counts], dtype=np.int64), solution(problem),
                        tuple(counts), status)


@dataclass(frozen=True)
class PenaltyBias:
    r"""Where the value-function penalty method settles for each penalty parameter :math:`\sigma`:
    ``upper [k, n]`` its :math:`x` after the run, ``bias [k]`` = :math:`\lVert x_\sigma - x^\star\rVert`
    from the bilevel solution ``solution [n]``, ``hypergradient_norm [k]`` :math:`\lVert\nabla\Phi(x_\sigma)
    \rVert` (NaN without a closed form) and ``gradients [k]`` the oracle calls it took."""

    sigmas: np.ndarray
    upper: np.ndarray
    bias: np.ndarray
    hypergradient_norm: np.ndarray
    gradients: np.ndarray
    solution: np.ndarray


def penalty_bias(problem: Any, sigmas: Sequence[float], steps: int = 2_000,
                 hyperparameters: Mapping[str, Any] | None = None, optimizer: str = "penalty_bilevel"
                 ) -> PenaltyBias:
    r"""Run the penalty method once per :math:`\sigma` in ``sigmas`` (the other hyperparameters from
    ``hyperparameters``) for ``steps`` steps and measure its bias from the bilevel solution (the problem
    must list it as its first minimum)."""
    x_star = solution(problem)
    if x_star is None:
        raise ValueError(f"{problem.name} lists no solution to measure the penalty bias against")
    uppers, grads, norms = [], [], []
    for sigma in sigmas:
        tr = trace(problem, optimizer, {**dict(hyperparameters or {}), "sigma": float(sigma)}, steps=steps)
        uppers.append(tr.upper[-1])
        grads.append(tr.gradients[-1])
        hg = getattr(problem, "hypergradient", None)
        with torch.no_grad():
            norms.append(math.nan if hg is None else float(hg(torch.as_tensor(tr.upper[-1:]))[0].norm()))
    upper = np.stack(uppers)
    return PenaltyBias(np.array(sigmas, dtype=np.float64), upper, np.linalg.norm(upper - x_star, axis=1),
                       np.array(norms), np.array(grads, dtype=np.int64), x_star)
