r"""Bilevel methods for :math:`\min_x f(x, y^*(x))`, :math:`y^*(x) = \arg\min_y g(x, y)` (see
:mod:`engine.bilevel` for the problem representation, the oracles and their units).

Each method is a closure-driven optimizer over one trajectory's joint point :math:`(x, y)`: it reads
both levels through :class:`engine.bilevel.Levels`, writes the new :math:`(x, y)` back, and keeps
anything else (an auxiliary lower copy :math:`z`, a linear-system variable, a momentum) in its state.
Those that take gradients get the run's :math:`\nabla f(x_t, y_t)` in ``p.grad`` (counted by the run)
and use it whenever :math:`y` has not moved since it was taken.

* ``implicit_hypergradient`` -- the reference: :math:`y \leftarrow y^*(x)`, then gradient descent on
  :math:`\Phi` with the exact implicit hypergradient (closed forms where the problem has them, else a
  lower solve by gradient steps and a conjugate-gradient linear solve with Hessian-vector products;
  Pedregosa 2016).
* ``penalty_bilevel`` -- the value-function penalty method (Kwon, Kwon, Wright & Nowak 2024): with
  :math:`h_\sigma = \sigma f + g`, minimize :math:`\psi_\sigma(x) = [\min_y h_\sigma(x, y) - \min_z
  g(x, z)]/\sigma` by first-order steps only; its stationary points are :math:`O(\sigma)` from the
  bilevel ones.
* ``bo_rep`` -- BO-REP (Hao, Gong & Liu 2024): normalized momentum on the upper level, a lower level
  refined once at the start and then updated only every ``period`` steps, and the implicit
  hypergradient's linear system tracked by one step per iteration.
* ``lv_hba`` -- LV-HBA (Yao, Yu, Zeng & Zhang 2024), for an unconstrained lower level: single-loop,
  Hessian-free steps on :math:`f/c_k + g - v_\gamma` with the proximal value function
  :math:`v_\gamma(x, y) = \min_\theta g(x, \theta) + \lVert\theta - y\rVert^2/(2\gamma)` and
  :math:`c_k = \underline c\,(k+1)^p` growing (the paper's lower-level constraints and their multiplier
  are not implemented: no problem here has them).

Every method reports the diagnostics of :data:`engine.bilevel.DIAGNOSTICS`: its hypergradient
estimate's error against the closed form, and its lower-level work so far.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from engine.bilevel import (
    DIAGNOSTICS,
    HYPERGRADIENT_ERROR,
    INNER_ORACLES,
    INNER_STEPS,
    LOWER,
    REQUIRES,
    UPPER,
    Levels,
)
from engine.optimizers.base import ClosureOptimizer, Params
from engine.oracles import flatten, unflatten
from engine.specs import Hyperparameter, OptimizerSpec, Oracle, Paper, beta, lr

__all__ = ["BOREP", "LVHBA", "SPECS", "ImplicitHypergradient", "ValueFunctionPenalty"]


class _Bilevel(ClosureOptimizer):
    """What the bilevel methods share: the flat point in and out, the run's gradient when it still
    holds, the state entry for their auxiliary vectors, and the diagnostics."""

    def __init__(self, params: Params, defaults: dict[str, Any], seed: int = 0) -> None:
        super().__init__(params, defaults, seed)
        self._report: dict[str, float] = {}

    def _levels(self, closure: Any) -> Levels:
        return Levels(self._oracles(closure), self.label)

    def _store(self) -> dict[str, Any]:
        """Where the method keeps its vectors and counters: the first parameter's state."""
        return self.state[self._params()[0]]

    def _given(self) -> torch.Tensor | None:
        r"""The run's :math:`\nabla f(x_t, y_t)` (flat) if every parameter has one, else None."""
        params = self._params()
        if any(p.grad is None for p in params):
            return None
        return flatten([p.grad for p in params])

    def _upper_gradient(self, levels: Levels, theta: torch.Tensor, fresh: bool) -> torch.Tensor:
        r""":math:`\nabla f` at ``theta``: the run's when ``theta`` is where it was taken, else one call."""
        given = None if fresh else self._given()
        return given if given is not None else levels.gradients(UPPER, theta[None])[0]

    def _write(self, theta: torch.Tensor) -> None:
        params = self._params()
        for p, v in zip(params, unflatten(theta, params), strict=True):
            p.copy_(v)

    def _finish(self, levels: Levels, theta: torch.Tensor, error: float, inner_steps: int) -> None:
        """Write the new point, advance the step and keep this step's diagnostics."""
        self._write(theta)
        store = self._store()
        store[INNER_STEPS] = int(store.get(INNER_STEPS, 0)) + inner_steps
        store[INNER_ORACLES] = int(store.get(INNER_ORACLES, 0)) + levels.inner
        self._advance()
        self._report = {HYPERGRADIENT_ERROR: error, INNER_STEPS: float(store[INNER_STEPS]),
                        INNER_ORACLES: float(store[INNER_ORACLES])}

    def diagnostics(self) -> Mapping[str, float]:
        """The last step's :data:`engine.bilevel.DIAGNOSTICS` (empty before the first step)."""
        return dict(self._report)


