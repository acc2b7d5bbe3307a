r"""Two-player zero-sum games on simplices: :math:`\min_{x\in\Delta}\max_{y\in\Delta} f(x, y)` with

.. math::

    f(x, y) = x^\top A y + \tau \sum_i x_i \log x_i - \tau \sum_j y_j \log y_j ,

:math:`A` the row player's loss (:math:`x` minimizes), :math:`\tau \ge 0` an entropic
regularization (a quantal-response / KL-to-uniform regularizer, the :math:`\beta` of Nash mirror prox
with a uniform reference policy). For :math:`\tau > 0` the game is strongly convex-concave and its
unique equilibrium solves :math:`x^\star = \mathrm{softmax}(-Ay^\star/\tau)`,
:math:`y^\star = \mathrm{softmax}(A^\top x^\star/\tau)`.

A :class:`SimplexGame` is a :class:`~landscapes.games.GameProblem` over :math:`z = (x, y)` whose
players are two parameters (``param_shapes = ((m,), (n,))``): the entropic optimizers of
:mod:`engine.optimizers.mirror` step each parameter on its own simplex, and the run's ``ascent``
mask makes every method a descent-ascent. Its ``metrics`` are the game's curves, carried by the
run's records: the **duality gap**

.. math::

    \mathrm{gap}(x, y) = \max_{y'\in\Delta} f(x, y') - \min_{x'\in\Delta} f(x', y)
    = \tau\!\sum_i x_i\log x_i + \tau\,\mathrm{LSE}(A^\top x/\tau) + \tau\,\mathrm{LSE}(-Ay/\tau)
      + \tau\!\sum_j y_j\log y_j

(:math:`\max_j (A^\top x)_j - \min_i (Ay)_i` at :math:`\tau = 0`; zero exactly at the equilibrium)
and the **KL divergence to the equilibrium**
:math:`\mathrm{KL}(x^\star\Vert x) + \mathrm{KL}(y^\star\Vert y)`, the quantity that replicator
dynamics conserve on rock-paper-scissors and that multiplicative weights increases (Bailey &
Piliouras 2018).

Built-in games: :func:`rps_game` (rock-paper-scissors, equilibrium uniform for every :math:`\tau`)
and :func:`biased_rps_game` (rock loses double to paper: an asymmetric equilibrium, exact fractions
at :math:`\tau = 0`, :func:`regularized_equilibrium` for :math:`\tau > 0`). :func:`play` runs one
method through the engine and returns the arrays a view or a notebook draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from engine.problem import Bounds, Minimum
from landscapes.games import GameProblem
from landscapes.simplex import barycentric

__all__ = ["BIASED_RPS", "RPS", "GamePlay", "SimplexGame", "biased_rps_game", "play",
           "regularized_equilibrium", "rps_game"]

RPS = ((0.0, 1.0, -1.0), (-1.0, 0.0, 1.0), (1.0, -1.0, 0.0))
"""Rock-paper-scissors, the row player's loss: rows and columns are rock, paper, scissors; +1 to
the row player's loss when it loses."""
BIASED_RPS = ((0.0, 2.0, -1.0), (-1.0, 0.0, 1.0), (1.0, -1.0, 0.0))
"""Rock-paper-scissors where rock loses double to paper (row loss 2, column gain 1 for the reverse):
not symmetric, so the two players' equilibria differ."""

_EXACT = {  # tau = 0: the interior equilibria, from A y* = v 1 and A^T x* = v 1 (checked by an LP)
    RPS: ((1 / 3, 1 / 3, 1 / 3), (1 / 3, 1 / 3, 1 / 3)),
    BIASED_RPS: ((3 / 12, 4 / 12, 5 / 12), (4 / 12, 3 / 12, 5 / 12)),  # value 1/12
}
_START = ((0.5, 0.3, 0.2), (0.2, 0.3, 0.5))
MAX_TAU = 10.0
"""The largest regularization offered (landscapes.sizes declares it): beyond it the equilibrium is
uniform to within 1e-3 on these payoffs."""


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    return torch.xlogy(p, p).sum(-1)


