r"""Loss along the straight line between two parameter vectors: the instrument of linear mode
connectivity (Frankle et al. 2020; Entezari et al. 2022; Ito, Yamada & Kumagai 2024, "Analysis of
Linear Mode Connectivity via Permutation-Based Weight Matching").

For :math:`\theta(\alpha) = (1-\alpha)\,\theta_A + \alpha\,\theta_B`, :math:`\alpha \in [0, 1]`,
the **loss barrier** is the largest rise of the loss above the chord between the end points,

.. math::

    B = \max_{\alpha\in[0,1]}\ L(\theta(\alpha)) - \big[(1-\alpha)L(\theta_A) + \alpha L(\theta_B)\big],

measured here on ``k`` evenly spaced :math:`\alpha` (so :math:`B \ge 0`: the end points give 0).
Two minima are *linearly mode connected* when :math:`B \approx 0`.

Works for any :class:`~engine.problem.Problem`: the curves are its ``loss`` on the full data
(``batch=None``) and, where the problem has ``metrics`` (a network: train/test loss and accuracy),
those too, each as a plain ``[k]`` array a view draws against ``alphas``. Permutation symmetry and
weight matching, which need to know a network's layers, live in :mod:`landscapes.connectivity`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.problem import Problem

__all__ = ["LinearPath", "interpolate", "l2_distance", "linear_path", "loss_barrier"]


def _flat(problem: Problem, theta: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(theta, dtype=torch.float64).detach().cpu()
    if t.shape != (problem.dim,):
        raise ValueError(f"{what} must be a flat parameter vector of size {problem.dim} (the problem's dim), "
                         f"got shape {list(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} has non-finite entries")
    return t


def interpolate(theta_a: torch.Tensor, theta_b: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    r"""The points :math:`(1-\alpha)\theta_A + \alpha\theta_B`, ``[k, P]``, one per ``alpha``."""
    a = alphas.to(theta_a.dtype)[:, None]
    return (1.0 - a) * theta_a[None] + a * theta_b[None]


def loss_barrier(alphas: Any, values: Any) -> float:
    r""":math:`\max_\alpha L(\alpha) - [(1-\alpha)L(0) + \alpha L(1)]` over the given points (the first
    and last ``alphas`` must be 0 and 1)."""
    a, v = np.asarray(alphas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.shape != v.shape or len(a) < 2 or a[0] != 0.0 or a[-1] != 1.0:
        raise ValueError("loss_barrier needs matching 1-D alphas and values with alphas from 0 to 1")
    chord = (1.0 - a) * v[0] + a * v[-1]
    return float(np.max(v - chord))


def l2_distance(theta_a: Any, theta_b: Any) -> float:
    r""":math:`\lVert\theta_A - \theta_B\rVert_2` of two flat parameter vectors."""
    a = torch.as_tensor(theta_a, dtype=torch.float64)
    b = torch.as_tensor(theta_b, dtype=torch.float64)
    return float(torch.linalg.vector_norm(a - b))


@dataclass(frozen=True)
class LinearPath:
    r"""The curves along :math:`\theta(\alpha)`: ``alphas [k]`` and ``curves`` name -> ``[k]``
    (``"loss"``, the training objective on the full set, plus the problem's metrics such as
    ``"train_loss"``, ``"test_loss"``, ``"test_accuracy"``)."""

    alphas: np.ndarray
    curves: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def barriers(self) -> dict[str, float]:
        """:func:`loss_barrier` of every loss curve (names ending in ``loss``)."""
        return {name: loss_barrier(self.alphas, v) for name, v in self.curves.items()
                if name.endswith("loss")}


@torch.no_grad()
def linear_path(problem: Problem, theta_a: Any, theta_b: Any, k: int = 25, *, chunk: int = 32) -> LinearPath:
    r"""Evaluate ``problem`` at ``k`` evenly spaced points of the segment from ``theta_a`` (:math:`\alpha=0`)
    to ``theta_b`` (:math:`\alpha=1`), in float64, ``chunk`` points per batched call.

    >>> path = linear_path(problem, theta_a, theta_b, k=21)          # doctest: +SKIP
    >>> path.alphas, path.curves["test_loss"], path.barriers["test_loss"]  # doctest: +SKIP
    """
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= 10_000:
        raise ValueError(f"linear_path: k must be an integer in [2, 10000], got {k!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"linear_path: chunk must be a positive integer, got {chunk!r}")
    a, b = _flat(problem, theta_a, "theta_a"), _flat(problem, theta_b, "theta_b")
    alphas = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
    alphas[-1] = 1.0  # exactly the end point
    metrics = getattr(problem, "metrics", None)
    parts: dict[str, list[np.ndarray]] = {}
    for lo in range(0, k, chunk):
        x = interpolate(a, b, alphas[lo:lo + chunk])
        values = {"loss": problem.loss(x, None)}
        if metrics is not None:
            values.update(metrics(x))
        for name, v in values.items():
            parts.setdefault(name, []).append(v.detach().double().cpu().numpy())
    curves = {name: np.concatenate(v) for name, v in parts.items()}
    for name, v in curves.items():
        if v.shape != (k,):
            raise ValueError(f"{problem.name}: {name} gave shape {list(v.shape)} for {k} points")
    if not all(math.isfinite(float(v[0])) and math.isfinite(float(v[-1])) for v in curves.values()):
        raise ValueError("linear_path: the loss is not finite at an end point")
    return LinearPath(alphas=alphas.numpy(), curves=curves)