# ---------------------------------------------------------------------------------- the reference

class ImplicitHypergradient(_Bilevel):
    r"""Gradient descent on the hyper-objective with the exact implicit hypergradient::

        y_t = y*(x_t);   x_{t+1} = x_t − η ∇Φ(x_t);   y_{t+1} = y*(x_{t+1})

    With ``closed_form`` and a problem that knows :math:`y^*` and :math:`\nabla\Phi`, both come from its
    formulas (no oracle calls). Otherwise :math:`y^*(x)` is approached by ``inner_steps`` gradient steps
    of size ``inner_lr`` on :math:`g(x, \cdot)` warm-started at the last :math:`y`, and
    :math:`\nabla\Phi = \nabla_x f - \nabla^2_{xy} g\, v` with :math:`\nabla^2_{yy} g\, v = \nabla_y f`
    solved by conjugate gradients to relative residual ``cg_tol`` (at most ``cg_max_iter`` HVPs).
    The lower variable is solved at the start (step 0) and again after every upper step, so the
    stored :math:`(x_t, y_t)` lies on the lower solution curve."""

    label = "implicit_hypergradient"

    def __init__(self, params: Params, lr: float = 1.0, closed_form: bool = True, inner_lr: float = 0.1,
                 inner_steps: int = 50, cg_tol: float = 1e-10, cg_max_iter: int = 100, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, closed_form=closed_form, inner_lr=inner_lr,
                                      inner_steps=inner_steps, cg_tol=cg_tol, cg_max_iter=cg_max_iter), seed)

    def _solve(self, levels: Levels, x: torch.Tensor, y: torch.Tensor, group: Mapping[str, Any]
               ) -> tuple[torch.Tensor, int]:
        if group["closed_form"]:
            exact = levels.exact("lower_solution", x)
            if exact is not None:
                return exact, 0
        k = int(group["inner_steps"])
        return levels.lower_descent(x, y, k, group["inner_lr"]), k

    @torch.no_grad()
    def step(self, closure: Any) -> None:
        levels = self._levels(closure)
        group = self.param_groups[0]
        theta = levels.point()
        x, y = levels.split(theta)
        inner = 0
        first = self.steps == 0
        if first:
            y, inner = self._solve(levels, x, y, group)
            theta = levels.join(x, y)
        h = levels.exact("hypergradient", x) if group["closed_form"] else None
        if h is None:
            gf = self._upper_gradient(levels, theta, fresh=first)
            h = levels.implicit_hypergradient(theta, gf, group["cg_tol"], int(group["cg_max_iter"]))
        error = levels.hypergradient_error(x, h)
        x = x - group["lr"] * h
        y, more = self._solve(levels, x, y, group)
        self._finish(levels, levels.join(x, y), error, inner + more)


# ---------------------------------------------------------------------------------- penalty

