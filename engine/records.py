"""Immutable records a run yields: plain Python and read-only numpy, never tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
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
        # spelled out: a run adds counts every step of every lane, and the generic form over
        # ``dataclasses.fields`` costs more than a small network's optimizer step
        return OracleCounts(self.function_values + other.function_values, self.gradients + other.gradients,
                            self.hvps + other.hvps, self.jvps + other.jvps, self.rankings + other.rankings,
                            self.surrogate_gradients + other.surrogate_gradients)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def frozen_array(values: Any, dtype: Any = np.float64) -> np.ndarray:
    a = np.array(values, dtype=dtype, copy=True)
    a.flags.writeable = False
    return a


def read_only(a: np.ndarray) -> np.ndarray:
    """``a`` itself made read-only, without a copy: for arrays no one else writes (a run hands
    its records fresh arrays, or ones it replaces rather than changes)."""
    if a.flags.writeable:
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


def statuses(diverged_at: np.ndarray, reasons: Mapping[int, str], stopped: str | None) -> np.ndarray:
    """Per-row status texts (an object array) from a record's columns: ``"diverged at step N:
    <reason>"`` where ``diverged_at >= 0``, else ``stopped`` if the lane stopped, else "running".
    Python runs once per diverged row, never per running one."""
    out = np.full(len(diverged_at), RUNNING if stopped is None else stopped, dtype=object)
    for i in np.flatnonzero(diverged_at >= 0).tolist():
        out[i] = status_text(DIVERGED, int(diverged_at[i]), reasons[i])
    return out


def parse_statuses(texts: Sequence[str]) -> tuple[np.ndarray, dict[int, str], str | None]:
    """Inverse of :func:`statuses`: ``(diverged_at, reasons, stopped)`` from status texts."""
    diverged_at = np.full(len(texts), -1, dtype=np.int64)
    reasons: dict[int, str] = {}
    stopped = {t for t in texts if t.startswith(STOPPED)}
    if len(stopped) > 1:
        raise ValueError(f"a lane stops once, with one message; got {sorted(stopped)}")
    for i, text in enumerate(texts):
        if text.startswith(DIVERGED):
            head, why = text.split(": ", 1)
            diverged_at[i], reasons[i] = int(head.rsplit(" ", 1)[1]), why
        elif text != RUNNING and not text.startswith(STOPPED):
            raise ValueError(f"not a status: {text!r} (running, diverged at step N: ..., "
                             f"stopped at step N: ...)")
    return diverged_at, reasons, next(iter(stopped), None)


@dataclass(frozen=True)
class Record:
    """One lane (one optimizer over M starts) at one step.

    Everything describes iterate :math:`x_t`: ``loss`` is :math:`f(x_t)`, ``grad_norm`` is
    :math:`\\|\\nabla f(x_t)\\|`, ``update_norm`` is :math:`\\|x_{t+1} - x_t\\|` (the step taken
    from it), ``position`` is :math:`x_t`. Arrays have one entry per start (row).

    A row's fate is kept as columns (``diverged_at``, ``reasons``, ``stopped``), built without a
    Python object per row; :attr:`status` spells it out as text when asked.
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
    diverged_at: np.ndarray  # [M] int64: the step at which each row diverged, -1 while it runs
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
    reasons: Mapping[int, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Row -> why it diverged (``"loss not finite"``, ...), for the rows with ``diverged_at >= 0``."""
    stopped: str | None = None
    """``"stopped at step N: <message>"`` once the lane's optimizer raised (then the status of every
    row that had not diverged), else None."""

    @cached_property
    def status(self) -> tuple[str, ...]:
        """Per row: "running", "diverged at step N: <reason>" or "stopped at step N: <message>"
        (:data:`RUNNING`; made from the columns on first use)."""
        return tuple(statuses(self.diverged_at, self.reasons, self.stopped).tolist())

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
    """A :class:`Record` from plain values, copied into read-only arrays. The rows' fate comes as
    ``diverged_at`` (with ``reasons`` and ``stopped``), or as ``status`` texts."""
    fields["hyperparameters"] = MappingProxyType(dict(fields["hyperparameters"]))
    for name in ("loss", "grad_norm", "update_norm"):
        fields[name] = frozen_array(fields[name])
    if fields.get("position") is not None:
        fields["position"] = frozen_array(fields["position"])
    for name in ("metrics", "diagnostics"):
        fields[name] = MappingProxyType({k: frozen_array(v) for k, v in fields.get(name, {}).items()})
    if "status" in fields:
        fields["diverged_at"], fields["reasons"], fields["stopped"] = parse_statuses(fields.pop("status"))
    fields["diverged_at"] = frozen_array(fields["diverged_at"], np.int64)
    fields["reasons"] = MappingProxyType(dict(fields.get("reasons", {})))
    return Record(**fields)