@dataclass(frozen=True)
class SimplexGame(GameProblem):
    r"""A matrix game on :math:`\Delta^{m-1}\times\Delta^{n-1}` with entropic regularization ``tau``
    (see the module docstring). ``payoff`` is :math:`A` (``m`` rows), the equilibrium is
    ``minima[0].x`` (``equilibrium``), with the game's value as its ``value``."""

    payoff: tuple[tuple[float, ...], ...] = ()
    tau: float = 0.0

    geometry: ClassVar[str] = "simplex_game"
    """What a view reads to draw each player on its own triangle (:meth:`players`, then
    :func:`landscapes.simplex.barycentric` per player). No ``barycentric`` method: the game as a
    whole is not one picture in the plane (one point per player)."""

    @property
    def sizes(self) -> tuple[int, int]:
        """Actions of the row (minimizing) and column (maximizing) player."""
        return len(self.payoff), len(self.payoff[0])

    @property
    def param_shapes(self) -> tuple[tuple[int], tuple[int]]:
        """One parameter per player: the entropic optimizers step each on its own simplex."""
        m, n = self.sizes
        return (m,), (n,)

    def players(self, z: Any) -> tuple[Any, Any]:
        """``z [..., m + n]`` -> ``(x [..., m], y [..., n])`` (numpy arrays or tensors)."""
        m, _ = self.sizes
        return z[..., :m], z[..., m:]

    def random_starts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` starts ``[n, m + n]`` with each player drawn uniformly from its simplex
        (Dirichlet(1, ..., 1): normalized exponential variables), float64."""
        parts = []
        for k in self.sizes:
            e = -torch.log(torch.rand(n, k, generator=generator, dtype=torch.float64))
            parts.append(e / e.sum(dim=1, keepdim=True))
        return torch.cat(parts, dim=1)

    def _matrix(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.payoff, dtype=z.dtype, device=z.device)

    def duality_gap(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\max_{y'} f(x, y') - \min_{x'} f(x', y)` of each row of ``z [B, m + n]`` (closed form,
        see the module docstring): :math:`\ge 0` on the simplices, 0 only at the equilibrium."""
        x, y = self.players(z)
        a = self._matrix(z)
        row, col = x @ a, y @ a.T  # (A^T x)_j and (A y)_i
        if self.tau == 0.0:
            return row.amax(-1) - col.amin(-1)
        t = self.tau
        return (t * _xlogx(x) + t * torch.logsumexp(row / t, -1) + t * torch.logsumexp(-col / t, -1)
                + t * _xlogx(y))

    def kl_to_equilibrium(self, z: torch.Tensor) -> torch.Tensor:
        r""":math:`\mathrm{KL}(x^\star\Vert x) + \mathrm{KL}(y^\star\Vert y)` of each row of ``z``
        (NaN for a point off the simplices)."""
        star = torch.tensor(self.equilibrium, dtype=z.dtype, device=z.device)
        return (torch.xlogy(star, star) - torch.xlogy(star, z)).sum(-1)

    @torch.no_grad()
    def metrics(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The game's curves at each row of ``z [B, m + n]``: ``duality_gap`` and
        ``kl_to_equilibrium`` (what the run puts in its records' ``metrics``)."""
        return {"duality_gap": self.duality_gap(z), "kl_to_equilibrium": self.kl_to_equilibrium(z)}


# ------------------------------------------------------------------------------------- equilibria