class ValueFunctionPenalty(_Bilevel):
    r"""The value-function penalty method of Kwon, Kwon, Wright & Nowak (2024), deterministic
    double-loop form. With :math:`h_\sigma = \sigma f + g`, each step runs ``inner_steps`` (K)
    simultaneous gradient steps of size ``inner_lr`` (:math:`\beta`) on the two lower problems,
    then one step of size ``lr`` (:math:`\alpha`) on the upper variable::

        y ← y − β ∇_y(σ f + g)(x_t, y),   z ← z − β ∇_z g(x_t, z)      (K times)
        x_{t+1} = x_t − α [∇_x f(x_t, y) + (∇_x g(x_t, y) − ∇_x g(x_t, z)) / σ]

    The bracket is :math:`\nabla\psi_\sigma(x_t)` when both inner problems are solved (Danskin), and
    :math:`\nabla\psi_\sigma = \nabla\Phi + O(\sigma)`: the penalty parameter :math:`\sigma` trades this
    bias against the conditioning of the :math:`1/\sigma` term. :math:`z` (the value function's
    minimizer) starts at :math:`y_0` and lives in the state; the run's parameter holds :math:`(x, y)`.
    The inner loops run first at step 0 and then after each upper step, at the new :math:`x` (the
    paper's order, shifted so that a run's :math:`(x_t, y_t)` is the point the next gradient is taken at)."""

    label = "penalty_bilevel"

    def __init__(self, params: Params, lr: float = 0.05, sigma: float = 0.1, inner_lr: float = 0.1,
                 inner_steps: int = 10, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, sigma=sigma, inner_lr=inner_lr, inner_steps=inner_steps), seed)

    @staticmethod
    def _inner(levels: Levels, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, sigma: float, step: float,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(k):
            gg = levels.gradients(LOWER, torch.stack([levels.join(x, y), levels.join(x, z)]), inner=True)
            gf = levels.gradients(UPPER, levels.join(x, y)[None], inner=True)[0]
            y = y - step * (sigma * levels.split(gf)[1] + levels.split(gg[0])[1])
            z = z - step * levels.split(gg[1])[1]
        return y, z

    @torch.no_grad()
    def step(self, closure: Any) -> None:
        levels = self._levels(closure)
        group = self.param_groups[0]
        sigma, k = group["sigma"], int(group["inner_steps"])
        store = self._store()
        theta = levels.point()
        x, y = levels.split(theta)
        z = store["z"] if "z" in store else y.clone()
        first = self.steps == 0
        inner = 0
        if first:
            y, z = self._inner(levels, x, y, z, sigma, group["inner_lr"], k)
            inner = 2 * k
            theta = levels.join(x, y)
        gf = self._upper_gradient(levels, theta, fresh=first)
        gg = levels.gradients(LOWER, torch.stack([theta, levels.join(x, z)]))
        h = levels.split(gf)[0] + (levels.split(gg[0])[0] - levels.split(gg[1])[0]) / sigma
        error = levels.hypergradient_error(x, h)
        x = x - group["lr"] * h
        y, z = self._inner(levels, x, y, z, sigma, group["inner_lr"], k)
        store["z"] = z
        self._finish(levels, levels.join(x, y), error, inner + 2 * k)


# ---------------------------------------------------------------------------------- BO-REP

class BOREP(_Bilevel):
    r"""BO-REP (Hao, Gong & Liu 2024, Algorithm 1), deterministic oracles, in the order of the authors'
    code (``hyperparam_opt/bo_rep.py``)::

        t = 0:            y ← refine_steps gradient steps on g(x_0, ·)        (initialization refinement)
        t % period = 0:   y ← inner_steps gradient steps on g(x_t, ·)         (periodic update)
        v_{t+1} = v_t − ν (∇²_yy g v_t − ∇_y f)                               (one step on the linear system)
        h_t = ∇_x f − ∇²_xy g v_{t+1}
        m_t = β m_{t−1} + (1 − β) h_t;   x_{t+1} = x_t − η m_t / ‖m_t‖      (normalized momentum)

    all derivatives at :math:`(x_t, y_t)`, lower steps of size ``inner_lr``; :math:`v_0 = 0`,
    :math:`m_{-1} = 0`. Two HVPs per step (the first is lower-level work). The paper also projects
    :math:`v` onto a ball of radius :math:`C_{f}/\mu`; that projection is not applied here (the
    iterates of these deterministic problems stay bounded)."""

    label = "bo_rep"

    def __init__(self, params: Params, lr: float = 0.02, beta: float = 0.9, nu: float = 0.2,
                 inner_lr: float = 0.1, inner_steps: int = 3, period: int = 3, refine_steps: int = 100,
                 seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, beta=beta, nu=nu, inner_lr=inner_lr, inner_steps=inner_steps,
                                      period=period, refine_steps=refine_steps), seed)

    @torch.no_grad()
    def step(self, closure: Any) -> None:
        levels = self._levels(closure)
        group = self.param_groups[0]
        store = self._store()
        t = self.steps
        theta = levels.point()
        x, y = levels.split(theta)
        periodic = t % int(group["period"]) == 0
        k = int(group["refine_steps"]) if t == 0 else (int(group["inner_steps"]) if periodic else 0)
        if k:
            y = levels.lower_descent(x, y, k, group["inner_lr"])
            theta = levels.join(x, y)
        v = store["v"] if "v" in store else torch.zeros_like(y)
        m = store["m"] if "m" in store else torch.zeros_like(x)
        gf = self._upper_gradient(levels, theta, fresh=k > 0)
        fx, fy = levels.split(gf)
        _, hyy = levels.mixed(theta, v, inner=True)
        v = v - group["nu"] * (hyy - fy)
        hxy, _ = levels.mixed(theta, v)
        h = fx - hxy
        error = levels.hypergradient_error(x, h)
        m = group["beta"] * m + (1.0 - group["beta"]) * h
        norm = float(m.norm())
        if norm > 0.0:
            x = x - group["lr"] * m / norm
        store["v"], store["m"] = v, m
        self._finish(levels, levels.join(x, y), error, k + 1)


