r"""Gradient clipping, as data applied around any optimizer.

A :class:`Clip` transforms the gradient (or a zeroth-order estimate of it) before the optimizer
sees it. Every row of a batched race is its own run, so norms and quantiles are taken per row:

* ``"norm"``: :math:`g \leftarrow g \cdot \min(1, c/\lVert g\rVert_2)` over all of a row's tensors
  (global-norm clipping, Pascanu et al. 2013, "On the difficulty of training recurrent neural
  networks"; ``torch.nn.utils.clip_grad_norm_``);
* ``"value"``: :math:`g_i \leftarrow \mathrm{clamp}(g_i, -c, c)`;
* ``"coordinate"``: the ``fraction`` of a row's coordinates with the largest magnitudes are clipped
  to the magnitude :math:`\tau` of the largest coordinate left alone, sign kept (coordinate-wise
  clipping, Pan & Li 2023, "Toward Understanding Why Adam Converges Faster Than SGD for
  Transformers").

:func:`clip_` reports the clipped fraction per row: for ``"norm"`` 1 where the row was rescaled
and 0 where not, otherwise the fraction of coordinates that changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

KINDS = ("norm", "value", "coordinate")


@dataclass(frozen=True)
class Clip:
    """How to clip: ``kind`` in :data:`KINDS`; ``threshold`` is :math:`c` for "norm" and "value";
    ``fraction`` in (0, 1) is the share of coordinates clipped by "coordinate"."""

    kind: str = "norm"
    threshold: float = 1.0
    fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"clip kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("threshold", "fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"clip {name} must be a finite number, got {value!r}")
        if self.kind != "coordinate" and not self.threshold > 0:
            raise ValueError(f"clip threshold must be > 0, got {self.threshold!r}")
        if self.kind == "coordinate" and not 0 < self.fraction < 1:
            raise ValueError(f"coordinate clipping needs a fraction in (0, 1), got {self.fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Clip:
        return Clip(**dict(d))

    def describe(self) -> str:
        if self.kind == "norm":
            return f"clip |g| at {self.threshold:g}"
        if self.kind == "value":
            return f"clip g_i to ±{self.threshold:g}"
        return f"clip the top {self.fraction:.0%} of |g_i|"


@torch.no_grad()
def clip_(tensors: Sequence[torch.Tensor], clip: Clip, batch_dims: int = 0) -> torch.Tensor:
    """Clip ``tensors`` in place. The first ``batch_dims`` (0 or 1) dimensions index rows, each
    clipped on its own; returns the clipped fraction per row (shape ``[M]``, or ``[]``)."""
    if batch_dims not in (0, 1):
        raise ValueError(f"batch_dims must be 0 or 1, got {batch_dims}")
    tensors = list(tensors)
    lead = tensors[0].shape[:batch_dims]
    flat = torch.cat([t.reshape(*lead, -1) for t in tensors], dim=-1)  # [M, P] or [P]
    n = flat.shape[-1]
    if clip.kind == "norm":
        norm = torch.linalg.vector_norm(flat, dim=-1)
        scale = torch.clamp(clip.threshold / norm, max=1.0)
        scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))
        for t in tensors:
            t.mul_(scale.reshape(*lead, *([1] * (t.dim() - batch_dims))))
        return (scale < 1).to(flat.dtype)
    if clip.kind == "value":
        changed = (flat.abs() > clip.threshold).sum(-1)
        for t in tensors:
            t.clamp_(-clip.threshold, clip.threshold)
        return changed.to(flat.dtype) / n
    k = math.floor(clip.fraction * n)  # coordinates clipped
    if k == 0:
        return torch.zeros(lead, dtype=flat.dtype, device=flat.device)
    tau = flat.abs().topk(k + 1, dim=-1).values[..., -1]  # the largest magnitude left alone
    changed = (flat.abs() > tau[..., None]).sum(-1)
    for t in tensors:
        bound = tau.reshape(*lead, *([1] * (t.dim() - batch_dims)))
        t.copy_(torch.maximum(torch.minimum(t, bound), -bound))
    return changed.to(flat.dtype) / n