def _newton(a: np.ndarray, tau: float, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Damped Newton on the optimality conditions :math:`\tau\log x + Ay = c_x\mathbf 1`,
    :math:`\tau\log y - A^\top x = c_y\mathbf 1`, :math:`\sum x = \sum y = 1` from ``(x, y)``; the
    step is halved until the residual falls and the point stays positive."""
    m, n = a.shape
    cx = cy = float(x @ a @ y)

    def residual(x: np.ndarray, y: np.ndarray, cx: float, cy: float) -> np.ndarray:
        return np.concatenate([tau * np.log(x) + a @ y - cx, tau * np.log(y) - a.T @ x - cy,
                               [x.sum() - 1.0, y.sum() - 1.0]])

    for _ in range(100):
        r = residual(x, y, cx, cy)
        size = np.linalg.norm(r)
        if size < 1e-15:
            break
        jac = np.zeros((m + n + 2, m + n + 2))
        jac[:m, :m] = tau * np.diag(1.0 / x)
        jac[:m, m:m + n] = a
        jac[:m, m + n] = -1.0
        jac[m:m + n, :m] = -a.T
        jac[m:m + n, m:m + n] = tau * np.diag(1.0 / y)
        jac[m:m + n, m + n + 1] = -1.0
        jac[m + n, :m] = 1.0
        jac[m + n + 1, m:m + n] = 1.0
        d = np.linalg.solve(jac, -r)
        step = 1.0
        while True:
            xn, yn = x + step * d[:m], y + step * d[m:m + n]
            if (xn > 0).all() and (yn > 0).all():
                new = np.linalg.norm(residual(xn, yn, cx + step * d[-2], cy + step * d[-1]))
                if new < (1.0 - 1e-4 * step) * size or new < 1e-15:
                    break
            step *= 0.5
            if step < 1e-14:
                raise RuntimeError(f"regularized_equilibrium: Newton stalled at tau={tau:g} "
                                   f"(residual {size:.3g})")
        x, y, cx, cy = xn, yn, cx + step * d[-2], cy + step * d[-1]
    return x, y


def regularized_equilibrium(payoff: Sequence[Sequence[float]], tau: float,
                            start: tuple[Sequence[float], Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    r"""The equilibrium of the :math:`\tau`-regularized game (:math:`\tau > 0`), float64: the unique
    :math:`(x^\star, y^\star)` with :math:`x^\star = \mathrm{softmax}(-Ay^\star/\tau)` and
    :math:`y^\star = \mathrm{softmax}(A^\top x^\star/\tau)`.

    Continuation from ``start``, the interior equilibrium of the unregularized game: Newton's method
    (:func:`_newton`) on the optimality conditions at :math:`\tau 2^{-40}, \tau 2^{-39}, \dots, \tau`,
    each from the previous solution; the conditions hold to ~1e-16 at the end."""
    a = np.asarray(payoff, dtype=np.float64)
    x, y = np.asarray(start[0], dtype=np.float64), np.asarray(start[1], dtype=np.float64)
    for k in range(40, -1, -1):
        x, y = _newton(a, tau * 2.0**-k, x, y)
    return x / x.sum(), y / y.sum()


# --------------------------------------------------------------------------------------- factories

def _check_tau(name: str, tau: object) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) \
            or not 0.0 <= tau <= MAX_TAU:
        raise ValueError(f"{name}: tau must be a number in [0, {MAX_TAU:g}], got {tau!r}")
    return float(tau)


def _matrix_tex(payoff: tuple[tuple[float, ...], ...]) -> str:
    rows = r" \\ ".join(" & ".join(f"{v:g}" for v in row) for row in payoff)
    return rf"A = \begin{{pmatrix}} {rows} \end{{pmatrix}}"


def _game(name: str, title: str, payoff: tuple[tuple[float, ...], ...], tau: float,
          lesson: str) -> SimplexGame:
    m, n = len(payoff), len(payoff[0])
    a = payoff

    def fn(z: torch.Tensor) -> torch.Tensor:
        # elementwise products and last-axis sums only, so a batch equals its rows bit for bit
        x, y = z[..., :m], z[..., m:]
        out = sum(a[i][j] * x[..., i] * y[..., j] for i in range(m) for j in range(n) if a[i][j] != 0.0)
        if tau:
            out = out + tau * _xlogx(x) - tau * _xlogx(y)
        return out

    exact = _EXACT[payoff]
    if tau == 0.0 or payoff == RPS:  # RPS: uniform for every tau, in closed form (see rps_game)
        x_star, y_star = np.array(exact[0]), np.array(exact[1])
    else:
        x_star, y_star = regularized_equilibrium(payoff, tau, exact)
    star = tuple(float(v) for v in (*x_star, *y_star))
    value = float(fn(torch.tensor([star], dtype=torch.float64))[0])
    reg = "" if tau == 0.0 else rf" + {tau:g}\sum_i x_i\log x_i - {tau:g}\sum_j y_j\log y_j"
    latex = (rf"f(\mathbf{{x}}, \mathbf{{y}}) = \mathbf{{x}}^\top A\,\mathbf{{y}}{reg},\quad "
             rf"\min_{{\mathbf{{x}}\in\Delta^2}}\max_{{\mathbf{{y}}\in\Delta^2}},\quad "
             + _matrix_tex(payoff))
    return SimplexGame(
        name=name, title=title if tau == 0.0 else f"{title} (tau = {tau:g})", dim=m + n, latex=latex, fn=fn,
        bounds=Bounds((0.0,) * (m + n), (1.0,) * (m + n)), minima=(Minimum(star, value),),
        start=(*_START[0], *_START[1]), params=(("tau", tau),), ascent=(False,) * m + (True,) * n,
        payoff=payoff, tau=tau, description=lesson)


def rps_game(*, tau: float = 0.0) -> SimplexGame:
    r"""Rock-paper-scissors, :math:`\min_x\max_y x^\top A y` (+ the entropic regularization
    :math:`\tau`) with :math:`A` = :data:`RPS`, one simplex per player.

    The equilibrium is uniform for every :math:`\tau \ge 0`: :math:`A\mathbf 1 = A^\top\mathbf 1 = 0`,
    so :math:`x = y = \mathbf 1/3` solves :math:`x = \mathrm{softmax}(-Ay/\tau)`,
    :math:`y = \mathrm{softmax}(A^\top x/\tau)`, and the solution is unique (strongly
    convex-concave for :math:`\tau > 0`; for :math:`\tau = 0` the only interior solution of
    :math:`Ay = v\mathbf 1`, :math:`A^\top x = v\mathbf 1`, and no pure or two-action profile is
    one). The value is 0 for every :math:`\tau` (the two entropy terms cancel at equal strategies).
    """
    tau = _check_tau("rps_game", tau)
    lesson = ("Rock-paper-scissors, one probability simplex per player: multiplicative weights spirals "
              "away from the uniform equilibrium (its KL to it grows) while optimistic weights and "
              "mirror prox converge; with tau > 0 every method converges linearly.")
    return _game("rps_game", "Rock-paper-scissors", RPS, tau, lesson)


def biased_rps_game(*, tau: float = 0.0) -> SimplexGame:
    r"""Rock-paper-scissors where rock loses double to paper (:data:`BIASED_RPS`), with the entropic
    regularization :math:`\tau`.

    At :math:`\tau = 0` the equilibrium is interior and exact: :math:`x^\star = (1/4, 1/3, 5/12)`,
    :math:`y^\star = (1/3, 1/4, 5/12)`, value :math:`1/12`, the solution of :math:`Ay^\star = v\mathbf 1`,
    :math:`A^\top x^\star = v\mathbf 1`, :math:`\sum = 1` (a linear program confirms it in the tests).
    For :math:`\tau > 0` it is :func:`regularized_equilibrium` (float64, to ~1e-16)."""
    tau = _check_tau("biased_rps_game", tau)
    lesson = ("A lopsided rock-paper-scissors (rock loses double to paper): the players' equilibria differ, "
              "(1/4, 1/3, 5/12) against (1/3, 1/4, 5/12), and the game is worth 1/12 to the column player.")
    return _game("biased_rps_game", "Biased rock-paper-scissors", BIASED_RPS, tau, lesson)


# ------------------------------------------------------------------------------------- a notebook view

@dataclass(frozen=True)
class GamePlay:
    r"""One method's play of a :class:`SimplexGame`, as plain arrays (``T`` steps, ``T + 1`` points):

    * ``steps [T+1]``; ``x [T+1, m]`` and ``y [T+1, n]``: the strategies (the last iterate);
    * ``x_2d``, ``y_2d`` ``[T+1, 2]``: the same on each player's triangle (3 actions; else None);
    * ``duality_gap``, ``kl_to_equilibrium`` ``[T+1]``: the game's curves at the last iterate;
    * ``average_gap [T+1]``: the duality gap of the running average
      :math:`(\bar x_t, \bar y_t) = \tfrac1{t+1}\sum_{s\le t}(x_s, y_s)` (what no-regret guarantees
      bound, :math:`O(1/(\eta T) + \eta)` for multiplicative weights);
    * ``equilibrium``: :math:`(x^\star, y^\star)` flat.
    """

    optimizer: str
    steps: np.ndarray
    x: np.ndarray
    y: np.ndarray
    x_2d: np.ndarray | None
    y_2d: np.ndarray | None
    duality_gap: np.ndarray
    kl_to_equilibrium: np.ndarray
    average_gap: np.ndarray
    equilibrium: np.ndarray


def play(game: SimplexGame, optimizer: str, steps: int, hyperparameters: Mapping[str, Any] | None = None,
         start: Sequence[float] | None = None) -> GamePlay:
    """Run ``optimizer`` on ``game`` for ``steps`` steps through :class:`engine.run.Run` (one lane,
    one start: the game's own or ``start``) and return its play as arrays (:class:`GamePlay`).

    >>> g = rps_game()
    >>> mw, mp = play(g, "exp_gradient", 500), play(g, "mirror_prox_entropic", 500)  # doctest: +SKIP
    >>> mw.kl_to_equilibrium[-1] > mw.kl_to_equilibrium[0] > mp.kl_to_equilibrium[-1]  # doctest: +SKIP
    True
    """
    from engine.run import LaneConfig, Run, RunConfig  # the catalog imports this module: keep it light

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"play: steps must be an integer >= 1, got {steps!r}")
    config = RunConfig(lanes=(LaneConfig(optimizer, dict(hyperparameters or {})),),
                       start=None if start is None else tuple(start), divergence_factor=None,
                       metrics_every=max(steps, 1))
    run = Run(game, config)
    points = [run.positions(0)[0]]
    for _ in range(steps):
        run.step(record=False)
        points.append(run.positions(0)[0])
    z = np.stack(points)
    average = np.cumsum(z, axis=0) / np.arange(1, len(z) + 1)[:, None]
    curves = game.metrics(torch.from_numpy(z))
    x, y = game.players(z)
    on_triangle = game.sizes == (3, 3)
    return GamePlay(
        optimizer=optimizer, steps=np.arange(len(z)), x=x, y=y,
        x_2d=barycentric(x) if on_triangle else None, y_2d=barycentric(y) if on_triangle else None,
        duality_gap=curves["duality_gap"].numpy(), kl_to_equilibrium=curves["kl_to_equilibrium"].numpy(),
        average_gap=game.duality_gap(torch.from_numpy(average)).numpy(),
        equilibrium=np.array(game.equilibrium))
