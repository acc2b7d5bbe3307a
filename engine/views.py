"""Numbers behind 2-D views: a problem evaluated on a grid, in one batched call."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from engine.problem import Bounds, Problem


def grid_values(problem: Problem, n: int = 200, bounds: Bounds | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs [n], ys [n], Z [n, n])`` with ``Z[i, j] = f(xs[j], ys[i])`` (image orientation)."""
    b = bounds or problem.bounds
    if problem.dim != 2 or b is None:
        raise ValueError(f"{problem.name}: a grid view needs a 2-D problem with bounds")
    xs = torch.linspace(b.low[0], b.high[0], n, dtype=torch.float64)
    ys = torch.linspace(b.low[1], b.high[1], n, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    with torch.no_grad():
        z = problem.loss(torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)).reshape(n, n)
    return xs.numpy(), ys.numpy(), z.numpy()


def to_plane(problem: Problem) -> Callable[[np.ndarray], np.ndarray] | None:
    """How positions ``[..., dim]`` are drawn in the plane: as they are for a 2-D problem, through
    the problem's own ``barycentric`` map for a simplex problem; None if it cannot be drawn."""
    if problem.dim == 2:
        return lambda p: np.asarray(p, dtype=np.float64)[..., :2]
    project = getattr(problem, "barycentric", None)
    if project is None:
        return None
    return lambda p: np.asarray(project(np.asarray(p, dtype=np.float64)))


def plane_grid(problem: Problem, n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, Bounds]:
    """``(xs, ys, Z, plane bounds)`` for drawing ``problem`` in the plane. A simplex problem is
    evaluated at the preimages of the grid points under its (affine) barycentric map, NaN outside
    the triangle."""
    if problem.dim == 2:
        xs, ys, z = grid_values(problem, n)
        return xs, ys, z, problem.bounds
    project = to_plane(problem)
    if project is None:
        raise ValueError(f"{problem.name}: no planar view of a {problem.dim}-D problem")
    corners = project(np.eye(problem.dim))  # [d, 2]: where the vertices are drawn
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    pad = 0.06 * (hi - lo).max()
    bounds = Bounds(tuple(float(v) for v in lo - pad), tuple(float(v) for v in hi + pad))
    xs = np.linspace(bounds.low[0], bounds.high[0], n)
    ys = np.linspace(bounds.low[1], bounds.high[1], n)
    xx, yy = np.meshgrid(xs, ys)
    # (x, y, 1) = [corners^T; 1^T] p: solve for p (the map is affine on the plane sum(p) = 1)
    a = np.vstack([corners.T, np.ones(problem.dim)])
    p = np.linalg.lstsq(a, np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)]), rcond=None)[0].T
    inside = (p >= -1e-12).all(axis=1)
    z = np.full(xx.size, np.nan)
    with torch.no_grad():
        z[inside] = problem.loss(torch.as_tensor(p[inside], dtype=torch.float64)).numpy()
    return xs, ys, z.reshape(n, n), bounds
