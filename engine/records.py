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
    ``surrogate_gradients`` are gradients of a cheap surrogate of the loss built in the model's
    output (target) space: a forward and backward pass through the model that never evaluates the
    loss (SSO's inner steps, :mod:`engine.targets`); ``gradients`` count gradients of the loss itself.
    """

    function_values: int = 0
    gradients: int = 0
    hvps: int = 0
    jvps: int = 0
    rankings: int = 0
    surrogate_gradients: int = 0

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
"""A row's status while it steps. Otherwise a status says what ended it and when:
``"diverged at step N: <reason>"`` (:data:`DIVERGED`; the rule is
:attr:`engine.run.RunConfig.divergence_factor`) or ``"stopped at step N: <message>"``
(:data:`STOPPED`: the lane's optimizer raised; the other lanes go on)."""
DIVERGED = "diverged"
STOPPED = "stopped"


def status_text(kind: str, step: int, reason: str) -> str:
    return f"{kind} at step {step}: {reason}"


def status_step(status: str) -> int | None:
    """The step at which a row stopped moving (None while it runs)."""
    if status == RUNNING:
        return None
    head = status.split(":", 1)[0]  # "<kind> at step N"
    return int(head.rsplit(" ", 1)[1])


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
    batch_size: int | None = None
    """Training samples this step's gradient saw (the full training set's size for full batch);
    None for problems without a data set (landscapes)."""
    diagnostics: Mapping[str, np.ndarray] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """What the lane's optimizer reported about this step (``OptimizerSpec.diagnostics``: Sophia's
    clipped fraction, a trust ratio, ...) and the run's own ``"clipped_fraction"`` when the lane
    clips, one entry per row. A lane whose single optimizer holds every row (a row-separable lane,
    or one optimizer over M tensor sets) reports one value for the whole lane, repeated in every
    row; a lane with one optimizer per start (closure-driven, per-trajectory) reports each row's own.
    NaN where a row has none (it did not step)."""
    compute_time: float = 0.0
    """Seconds this lane's own method has spent up to and including this step: its share of the
    batched gradient pass (split over lanes by rows), clipping, batch-size tests and its optimizer
    steps; never the instruments (probes, metrics, the gradient norm measured for a lane that does
    not use gradients, the loss recorded for one that does not compute it). ``wall_time`` is the
    whole run's."""

    def same_values(self, other: Record) -> bool:
        """Equal in every field but ``wall_time`` and ``compute_time`` (what a replay must
        reproduce)."""
        for f in dataclasses.fields(self):
            if f.name in ("wall_time", "compute_time"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "curvature":
                if (a is None) != (b is None) or (a is not None and not a.same_values(b)):
                    return False
                continue
            if f.name in ("metrics", "diagnostics"):
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
    for name in ("metrics", "diagnostics"):
        fields[name] = MappingProxyType({k: frozen_array(v) for k, v in fields.get(name, {}).items()})
    return Record(**fields)
