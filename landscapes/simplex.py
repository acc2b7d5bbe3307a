r"""Problems on the probability simplex :math:`\Delta^2 = \{p \in \mathbb{R}^3 : p \ge 0,\ \sum_i p_i = 1\}`.

Each is an :class:`~landscapes.analytic.AnalyticFunction` on :math:`\mathbb{R}^3` (the formula is
defined everywhere, so an unconstrained method can be raced against mirror descent and be seen
to leave the simplex) whose ``minima`` are the *constrained* minimizers. A
:class:`SimplexProblem` says so with ``geometry = "simplex"``; a view draws it in the plane with
:func:`barycentric`, which sends :math:`e_1, e_2, e_3` to the corners of an equilateral triangle.
``random_starts`` draws from the uniform distribution on the simplex, so a race's extra starts
lie on it too.

The constrained minimizers are exact: for the linear objective the vertex with the smallest
cost; for the quadratic one an interior point where the KKT conditions
:math:`Qp + c = \mu\mathbf 1` hold with dyadic numbers (checked in the tests).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from engine.problem import Bounds, Minimum
from landscapes.analytic import AnalyticFunction

__all__ = ["SIMPLEX_VERTICES_2D", "SimplexProblem", "barycentric", "simplex_linear", "simplex_quadratic"]

SIMPLEX_VERTICES_2D = ((0.0, 0.0), (1.0, 0.0), (0.5, math.sqrt(3.0) / 2.0))
"""Where :func:`barycentric` puts :math:`e_1, e_2, e_3` (an equilateral triangle of side 1)."""


def barycentric(p: Any) -> Any:
    r"""Points ``[..., 3]`` of the plane :math:`\sum_i p_i = 1` -> 2-D drawing coordinates ``[..., 2]``:
    :math:`(x, y) = \sum_i p_i V_i` with :math:`V_i` the :data:`SIMPLEX_VERTICES_2D`, i.e.
    :math:`x = p_2 + p_3/2`, :math:`y = \tfrac{\sqrt3}{2} p_3`. Takes and returns numpy arrays or
    torch tensors (same type, dtype and device)."""
    if isinstance(p, torch.Tensor):
        return torch.stack([p[..., 1] + 0.5 * p[..., 2], (math.sqrt(3.0) / 2.0) * p[..., 2]], dim=-1)
    p = np.asarray(p, dtype=np.float64)
    return np.stack([p[..., 1] + 0.5 * p[..., 2], (math.sqrt(3.0) / 2.0) * p[..., 2]], axis=-1)


class SimplexProblem(AnalyticFunction):
    """An analytic function whose domain is the probability simplex (see the module docstring)."""

    geometry: ClassVar[str] = "simplex"
    """What a view reads to draw the problem on the triangle (via :meth:`barycentric`)."""

    def barycentric(self, p: Any) -> Any:
        """:func:`barycentric`."""
        return barycentric(p)

    def random_starts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` points drawn uniformly from the simplex (Dirichlet(1, ..., 1): normalized
        exponential variables), ``[n, dim]`` float64."""
        e = -torch.log(torch.rand(n, self.dim, generator=generator, dtype=torch.float64))
        return e / e.sum(dim=1, keepdim=True)


_START = (0.6, 0.3, 0.1)
_BOX = Bounds(low=(0.0, 0.0, 0.0), high=(1.0, 1.0, 1.0))
_SIMPLEX_TEX = r",\quad \mathbf{p} \in \Delta^2"

_LINEAR_C = (0.75, 0.25, 0.5)
_Q = ((2.0, -1.0, 0.0), (-1.0, 2.0, -1.0), (0.0, -1.0, 2.0))
_QUAD_C = (-0.5, 0.5, 0.0)
_QUAD_P = (0.5, 0.25, 0.25)
_QUAD_F = 0.0625


def simplex_linear() -> SimplexProblem:
    r"""A linear cost on the simplex, :math:`f(p) = c^\top p` with :math:`c = (0.75, 0.25, 0.5)`.

    A linear function is minimized over the simplex at the vertex of smallest cost: :math:`e_2`,
    value 0.25.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        return 0.75 * x[..., 0] + 0.25 * x[..., 1] + 0.5 * x[..., 2]

    return SimplexProblem(
        name="simplex_linear", title="Linear cost on the simplex", dim=3,
        latex=r"f(\mathbf{p}) = 0.75\,p_1 + 0.25\,p_2 + 0.5\,p_3" + _SIMPLEX_TEX,
        fn=fn, bounds=_BOX, minima=(Minimum((0.0, 1.0, 0.0), _LINEAR_C[1]),), start=_START,
        description=("A linear cost over probability vectors: the best mix puts all mass on the cheapest "
                     "option, which exponentiated gradient approaches geometrically without ever leaving "
                     "the simplex."),
    )


def simplex_quadratic() -> SimplexProblem:
    r"""A convex quadratic on the simplex, :math:`f(p) = \tfrac12 p^\top Q p + c^\top p` with the
    path-graph Laplacian plus identity :math:`Q = \begin{pmatrix}2&-1&0\\-1&2&-1\\0&-1&2\end{pmatrix}`
    (eigenvalues :math:`2-\sqrt2, 2, 2+\sqrt2`) and :math:`c = (-0.5, 0.5, 0)`.

    The constrained minimizer is interior: :math:`p^\star = (0.5, 0.25, 0.25)`, where
    :math:`Qp^\star + c = 0.25\cdot\mathbf 1` (the KKT conditions with multiplier 0.25 and no active
    bound), value :math:`1/16`.
    """

    def fn(x: torch.Tensor) -> torch.Tensor:
        a, b, c = x[..., 0], x[..., 1], x[..., 2]
        quad = a * a + b * b + c * c - a * b - b * c  # 1/2 p^T Q p
        return quad - 0.5 * a + 0.5 * b

    return SimplexProblem(
        name="simplex_quadratic", title="Quadratic on the simplex", dim=3,
        latex=(r"f(\mathbf{p}) = p_1^2 + p_2^2 + p_3^2 - p_1 p_2 - p_2 p_3 - \tfrac12 p_1 + \tfrac12 p_2"
               + _SIMPLEX_TEX),
        fn=fn, bounds=_BOX, minima=(Minimum(_QUAD_P, _QUAD_F),), start=_START,
        description=("A convex quadratic over probability vectors with its constrained minimum inside the "
                     "triangle at (1/2, 1/4, 1/4): mirror descent converges linearly there, while plain "
                     "gradient descent drifts off the simplex."),
    )