# ---------------------------------------------------------------------------------- LV-HBA

class LVHBA(_Bilevel):
    r"""LV-HBA (Yao, Yu, Zeng & Zhang 2024, Algorithm 1) for an unconstrained lower level, in the order
    of the authors' code (``Toy-example``)::

        θ ← θ − η [∇_y g(x_k, θ) + (θ − y_k)/γ]                                   (proximal lower copy)
        x_{k+1} = x_k − α [∇_x f(x_k, y_k)/c_k + ∇_x g(x_k, y_k) − ∇_x g(x_k, θ)]
        y_{k+1} = y_k − α [∇_y f(x_k, y_k)/c_k + ∇_y g(x_k, y_k) − (y_k − θ)/γ]
        c_k = c (k + 1)^p

    i.e. gradient steps on :math:`f/c_k + g - v_\gamma` with the proximal value function
    :math:`v_\gamma(x, y) = \min_\theta g(x, \theta) + \lVert\theta - y\rVert^2/(2\gamma)` tracked by
    :math:`\theta` (:math:`\theta_0 = y_0`), and a penalty :math:`c_k` that grows without bound, so
    that the bias of a fixed penalty vanishes. The paper's lower-level constraints (their multiplier
    :math:`\lambda` and its auxiliary :math:`z`) are left out: the problems here have none."""

    label = "lv_hba"

    def __init__(self, params: Params, lr: float = 0.1, eta: float = 0.1, gamma: float = 10.0,
                 c: float = 0.5, power: float = 0.3, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eta=eta, gamma=gamma, c=c, power=power), seed)

    @torch.no_grad()
    def step(self, closure: Any) -> None:
        levels = self._levels(closure)
        group = self.param_groups[0]
        store = self._store()
        ck = group["c"] * (self.steps + 1) ** group["power"]
        gamma = group["gamma"]
        theta = levels.point()
        x, y = levels.split(theta)
        th = store["theta"] if "theta" in store else y.clone()
        g_th = levels.gradients(LOWER, levels.join(x, th)[None], inner=True)[0]
        th = th - group["eta"] * (levels.split(g_th)[1] + (th - y) / gamma)
        gf = self._upper_gradient(levels, theta, fresh=False)
        gg = levels.gradients(LOWER, torch.stack([theta, levels.join(x, th)]))
        fx, fy = levels.split(gf)
        dx = fx / ck + levels.split(gg[0])[0] - levels.split(gg[1])[0]
        dy = fy / ck + levels.split(gg[0])[1] - (y - th) / gamma
        error = levels.hypergradient_error(x, ck * dx)  # c_k d_x estimates the hypergradient
        store["theta"] = th
        self._finish(levels, levels.join(x - group["lr"] * dx, y - group["lr"] * dy), error, 1)


