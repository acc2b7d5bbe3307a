"""Immutable records a run yields: plain Python and read-only numpy, never tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OracleCounts:
    """Oracle calls made *per trajectory* so far (every row of a lane makes the same calls).

    Counting per trajectory is what makes a fair x-axis: a zeroth-order method's two function
    values per step and a first-order method's one gradient land on the same scale.
    """

    function_values: int = 0
    gradients: int = 0
    hvps: int = 0
    jvps: int = 0
    rankings: int = 0

    def __add__(self, other: OracleCounts) -> OracleCounts:
        return OracleCounts(*(a + b for a, b in zip(dataclasses.astuple(self),
                                                    dataclasses.astuple(other), strict=True)))

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def frozen_array(values: Any, dtype: Any = np.float64) -> np.ndarray:
    a = np.array(values, dtype=dtype, copy=True)
    a.flags.writeable = False
    return a


RUNNING = "running"


@dataclass(frozen=True)
class Record:
    """One lane (one optimizer over M starts) at one step.

    Everything describes iterate :math:`x_t`: ``loss`` is :math:`f(x_t)`, ``grad_norm`` is
    :math:`\\|\\nabla f(x_t)\\|`, ``update_norm`` is :math:`\\|x_{t+1} - x_t\\|` (the step taken
    from it), ``position`` is :math:`x_t`. Arrays have one entry per start (row).
    """

    tick: int  # run-wide step counter (never resets): events are keyed by it
    lane: int
    optimizer: str
    step: int  # this lane's step t (restarts at 0 on reset)
    loss: np.ndarray  # [M]
    grad_norm: np.ndarray  # [M]
    update_norm: np.ndarray  # [M]
    position: np.ndarray | None  # [M, d] for problems of dim <= 3, else None
    hyperparameters: Mapping[str, Any]
    counts: OracleCounts
    status: tuple[str, ...]  # per row: "running" or "diverged at step N"
    wall_time: float  # seconds of compute spent by the run up to and including this step
    metrics: Mapping[str, np.ndarray] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Problem metrics at :math:`x_t` on the schedule ``RunConfig.metrics_every`` (e.g. full-set
    train/test loss and accuracy of a network), one entry per row; empty on other steps."""
    curvature: Any = None
    """An :class:`engine.instruments.Probe` of the first start when a probe was due, else None."""

    def same_values(self, other: Record) -> bool:
        """Equal in every field but ``wall_time`` (what a replay must reproduce)."""
        for f in dataclasses.fields(self):
            if f.name == "wall_time":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "curvature":
                if (a is None) != (b is None) or (a is not None and not a.same_values(b)):
                    return False
                continue
            if f.name == "metrics":
                if set(a) != set(b) or not all(np.array_equal(a[k], b[k], equal_nan=True) for k in a):
                    return False
                continue
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or not np.array_equal(a, b, equal_nan=True):
                    return False
            elif a != b:
                return False
        return True


def make_record(**fields: Any) -> Record:
    fields["hyperparameters"] = MappingProxyType(dict(fields["hyperparameters"]))
    for name in ("loss", "grad_norm", "update_norm"):
        fields[name] = frozen_array(fields[name])
    if fields.get("position") is not None:
        fields["position"] = frozen_array(fields["position"])
    fields["metrics"] = MappingProxyType({k: frozen_array(v) for k, v in fields.get("metrics", {}).items()})
    return Record(**fields)
