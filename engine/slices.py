r"""2-D slices of a high-dimensional loss: :math:`L(c + \alpha d_1 + \beta d_2)` on a grid.

Two planes (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"):

* ``pca_plane``: :math:`d_1, d_2` are the top two principal directions of the trajectory's
  offsets :math:`\theta_i - c` (orthonormal). It shows as much of the path as any plane can.
* ``filter_normalized_plane``: Gaussian directions, each filter (row of a weight matrix, output
  channel of a convolution) rescaled to the norm of the same filter of :math:`c`; 1-D
  parameters (biases) get direction 0, as in the paper. Scale-invariant networks then look alike
  at any weight scale.

Every trajectory point is projected onto the plane by least squares, and its distance from the
plane is reported: the picture hides that much of the path. The grid is evaluated in batched
chunks through the problem's ``loss(x: [B, P]) -> [B]`` (one vmapped call per chunk).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

BatchedLoss = Callable[[torch.Tensor], torch.Tensor]  # [B, P] -> [B]


@dataclass(frozen=True)
class Plane:
    center: np.ndarray  # [P]
    d1: np.ndarray  # [P]
    d2: np.ndarray  # [P]
    kind: str  # "pca" or "filter-normalized"
    explained: tuple[float, float] | None = None  # PCA: variance fraction along d1, d2


@dataclass(frozen=True)
class Projection:
    coords: np.ndarray  # [T, 2] (alpha, beta) of each point
    distance: np.ndarray  # [T] distance of each point from the plane
    relative: np.ndarray  # [T] distance / |theta_i - c| (0 where the point is the center)


@dataclass(frozen=True)
class Slice:
    alphas: np.ndarray  # [na]
    betas: np.ndarray  # [nb]
    loss: np.ndarray  # [nb, na]: loss[j, i] at alphas[i], betas[j]
    plane: Plane
    seconds: float
    evaluations: int
    note: str  # what was evaluated (data, mode), for the figure's caption


def pca_plane(trajectory: np.ndarray, center: np.ndarray | None = None) -> Plane:
    """Plane through ``center`` (default: the last point) spanned by the top-2 principal directions of
    ``trajectory - center`` ``[T, P]`` (SVD; needs two points that differ from the center)."""
    traj = np.asarray(trajectory, dtype=np.float64)
    c = traj[-1] if center is None else np.asarray(center, dtype=np.float64)
    offsets = traj - c
    if np.linalg.matrix_rank(offsets) < 2:
        raise ValueError("a PCA plane needs a trajectory that moved in at least two directions")
    _, s, vt = np.linalg.svd(offsets, full_matrices=False)
    var = s**2 / np.sum(s**2)
    return Plane(c, vt[0], vt[1], "pca", (float(var[0]), float(var[1])))


def filter_normalized_plane(center: np.ndarray, shapes: Sequence[tuple[int, ...]],
                            generator: torch.Generator) -> Plane:
    """Two random directions, each filter normalized to the norm of the matching filter of ``center``."""
    c = np.asarray(center, dtype=np.float64)
    dirs = []
    for _ in range(2):
        parts, offset = [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            w = c[offset:offset + n].reshape(shape)
            if len(shape) <= 1:
                d = np.zeros(shape)  # biases (and other 1-D parameters) stay fixed, as in the paper
            else:
                d = torch.randn(shape, generator=generator, dtype=torch.float64).numpy()
                rows_w = w.reshape(shape[0], -1)
                rows_d = d.reshape(shape[0], -1)
                scale = np.linalg.norm(rows_w, axis=1) / (np.linalg.norm(rows_d, axis=1) + 1e-12)
                d = (rows_d * scale[:, None]).reshape(shape)
            parts.append(d.reshape(-1))
            offset += n
        dirs.append(np.concatenate(parts))
    return Plane(c, dirs[0], dirs[1], "filter-normalized")


def project(plane: Plane, points: np.ndarray) -> Projection:
    """Least-squares coordinates of ``points`` ``[T, P]`` in the plane, and their distance from it."""
    basis = np.stack([plane.d1, plane.d2], axis=1)  # [P, 2]
    offsets = np.asarray(points, dtype=np.float64) - plane.center
    coords, *_ = np.linalg.lstsq(basis, offsets.T, rcond=None)
    coords = coords.T
    residual = np.linalg.norm(offsets - coords @ basis.T, axis=1)
    norms = np.linalg.norm(offsets, axis=1)
    relative = np.divide(residual, norms, out=np.zeros_like(residual), where=norms > 0)
    return Projection(coords, residual, relative)


def slice_grid(loss: BatchedLoss, plane: Plane, alphas: np.ndarray, betas: np.ndarray, *,
               chunk: int | None = None, dtype: torch.dtype = torch.float64,
               progress: Callable[[float], None] | None = None, note: str = "") -> Slice:
    """Evaluate ``loss`` at :math:`c + \\alpha d_1 + \\beta d_2` for the whole grid, ``chunk``
    points per batched call; ``progress(fraction)`` is called after every chunk.

    ``chunk=None`` measures: the first 32 points are evaluated as one batched call and the next 32
    one at a time, and the faster layout does the rest. Batching over grid points pays where
    per-call overhead dominates (small models or data); a network evaluated on its full data set is
    already one large matrix product per point, and stacking points only adds memory traffic.
    ``dtype=torch.float32`` is ~1.5x faster on CPU and ample for a picture."""
    t0 = time.perf_counter()
    c, d1, d2 = (torch.as_tensor(v, dtype=dtype) for v in (plane.center, plane.d1, plane.d2))
    A, B = np.meshgrid(np.asarray(alphas, dtype=np.float64), np.asarray(betas, dtype=np.float64))
    a = torch.as_tensor(A.reshape(-1), dtype=dtype)
    b = torch.as_tensor(B.reshape(-1), dtype=dtype)
    total = a.numel()
    out = torch.empty(total, dtype=dtype)

    def evaluate(start: int, size: int, batched: bool) -> float:
        """Fill ``out[start:start+size]``; return seconds per point."""
        t = time.perf_counter()
        stop = min(start + size, total)
        points = c + a[start:stop, None] * d1 + b[start:stop, None] * d2
        out[start:stop] = loss(points) if batched else torch.stack([loss(p[None])[0] for p in points])
        return (time.perf_counter() - t) / max(1, stop - start)

    probe = 32
    done = 0
    with torch.no_grad():
        if chunk is None and total <= 2 * probe:  # too small to be worth measuring
            batched, chunk = True, probe
        elif chunk is None:  # measure both layouts on real points, keep the faster
            batched = evaluate(0, probe, True) < evaluate(probe, probe, False)
            done, chunk = 2 * probe, probe
        else:
            batched = chunk > 1
            chunk = max(chunk, probe if not batched else 1)  # one at a time: progress every 32
        while done < total:
            evaluate(done, chunk, batched)
            done = min(done + chunk, total)
            if progress is not None:
                progress(done / total)
    return Slice(np.asarray(alphas), np.asarray(betas), out.reshape(A.shape).numpy(), plane,
                 time.perf_counter() - t0, total, note)


def grid_around(projection: Projection, n: int = 31, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """An ``n x n`` grid covering the projected trajectory and the center with a margin (re-gridded
    around the current point each time a slice is requested)."""
    pts = np.vstack([projection.coords, np.zeros((1, 2))])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = np.maximum(hi - lo, 1e-3 * max(1.0, float(np.abs(pts).max())))
    lo, hi = lo - margin * span, hi + margin * span
    return np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
