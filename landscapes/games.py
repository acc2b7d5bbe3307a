r"""Two-player zero-sum games :math:`\min_x \max_y f(x, y)` as problems.

A :class:`GameProblem` is an :class:`~landscapes.analytic.AnalyticFunction` over the joint vector
:math:`z = (x, y)` with an ``ascent`` mask marking :math:`y`'s coordinates. A run that sees the mask
makes every optimizer follow the descent field :math:`F(z) = (\nabla_x f, -\nabla_y f)`, so plain
``sgd`` is gradient descent-ascent (GDA). The solution is the saddle equilibrium, listed in
``minima`` (where views mark targets) and as ``equilibrium``; it is not a minimum of :math:`f`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.problem import Bounds, Minimum
from landscapes.analytic import AnalyticFunction

__all__ = ["GameProblem", "bilinear_game"]


@dataclass(frozen=True)
class GameProblem(AnalyticFunction):
    """An analytic min-max game: ``ascent[i]`` is True for the maximizing player's coordinates."""

    ascent: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        ascent = tuple(bool(a) for a in self.ascent)
        if len(ascent) != self.dim or not any(ascent) or all(ascent):
            raise ValueError(f"{self.name}: ascent must mark some but not all of the {self.dim} "
                             f"coordinates, got {self.ascent!r}")
        object.__setattr__(self, "ascent", ascent)

    @property
    def equilibrium(self) -> tuple[float, ...]:
        """The saddle equilibrium (the first listed minimum)."""
        return self.minima[0].x


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def bilinear_game(*, n: int = 1, coupling: float = 1.0, alpha: float = 0.0) -> GameProblem:
    r"""The bilinear game :math:`\min_x \max_y\ a\, x^\top y + \tfrac{\alpha}{2}\left(\lVert x\rVert^2
    - \lVert y\rVert^2\right)`, :math:`x, y \in \mathbb{R}^n` (:math:`a` = ``coupling``).

    The equilibrium is the origin (for :math:`a \ne 0` or :math:`\alpha > 0`). The field is linear,
    :math:`F(z) = Mz` with :math:`M = \begin{pmatrix}\alpha I & aI\\ -aI & \alpha I\end{pmatrix}`,
    eigenvalues :math:`\alpha \pm i a`. Gradient descent-ascent multiplies the distance to the
    origin by :math:`\sqrt{(1-\eta\alpha)^2 + \eta^2 a^2}` per step: at :math:`\alpha = 0` that is
    :math:`\sqrt{1 + \eta^2 a^2} > 1` for every step size, so GDA spirals out, while extragradient
    (factor :math:`\sqrt{(1 - \eta^2 a^2)^2 + \eta^2 a^2}` at :math:`\alpha = 0`) and optimistic
    GDA converge for small :math:`\eta`.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"bilinear_game: n must be an int >= 1, got {n!r}")
    a, reg = float(coupling), float(alpha)
    if not (math.isfinite(a) and math.isfinite(reg) and reg >= 0.0 and (a != 0.0 or reg > 0.0)):
        raise ValueError(f"bilinear_game: need finite coupling and alpha >= 0, not both 0; "
                         f"got coupling={coupling!r}, alpha={alpha!r}")
    dim = 2 * n

    def fn(z: torch.Tensor) -> torch.Tensor:
        x, y = z[..., :n], z[..., n:]
        return a * (x * y).sum(-1) + (0.5 * reg) * (x * x - y * y).sum(-1)

    ac, al = _number(a), _number(reg)
    coef = "" if a == 1.0 else ac + r"\,"
    reg_tex = "" if reg == 0.0 else rf" + \tfrac{{{al}}}{{2}}"
    if n == 1:
        latex = rf"f(x, y) = {coef}x y" + (reg_tex + r"\left(x^2 - y^2\right)" if reg else "")
        latex += r",\quad \min_x \max_y"
    else:
        norms = r"\left(\lVert\mathbf{x}\rVert^2 - \lVert\mathbf{y}\rVert^2\right)"
        latex = (rf"f(\mathbf{{x}}, \mathbf{{y}}) = {coef}\mathbf{{x}}^\top \mathbf{{y}}"
                 + (reg_tex + norms if reg else "")
                 + rf",\quad \min_{{\mathbf{{x}}}} \max_{{\mathbf{{y}}}},\ n = {n}")
    start = tuple([1.5] * n + [1.0] * n)
    return GameProblem(
        name="bilinear_game", title="Bilinear game" if not reg else f"Bilinear game (alpha = {al})",
        dim=dim, latex=latex, fn=fn, bounds=Bounds((-2.0,) * dim, (2.0,) * dim),
        minima=(Minimum((0.0,) * dim, 0.0),), start=start,
        params=(("n", n), ("coupling", a), ("alpha", reg)),
        ascent=(False,) * n + (True,) * n,
        description=("A min-max game whose saddle equilibrium is the origin (marked as the target; it is "
                     "not a minimum of f): gradient descent-ascent spirals away from it, extragradient "
                     "and optimistic methods spiral in."),
    )
