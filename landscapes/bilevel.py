r"""Bilevel problems :math:`\min_x f(x, y^*(x))`, :math:`y^*(x) = \arg\min_y g(x, y)`, with closed forms.

A :class:`BilevelFunction` is an :class:`~landscapes.analytic.AnalyticFunction` over the joint point
:math:`(x, y)` (the upper variable first, ``upper_dim`` of them) whose ``fn`` is the upper objective
:math:`f` and whose ``lower_fn`` is the lower objective :math:`g`: the representation of
:mod:`engine.bilevel`, so it races in a :class:`~engine.run.Run` like any landscape, the bilevel
methods of :mod:`engine.optimizers.bilevel` find both levels through it, and a plain gradient lane
minimizes :math:`f` over both blocks (the naive single-level answer). Its first listed minimum is the
**bilevel solution** :math:`(x^\star, y^*(x^\star))` with value :math:`\Phi(x^\star)`, where views mark
targets; it is not a minimum of :math:`f`. Closed forms, for upper points ``x [B, n]``:
``lower_solution`` :math:`y^*(x)`, ``value_function`` :math:`g(x, y^*(x))`, ``hyperobjective``
:math:`\Phi(x)` and ``hypergradient`` :math:`\nabla\Phi(x)`; ``metrics`` reports them along a run.

* :func:`bilevel_toy` -- scalars :math:`x, y`: :math:`f = \tfrac12 (y - 1)^2 + \tfrac\rho2 x^2`,
  :math:`g = \tfrac\mu2 y^2 - \mu y \sin x`, so :math:`y^* = \sin x`, :math:`v(x) = -\tfrac\mu2
  \sin^2 x`, :math:`\Phi = \tfrac12(\sin x - 1)^2 + \tfrac\rho2 x^2`, :math:`\Phi' = \cos x\,(\sin x - 1) +
  \rho x`. Its plane is where the upper trajectory :math:`x_t` (and :math:`y_t` about the curve
  :math:`y = \sin x`) is drawn.
* :func:`ridge_bilevel` -- the ridge penalty of a linear model on scikit-learn's diabetes set learned on
  a validation split: :math:`x = \log\lambda`, :math:`y \in \mathbb{R}^{10}` the weights,
  :math:`g = \tfrac1{2n}\lVert Ay - b\rVert^2 + \tfrac{e^x}{2}\lVert y\rVert^2` (training part),
  :math:`f = \tfrac1{2m}\lVert Vy - c\rVert^2` (held-out part); :math:`y^*(x) = (S + e^x I)^{-1} r` with
  :math:`S = A^\top A/n`, :math:`r = A^\top b/n`, and :math:`\nabla\Phi(x) = -e^x\, y^{*\top}(S + e^x
  I)^{-1} V^\top(Vy^* - c)/m`, by one eigendecomposition of :math:`S`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from engine.problem import Bounds, Minimum
from landscapes import data as datasets
from landscapes.analytic import AnalyticFunction

__all__ = ["BilevelFunction", "bilevel_toy", "ridge_bilevel"]

Upper = Callable[[torch.Tensor], torch.Tensor]
"""A closed form of the upper points ``x [B, n]``."""


@dataclass(frozen=True)
class BilevelFunction(AnalyticFunction):
    """A bilevel problem given in closed form (see the module docstring)."""

    upper_dim: int = 1
    lower_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    solution_fn: Upper | None = None
    value_fn: Upper | None = None
    hyperobjective_fn: Upper | None = None
    hypergradient_fn: Upper | None = None

    geometry: ClassVar[str] = "bilevel"
    """What a view reads to draw the lower solution curve and the upper trajectory."""

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.upper_dim
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < self.dim:
            raise ValueError(f"{self.name}: upper_dim must be an int in 1..{self.dim - 1}, got {n!r}")
        if self.lower_fn is None:
            raise ValueError(f"{self.name}: a bilevel problem needs its lower objective (lower_fn)")

    @property
    def lower_dim(self) -> int:
        return self.dim - self.upper_dim

    def _points(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: expected points of shape [B, {self.dim}], got {list(x.shape)}")
        return x

    def lower_loss(self, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """The lower objective :math:`g(x, y)` of points ``[..., dim]``."""
        assert self.lower_fn is not None
        x = self._points(x)
        if x.ndim == 2:
            return self.lower_fn(x)
        return self.lower_fn(x.reshape(-1, self.dim)).reshape(x.shape[:-1])

    def _upper(self, fn: Upper | None, x: torch.Tensor) -> torch.Tensor:
        if fn is None:
            raise NotImplementedError(f"{self.name} has no closed form for this")
        if x.shape[-1] != self.upper_dim:
            raise ValueError(f"{self.name}: expected upper points of shape [B, {self.upper_dim}], "
                             f"got {list(x.shape)}")
        return fn(x)

    def lower_solution(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`y^*(x)`, ``[B, n] -> [B, m]``."""
        return self._upper(self.solution_fn, x)

    def value_function(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`v(x) = \min_y g(x, y)`, ``[B, n] -> [B]``."""
        return self._upper(self.value_fn, x)

    def hyperobjective(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\Phi(x) = f(x, y^*(x))`, ``[B, n] -> [B]``."""
        return self._upper(self.hyperobjective_fn, x)

    def hypergradient(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla\Phi(x)`, ``[B, n] -> [B, n]``."""
        return self._upper(self.hypergradient_fn, x)

    @property
    def solution(self) -> tuple[float, ...]:
        """The upper part :math:`x^\\star` of the bilevel solution (the first listed minimum)."""
        return self.minima[0].x[:self.upper_dim]

    @torch.no_grad()
    def metrics(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        r"""Per row of ``points [B, dim]``: ``hyperobjective`` :math:`\Phi(x)`, ``hypergradient_norm``
        :math:`\lVert\nabla\Phi(x)\rVert`, ``lower_gap`` :math:`g(x, y) - v(x) \ge 0`, ``lower_distance``
        :math:`\lVert y - y^*(x)\rVert`, ``upper_distance`` :math:`\lVert x - x^\star\rVert`, and for one
        upper coordinate ``upper`` :math:`x` itself (the trajectory of a problem too big for positions)."""
        n = self.upper_dim
        x, y = points[:, :n], points[:, n:]
        out: dict[str, torch.Tensor] = {}
        if self.hyperobjective_fn is not None:
            out["hyperobjective"] = self.hyperobjective(x)
        if self.hypergradient_fn is not None:
            out["hypergradient_norm"] = self.hypergradient(x).norm(dim=-1)
        if self.value_fn is not None:
            out["lower_gap"] = self.lower_loss(points) - self.value_function(x)
        if self.solution_fn is not None:
            out["lower_distance"] = (y - self.lower_solution(x)).norm(dim=-1)
        if self.minima:
            target = torch.tensor(self.solution, dtype=x.dtype, device=x.device)
            out["upper_distance"] = (x - target).norm(dim=-1)
        if n == 1:
            out["upper"] = x[:, 0].clone()
        return out


def _positive(name: str, value: object, problem: str, *, zero_ok: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
        value >= 0 if zero_ok else value > 0)
    if not ok:
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{problem}: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _newton(grad: Callable[[float], float], hess: Callable[[float], float], x: float) -> float:
    """A root of ``grad`` by Newton's method from ``x`` (to machine precision)."""
    for _ in range(100):
        step = grad(x) / hess(x)
        x -= step
        if abs(step) < 1e-16 * max(1.0, abs(x)):
            break
    return x


def bilevel_toy(*, mu: float = 2.0, rho: float = 0.1) -> BilevelFunction:
    r"""A 2-D bilevel toy whose every quantity is closed form (see the module docstring):
    :math:`\min_x \tfrac12 (y^*(x) - 1)^2 + \tfrac\rho2 x^2`, :math:`y^*(x) = \arg\min_y \tfrac\mu2 y^2 -
    \mu y\sin x = \sin x`.

    The solution solves :math:`\cos x(\sin x - 1) + \rho x = 0` just left of :math:`\pi/2` (Newton's
    method to machine precision; global for :math:`\rho > 0`, since :math:`\Phi \ge \tfrac\rho2 x^2`
    exceeds it in every other well). :math:`\mu` is the lower level's curvature: the penalty method's
    bias scales like :math:`\sigma/\mu`.
    """
    mu = _positive("mu", mu, "bilevel_toy")
    rho = _positive("rho", rho, "bilevel_toy", zero_ok=True)

    def f(p: torch.Tensor) -> torch.Tensor:
        x, y = p[..., 0], p[..., 1]
        u = y - 1.0
        return 0.5 * u * u + (0.5 * rho) * x * x

    def g(p: torch.Tensor) -> torch.Tensor:
        x, y = p[..., 0], p[..., 1]
        return (0.5 * mu) * y * y - mu * y * torch.sin(x)

    def phi(x: torch.Tensor) -> torch.Tensor:
        u = torch.sin(x[..., 0]) - 1.0
        return 0.5 * u * u + (0.5 * rho) * x[..., 0] * x[..., 0]

    def dphi(x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x) * (torch.sin(x) - 1.0) + rho * x

    def dphi_scalar(t: float) -> float:
        return math.cos(t) * (math.sin(t) - 1.0) + rho * t

    def d2phi_scalar(t: float) -> float:
        return math.cos(2.0 * t) + math.sin(t) + rho  # d/dt [cos t sin t - cos t] + rho

    x_star = _newton(dphi_scalar, d2phi_scalar, 1.3 if rho > 0 else math.pi / 2)
    s = math.sin(x_star)
    value = 0.5 * (s - 1.0) ** 2 + 0.5 * rho * x_star * x_star
    return BilevelFunction(
        name="bilevel_toy", title=f"Bilevel toy (mu = {mu:g}, rho = {rho:g})", dim=2,
        latex=(rf"f(x, y) = \tfrac12 (y - 1)^2 + \tfrac{{{rho:g}}}{{2}} x^2,\quad "
               rf"y \in \arg\min_y \tfrac{{{mu:g}}}{{2}} y^2 - {mu:g}\, y \sin x"),
        fn=f, bounds=Bounds((-3.0, -2.0), (3.0, 2.0)), minima=(Minimum((x_star, s), value),),
        start=(-1.2, 1.5), params=(("mu", mu), ("rho", rho)), upper_dim=1, lower_fn=g,
        solution_fn=torch.sin, value_fn=lambda x: -(0.5 * mu) * torch.sin(x[..., 0]) ** 2,
        hyperobjective_fn=phi, hypergradient_fn=dphi,
        description=("A bilevel problem in the plane: x is chosen so that the lower level's answer "
                     "y*(x) = sin x comes close to 1, so the solution sits on the curve y = sin x, not at "
                     "the minimum of f; a plain optimizer heads for that minimum instead."),
    )


def ridge_bilevel(*, seed: int = 0) -> BilevelFunction:
    r"""Learning the ridge penalty of a linear model on scikit-learn's diabetes set (see the module
    docstring): the lower level fits the weights on the training part (332 patients), the upper level
    scores them on the held-out part (110), :math:`x = \log\lambda` (``seed`` chooses the split).

    The solution minimizes :math:`\Phi` over :math:`x`: the sign change of :math:`\nabla\Phi` on a grid
    of :math:`[-12, 6]` with the smallest :math:`\Phi`, refined by bisection to machine precision.
    """
    data = datasets.diabetes(seed=seed)
    A, b = data.X_train, data.y_train[:, 0]
    V, c = data.X_test, data.y_test[:, 0]
    n_train, n_val, d = A.shape[0], V.shape[0], A.shape[1]
    S = A.T @ A / n_train
    r = A.T @ b / n_train
    s, Q = torch.linalg.eigh(S)
    qr = Q.T @ r

    def moved(x: torch.Tensor, *ts: torch.Tensor) -> list[torch.Tensor]:
        return [t.to(dtype=x.dtype, device=x.device) for t in ts]

    def f(p: torch.Tensor) -> torch.Tensor:
        Vt, ct = moved(p, V, c)
        e = p[..., 1:] @ Vt.T - ct
        return (0.5 / n_val) * (e * e).sum(-1)

    def g(p: torch.Tensor) -> torch.Tensor:
        At, bt = moved(p, A, b)
        y = p[..., 1:]
        e = y @ At.T - bt
        return (0.5 / n_train) * (e * e).sum(-1) + 0.5 * torch.exp(p[..., 0]) * (y * y).sum(-1)

    def inverse(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """:math:`(S + e^x I)^{-1} u` row by row (``u [B, d]``)."""
        st, Qt = moved(x, s, Q)
        return ((u @ Qt) / (st + torch.exp(x))) @ Qt.T

    def solution(x: torch.Tensor) -> torch.Tensor:
        st, Qt, qrt = moved(x, s, Q, qr)
        return (qrt / (st + torch.exp(x))) @ Qt.T

    def phi(x: torch.Tensor) -> torch.Tensor:
        return f(torch.cat([x, solution(x)], dim=-1))

    def value(x: torch.Tensor) -> torch.Tensor:
        return g(torch.cat([x, solution(x)], dim=-1))

    def dphi(x: torch.Tensor) -> torch.Tensor:
        Vt, ct = moved(x, V, c)
        y = solution(x)
        fy = ((y @ Vt.T - ct) @ Vt) / n_val
        return -torch.exp(x) * (y * inverse(x, fy)).sum(-1, keepdim=True)

    grid = torch.linspace(-12.0, 6.0, 721, dtype=torch.float64)[:, None]
    slope, values = dphi(grid)[:, 0], phi(grid)
    turns = [i for i in range(len(grid) - 1) if slope[i] < 0 <= slope[i + 1]]
    if not turns:
        raise RuntimeError("ridge_bilevel: no minimum of the validation error in log(lambda) in [-12, 6]")
    i = min(turns, key=lambda j: float(values[j]))
    lo, hi = float(grid[i, 0]), float(grid[i + 1, 0])
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if float(dphi(torch.tensor([[mid]], dtype=torch.float64))[0, 0]) < 0:
            lo = mid
        else:
            hi = mid
    x_star = torch.tensor([[0.5 * (lo + hi)]], dtype=torch.float64)
    y_star = solution(x_star)[0]
    best = Minimum((float(x_star[0, 0]), *y_star.tolist()), float(phi(x_star)[0]))
    return BilevelFunction(
        name="ridge_bilevel", title="Ridge penalty on diabetes (bilevel)", dim=1 + d,
        latex=(r"f(x, y) = \tfrac1{2m}\lVert V y - c\rVert^2,\quad y \in \arg\min_y \tfrac1{2n}\lVert A y - b"
               r"\rVert^2 + \tfrac{e^{x}}{2}\lVert y\rVert^2"),
        fn=f, bounds=Bounds((-8.0,) + (-1.5,) * d, (4.0,) + (1.5,) * d), minima=(best,),
        start=(2.0,) + (0.0,) * d, params=(("seed", seed),), upper_dim=1, lower_fn=g, solution_fn=solution,
        value_fn=value, hyperobjective_fn=phi, hypergradient_fn=dphi,
        description=(f"Hyperparameter learning as a bilevel problem: x = log of the ridge penalty, y the 10 "
                     f"weights fitted on {n_train} patients, scored on {n_val} held-out ones; the "
                     f"validation error is lowest at lambda = {math.exp(best.x[0]):.3g}."),
    )
