r"""Batch size as a controlled quantity of a lane, for problems with a training set (networks).

A :class:`BatchSize` says how many training samples a lane's gradient sees at each step:

* ``"constant"``: :math:`b_t = b`;
* ``"schedule"``: :math:`b_t = \min(b\,\rho^{\lfloor t/k\rfloor}, b_{\max})` (grow by ``growth``
  :math:`\rho` every ``every`` :math:`k` steps: Smith et al. 2018, "Don't Decay the Learning Rate,
  Increase the Batch Size");
* ``"norm_test"``: the adaptive rule of Lau, Liu & Kolar 2024, "AdAdaGrad: Adaptive Batch Size
  Schemes for Adaptive Gradient Methods" (the norm test of Byrd et al. 2012). With per-sample
  gradients :math:`\nabla\ell_i` on the step's batch :math:`\mathcal B_t` (:math:`b_t` samples) and
  their mean :math:`\bar g`, the test passes when

  .. math:: \frac{1}{b_t}\cdot\frac{1}{b_t - 1}\sum_{i\in\mathcal B_t}\lVert\nabla\ell_i - \bar g\rVert^2
            \le \vartheta^2 \lVert \bar g\rVert^2,

  and otherwise the next batch is :math:`b_{t+1} = \lceil \sum_i\lVert\nabla\ell_i - \bar g\rVert^2 /
  ((b_t - 1)\,\vartheta^2\lVert\bar g\rVert^2)\rceil` (never smaller than :math:`b_t`, at most
  :math:`b_{\max}`). The test runs every ``every`` steps on each start of the lane; the rows of a
  lane share their minibatches, so the lane takes the largest size any row asks for. Its per-sample
  gradients are part of the method's cost (they count in the lane's own time).

``max_size`` caps the size (``None``: the training set); a size at or above the training set's is
the full batch (gradient descent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from engine.noise import NormTest

KINDS = ("constant", "schedule", "norm_test")


@dataclass(frozen=True)
class BatchSize:
    """How many samples a lane's gradient sees per step (see the module docstring)."""

    kind: str = "constant"
    size: int = 32
    growth: float = 2.0
    every: int = 100
    theta: float = 0.5
    max_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"batch size kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        _integer("size", self.size, low=1 if self.kind != "norm_test" else 2)
        _integer("every", self.every, low=1)
        if self.max_size is not None:
            _integer("max_size", self.max_size, low=self.size)
        for name in ("growth", "theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"batch size {name} must be a finite number, got {value!r}")
        if self.growth < 1:
            raise ValueError(f"batch size growth must be >= 1, got {self.growth!r}")
        if not self.theta > 0:
            raise ValueError(f"norm test theta must be > 0, got {self.theta!r}")

    def cap(self, n_train: int) -> int:
        return min(n_train, self.max_size) if self.max_size is not None else n_train

    def initial(self, n_train: int) -> int:
        return min(self.size, self.cap(n_train))

    def scheduled(self, step: int, n_train: int) -> int:
        """:math:`b_t` of a "constant" or "schedule" size (a "norm_test" size is the run's state)."""
        if self.kind == "schedule":
            return min(math.floor(self.size * self.growth ** (step // self.every)), self.cap(n_train))
        return self.initial(n_train)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "kind" and value != f.default:
                d[f.name] = value
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any] | BatchSize | int) -> BatchSize:
        """From plain data; a bare integer is a constant size."""
        if isinstance(d, BatchSize):
            return d
        if isinstance(d, int) and not isinstance(d, bool):
            return BatchSize("constant", d)
        if not isinstance(d, Mapping):
            raise ValueError(f"a batch size must be an integer or a mapping of its fields, got {d!r}")
        known = {f.name for f in fields(BatchSize)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown batch size field(s) {', '.join(sorted(map(str, unknown)))}; "
                             f"known: {', '.join(sorted(known))}")
        return BatchSize(**dict(d))

    def describe(self) -> str:
        cap = f" up to {self.max_size}" if self.max_size is not None else ""
        if self.kind == "constant":
            return f"batch {self.size}"
        if self.kind == "schedule":
            return f"batch {self.size} x{self.growth:g} every {self.every} steps{cap}"
        return f"batch from {self.size} by the norm test (theta {self.theta:g}){cap}"


def norm_test_size(per_sample_grads: torch.Tensor, theta: float) -> int:
    r"""The batch size the norm test asks for, from per-sample gradients ``[b, P]`` (b >= 2):
    :math:`\lceil \sum_i\lVert\nabla\ell_i - \bar g\rVert^2 / ((b - 1)\vartheta^2\lVert\bar g\rVert^2)\rceil`
    (the test passes at the current size exactly when this is <= b). A zero mean gradient asks for
    no change (returns b). The statistic's one home is :class:`engine.noise.NormTest` (a probe
    reports it too)."""
    return NormTest.of(per_sample_grads).size(theta)


def _integer(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"batch size {name} must be an integer >= {low}, got {value!r}")
