r"""The :class:`Problem` protocol: one interface for analytic landscapes and, later, networks.

A problem maps a batch of points to a batch of losses, ``loss(x: [B, d]) -> [B]``, so a race of
K optimizers x M starts evaluates every trajectory in one tensor call. Rows are independent
runs: callers **sum** the batch before differentiating (a mean would rescale every gradient by
``1/B``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Minimum:
    """A known minimizer ``x`` with its value ``f(x)`` (``is_global`` says whether it is the global one)."""

    x: tuple[float, ...]
    value: float
    is_global: bool = True


@dataclass(frozen=True)
class Bounds:
    """Axis-aligned box ``[low_i, high_i]`` for views and for drawing random starts."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.low) != len(self.high):
            raise ValueError("Bounds.low and Bounds.high must have the same length")
        for i, (lo, hi) in enumerate(zip(self.low, self.high, strict=True)):
            if not lo < hi:
                raise ValueError(f"Bounds axis {i}: low={lo} must be < high={hi}")

    def sample(self, n: int, generator: torch.Generator, *, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
        """``n`` points drawn uniformly from the box, shape ``[n, d]``."""
        lo = torch.tensor(self.low, dtype=dtype, device=device)
        hi = torch.tensor(self.high, dtype=dtype, device=device)
        u = torch.rand(n, len(self.low), generator=generator, dtype=dtype, device=generator.device)
        return lo + (hi - lo) * u.to(device)


@runtime_checkable
class Problem(Protocol):
    """What the engine needs from anything it optimizes.

    ``loss`` takes points ``x`` of shape ``[B, dim]`` (and the minibatch from ``sample_batch``,
    ``None`` for deterministic problems) and returns ``[B]`` losses; a run checks this when it starts.

    A problem with a training set (a network) may also offer ``n_train`` (its size),
    ``sample_batch(generator, batch_size)`` (a minibatch of another size: lanes with their own batch
    size) and ``per_sample_grads(theta, batch) -> [b, P]`` (the adaptive batch-size test).
    """

    name: str
    dim: int
    latex: str
    bounds: Bounds | None
    minima: tuple[Minimum, ...]

    def x0(self) -> torch.Tensor:
        """The default start point, shape ``[dim]`` (float64, cpu)."""
        ...

    def loss(self, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """Batched objective: ``[B, dim] -> [B]``."""
        ...

    def sample_batch(self, generator: torch.Generator) -> Any:
        """A minibatch for a stochastic problem, or ``None`` for a deterministic one."""
        ...


@dataclass(frozen=True)
class ProblemInfo:
    """Plain-data description of a problem (what a UI or an export needs, no tensors)."""

    name: str
    dim: int
    latex: str
    bounds: Bounds | None
    minima: tuple[Minimum, ...] = field(default_factory=tuple)


def describe(problem: Problem) -> ProblemInfo:
    return ProblemInfo(problem.name, problem.dim, problem.latex, problem.bounds, tuple(problem.minima))
