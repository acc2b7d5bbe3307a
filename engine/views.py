"""Numbers behind 2-D views: a problem evaluated on a grid, in one batched call."""

from __future__ import annotations

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