# ---------------------------------------------------------------------------------- specs

_PEDREGOSA = Paper("Hyperparameter optimization with approximate gradient", "F. Pedregosa", 2016,
                   "https://arxiv.org/abs/1602.02355")
_KWON = Paper("On Penalty Methods for Nonconvex Bilevel Optimization and First-Order Stochastic "
              "Approximation", "J. Kwon, D. Kwon, S. Wright, R. Nowak", 2024, "https://arxiv.org/abs/2309.01753")
_HAO = Paper("Bilevel Optimization under Unbounded Smoothness: A New Algorithm and Convergence Analysis",
             "J. Hao, X. Gong, M. Liu", 2024, "https://arxiv.org/abs/2401.09587")
_YAO = Paper("Constrained Bi-Level Optimization: Proximal Lagrangian Value function Approach and "
             "Hessian-free Algorithm", "W. Yao, C. Yu, S. Zeng, J. Zhang", 2024, "https://arxiv.org/abs/2401.16164")

_FAMILY = "bilevel"
_INNER_LR = Hyperparameter("inner_lr", 0.1, 1e-6, 10.0, log=True, doc="lower-level step size \\gamma")


def _steps(name: str, default: int, low: int, doc: str, high: int = 100_000) -> Hyperparameter:
    return Hyperparameter(name, default, low, high, kind="int", doc=doc)


