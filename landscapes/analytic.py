r"""Closed-form test functions as :class:`~engine.problem.Problem` objects.

An :class:`AnalyticFunction` wraps a batched torch function ``fn: [B, d] -> [B]`` with what a
view and a race need: a LaTeX formula, a box to draw, the known minima, a default start and a
one-sentence lesson. ``fn`` uses torch ops only, so it runs in float64 or float32 on any device
and autograd gives exact gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from engine.device import DEFAULT_DTYPE
from engine.problem import Bounds, Minimum

__all__ = ["AnalyticFunction"]


@dataclass(frozen=True)
class AnalyticFunction:
    r"""A deterministic landscape :math:`f:\mathbb{R}^d \to \mathbb{R}` given in closed form.

    ``fn`` maps ``[B, dim] -> [B]`` (rows are independent points). ``minima`` lists every known
    global minimum and, flagged ``is_global=False``, notable local ones; ``saddles`` lists
    notable saddle points. ``start`` defaults to the centre of ``bounds``. ``log_scale`` hints
    that a contour view should use :math:`\log(f - f^\star)` levels because values span decades.
    ``params`` records the factory keyword arguments (``(("dim", 5),)``) for export; ``title`` is a
    display name (defaults to ``name``).
    """

    name: str
    dim: int
    latex: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    bounds: Bounds
    minima: tuple[Minimum, ...] = ()
    start: tuple[float, ...] | None = None
    log_scale: bool = False
    description: str = ""
    saddles: tuple[tuple[float, ...], ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    title: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim < 1:
            raise ValueError(f"{self.name}: dim must be a positive int, got {self.dim!r}")
        if not self.title:
            object.__setattr__(self, "title", self.name)
        if len(self.bounds.low) != self.dim:
            raise ValueError(f"{self.name}: bounds have {len(self.bounds.low)} axes but dim={self.dim}")
        if self.start is None:
            centre = tuple(0.5 * (lo + hi) for lo, hi in zip(self.bounds.low, self.bounds.high, strict=True))
            object.__setattr__(self, "start", centre)
        start = tuple(float(v) for v in self.start)  # type: ignore[union-attr]
        if len(start) != self.dim or not all(math.isfinite(v) for v in start):
            raise ValueError(f"{self.name}: start must be {self.dim} finite numbers, got {self.start!r}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "minima", tuple(self.minima))
        for m in self.minima:
            if len(m.x) != self.dim:
                raise ValueError(f"{self.name}: minimum {m.x} has {len(m.x)} coordinates, "
                                 f"expected {self.dim}")
        object.__setattr__(self, "saddles", tuple(tuple(float(v) for v in s) for s in self.saddles))
        for s in self.saddles:
            if len(s) != self.dim:
                raise ValueError(f"{self.name}: saddle {s} has {len(s)} coordinates, expected {self.dim}")

    @property
    def min_value(self) -> float | None:
        """The global minimum value :math:`f^\\star`, or ``None`` when none is known (unbounded below)."""
        values = [m.value for m in self.minima if m.is_global]
        return min(values) if values else None

    @property
    def global_minima(self) -> tuple[Minimum, ...]:
        """The minima flagged ``is_global``."""
        return tuple(m for m in self.minima if m.is_global)

    def x0(self) -> torch.Tensor:
        """The default start point, shape ``[dim]``, float64 on cpu."""
        return torch.tensor(self.start, dtype=DEFAULT_DTYPE)

    def loss(self, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """``f(x)`` for ``x`` of shape ``[..., dim]``; returns shape ``[...]`` (``[B, dim] -> [B]``)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name}: expected points of shape [B, {self.dim}] (last axis = dim = {self.dim}), "
                f"got shape {list(x.shape)}"
            )
        if not x.is_floating_point():
            x = x.to(DEFAULT_DTYPE)
        if x.ndim == 2:
            return self.fn(x)
        lead = x.shape[:-1]
        return self.fn(x.reshape(-1, self.dim)).reshape(lead)

    __call__ = loss

    def sample_batch(self, generator: torch.Generator) -> None:
        """Deterministic problem: there is no minibatch."""
        return None