SPECS = [
    # Hand-written: the closed forms are the problem's; the HVP route is engine.bilevel's CG. lr 1: on
    # the toy |Phi''| <= 2 near its solution; on the ridge problem Phi'' ~ 0.03 wants lr ~ 30.
    OptimizerSpec(
        name="implicit_hypergradient", label="Implicit hypergradient (exact)", factory=ImplicitHypergradient,
        hyperparameters=(
            lr(1.0, high=1e3),
            Hyperparameter("closed_form", True, kind="bool",
                           doc="use the problem's y*(x) and grad Phi formulas when it has them"),
            _INNER_LR,
            _steps("inner_steps", 50, 1, "lower gradient steps per solve (without closed forms)"),
            Hyperparameter("cg_tol", 1e-10, 1e-16, 1.0, log=True, doc="relative residual of the CG solve"),
            _steps("cg_max_iter", 100, 1, "HVPs per CG solve, at most"),
        ),
        update_rule=(r"y_t = y^*(x_t),\quad x_{t+1} = x_t - \eta\,\big[\nabla_x f - \nabla^2_{xy} g\,"
                     r"(\nabla^2_{yy} g)^{-1}\nabla_y f\big](x_t, y_t)"),
        paper=_PEDREGOSA, oracle=Oracle.HVPS, family=_FAMILY, requires=REQUIRES, diagnostics=DIAGNOSTICS,
    ),
    # Hand-written (no library carries it). Defaults from the toy (mu = 2): inner_lr 0.1 and K = 10
    # contract each lower problem by (1 - 0.2)^10 ~ 0.1 per step; lr 0.05 keeps the 1/sigma term's
    # curvature (~ mu/(sigma + mu) ~ 1) well inside 2/lr.
    OptimizerSpec(
        name="penalty_bilevel", label="Value-function penalty (Kwon et al.)", factory=ValueFunctionPenalty,
        hyperparameters=(
            lr(0.05, high=1e3),
            Hyperparameter("sigma", 0.1, 1e-4, 10.0, log=True,
                           doc="penalty parameter \\sigma: the weight of f in h = \\sigma f + g; bias "
                               "O(\\sigma)"),
            _INNER_LR,
            _steps("inner_steps", 10, 1, "inner gradient steps on y and z per upper step (K)"),
        ),
        update_rule=(r"x_{t+1} = x_t - \alpha\Big[\nabla_x f(x_t, y) + \tfrac{1}{\sigma}\big("
                     r"\nabla_x g(x_t, y) - \nabla_x g(x_t, z)\big)\Big],\ "
                     r"y \approx \arg\min_y \sigma f + g,\ z \approx \arg\min_z g"),
        paper=_KWON, oracle=Oracle.GRADIENTS, lookahead=True, family=_FAMILY, requires=REQUIRES,
        diagnostics=DIAGNOSTICS,
    ),
    # Hand-written from the paper and the authors' code (beta 0.9, nu, period 3, 3 lower steps: its
    # defaults). lr 0.02: a normalized step moves x by lr whatever the gradient's size.
    OptimizerSpec(
        name="bo_rep", label="BO-REP (normalized momentum)", factory=BOREP,
        hyperparameters=(
            lr(0.02, high=10.0),
            beta("beta", 0.9, doc="momentum \\beta of the hypergradient estimate"),
            Hyperparameter("nu", 0.2, 1e-6, 10.0, log=True, doc="step \\nu on the linear system for v"),
            _INNER_LR,
            _steps("inner_steps", 3, 1, "lower gradient steps at each periodic update (N)"),
            _steps("period", 3, 1, "upper steps between lower-level updates (I)"),
            _steps("refine_steps", 100, 0, "lower gradient steps of the initialization refinement"),
        ),
        update_rule=(r"m_t = \beta m_{t-1} + (1-\beta)\big(\nabla_x f - \nabla^2_{xy} g\, v_{t+1}\big),\ "
                     r"x_{t+1} = x_t - \eta\, \frac{m_t}{\lVert m_t\rVert}"),
        paper=_HAO, oracle=Oracle.HVPS, family=_FAMILY, requires=REQUIRES, diagnostics=DIAGNOSTICS,
    ),
    # Hand-written from the paper and the authors' toy code (gamma 10 and c_k = c (k+1)^0.3 there, c =
    # 0.025 for their scale). On the toy, c = 0.5 and lr 0.1 bring x within 0.02 of x* in 1,000 steps
    # (measured; c_k ~ 4 by then: the remaining bias shrinks like 1/c_k).
    OptimizerSpec(
        name="lv_hba", label="LV-HBA (proximal value function)", factory=LVHBA,
        hyperparameters=(
            lr(0.1, high=10.0),
            Hyperparameter("eta", 0.1, 1e-6, 10.0, log=True,
                           doc="step \\eta of the proximal lower copy theta"),
            Hyperparameter("gamma", 10.0, 1e-3, 1e4, log=True, doc="proximal parameter \\gamma of v_gamma"),
            Hyperparameter("c", 0.5, 1e-6, 1e3, log=True, doc="penalty schedule c_k = c (k+1)^p: its scale"),
            Hyperparameter("power", 0.3, 0.0, 0.5, include_high=False, doc="penalty schedule's exponent p"),
        ),
        update_rule=(r"(x, y)_{k+1} = (x, y)_k - \alpha\Big[\tfrac{1}{c_k}\nabla f + \nabla g(x, y) - "
                     r"\big(\nabla_x g(x, \theta), \tfrac{y - \theta}{\gamma}\big)\Big],\ c_k = c\,(k+1)^p"),
        paper=_YAO, oracle=Oracle.GRADIENTS, lookahead=True, family=_FAMILY, requires=REQUIRES,
        diagnostics=DIAGNOSTICS,
    ),
]

