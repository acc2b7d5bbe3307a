r"""Hyperparameter schedules, as data: a multiplier on a lane's base value of any hyperparameter.

A :class:`Schedule` maps a lane's step :math:`t` (the same ``t`` as its records; it restarts at 0
when the lane restarts) to a factor :math:`s(t) \in [0, 1]`; the live value is
:math:`h_t = h \cdot s(t)` with :math:`h` the lane's base value (what a person typed, checked
against the hyperparameter's range). Kinds, with horizon :math:`T` = ``steps``, end factor
:math:`a` = ``final`` and :math:`\tau = t - w` after a warm-up of :math:`w` = ``warmup`` steps:

* ``"constant"``: :math:`s = 1`;
* ``"step"``: :math:`s = \gamma^{\lfloor \tau / k\rfloor}` (:math:`k` = ``every``);
* ``"exponential"``: :math:`s = \gamma^{\tau}`;
* ``"cosine"``: :math:`s = a + (1 - a)\,\tfrac12\left(1 + \cos(\pi \min(\tau, T)/T)\right)`
  (Loshchilov & Hutter 2017, "SGDR", without restarts);
* ``"linear"``: :math:`s = a + (1 - a)\max(0, 1 - \tau/T)`: linear decay, to exactly 0 by default
  (the schedule Defazio et al. 2023 derive as worst-case optimal for the last iterate);
* ``"refined"``: the schedule refined from a first run's gradient-norm log (:meth:`Schedule.refined`),
  held as its values :math:`s(\tau)` (the last one after the log ends).

Any kind may start with a linear warm-up :math:`s(t) = t/w` for :math:`t < w` (from 0 at step 0 to
the schedule's first value at step :math:`w`). Factors never exceed 1, so a scheduled value lies
between 0 and its base: a range is for what a person types, and a schedule may anneal below its
low end down to exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

KINDS = ("constant", "step", "exponential", "cosine", "linear", "refined")
NORMS = ("l2", "l1")


@dataclass(frozen=True)
class Schedule:
    """A multiplier :math:`s(t)` on a hyperparameter's base value (see the module docstring).

    ``steps`` is the horizon :math:`T` of "cosine" and "linear" (after the warm-up); ``gamma`` the
    per-step ("exponential") or per-``every``-steps ("step") factor, in (0, 1]; ``final`` the end
    factor of "cosine" and "linear", in [0, 1]; ``values`` the factors of a "refined" schedule.
    """

    kind: str = "constant"
    steps: int = 1000
    warmup: int = 0
    gamma: float = 0.1
    every: int = 100
    final: float = 0.0
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("steps", "every"):
            _integer(name, getattr(self, name), low=1)
        _integer("warmup", self.warmup, low=0)
        for name in ("gamma", "final"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"schedule {name} must be a finite number, got {value!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"schedule gamma must be in (0, 1] (a schedule never raises a value above "
                             f"its base), got {self.gamma!r}")
        if not 0 <= self.final <= 1:
            raise ValueError(f"schedule final must be in [0, 1], got {self.final!r}")
        values = tuple(float(v) for v in self.values)
        if self.kind == "refined":
            if not values:
                raise ValueError("a refined schedule needs its values (build it with Schedule.refined)")
            if not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
                raise ValueError("refined schedule values must be finite factors in [0, 1]")
        elif values:
            raise ValueError(f"only a refined schedule carries values, not {self.kind!r}")
        object.__setattr__(self, "values", values)

    # -- the multiplier --------------------------------------------------------------------------
    def factor(self, step: int) -> float:
        """:math:`s(t)` at lane step ``step`` (>= 0)."""
        t = int(step)
        if t < self.warmup:
            return t / self.warmup
        tau = t - self.warmup
        kind = self.kind
        if kind == "constant":
            return 1.0
        if kind == "step":
            return float(self.gamma ** (tau // self.every))
        if kind == "exponential":
            return float(self.gamma ** tau)
        if kind == "cosine":
            cos = math.cos(math.pi * min(tau, self.steps) / self.steps)
            return self.final + (1 - self.final) * 0.5 * (1 + cos)
        if kind == "linear":
            return self.final + (1 - self.final) * max(0.0, 1 - tau / self.steps)
        return self.values[min(tau, len(self.values) - 1)]

    def value(self, step: int, base: float) -> float:
        """The live value :math:`h \\cdot s(t)` of a hyperparameter whose base value is ``base``."""
        return float(base) * self.factor(step)

    def curve(self, steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
        """Factors at steps ``0..steps-1`` (or at the given steps), for plotting."""
        ts = np.arange(steps) if isinstance(steps, (int, np.integer)) else np.asarray(steps, dtype=np.int64)
        return np.array([self.factor(int(t)) for t in ts], dtype=np.float64)

    @property
    def constant(self) -> bool:
        return self.kind == "constant" and self.warmup == 0

    # -- data ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Only what differs from the defaults, plus the kind (short links and logs)."""
        d: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "kind" and value != f.default:
                d[f.name] = list(value) if isinstance(value, tuple) else value
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any] | Schedule) -> Schedule:
        if isinstance(d, Schedule):
            return d
        if not isinstance(d, Mapping):
            raise ValueError(f"a schedule must be a mapping of its fields, got {d!r}")
        known = {f.name for f in fields(Schedule)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown schedule field(s) {', '.join(sorted(map(str, unknown)))}; "
                             f"known: {', '.join(sorted(known))}")
        d = dict(d)
        if "values" in d:
            d["values"] = tuple(d["values"])
        return Schedule(**d)

    def describe(self) -> str:
        warm = f"warm-up {self.warmup}, then " if self.warmup else ""
        text = {
            "constant": "constant",
            "step": f"x{self.gamma:g} every {self.every} steps",
            "exponential": f"x{self.gamma:g} per step",
            "cosine": f"cosine over {self.steps} steps to {self.final:g}",
            "linear": f"linear decay over {self.steps} steps to {self.final:g}",
            "refined": f"refined from a {len(self.values)}-step gradient-norm log",
        }[self.kind]
        return warm + text

    # -- refinement (Defazio et al. 2023) --------------------------------------------------------
    @staticmethod
    def refined(grad_norms: Sequence[float] | np.ndarray, *, smoothing: float = 0.0, norm: str = "l2",
                warmup: int = 0) -> Schedule:
        r"""The schedule refined from a first run's gradient norms (Defazio, Cutkosky, Mehta &
        Mishchenko 2023, "When, Why and How Much? Adaptive Learning Rate Scheduling by Refinement",
        Algorithms 1 and 2):

        .. math:: \hat G = \mathrm{median\_filter}(G, \tau T), \qquad
                  w_t = \hat G_t^{-p} \sum_{s=t+1}^{T-1} \hat G_s^{-p}, \qquad s(t) = w_t / \max_u w_u,

        with :math:`p = 2` for SGD-type methods and :math:`G_t = \lVert g_t\rVert_2` (``norm="l2"``),
        and :math:`p = 1` with :math:`G_t = \lVert g_t\rVert_1` for Adam-type (coordinate-wise)
        methods (``norm="l1"``); the caller passes the norms of the kind it chose. For a constant
        log, :math:`w_t \propto T - 1 - t`: linear decay to 0 at the log's last step, i.e.
        ``Schedule("linear", steps=T - 1)``. ``smoothing`` is :math:`\tau` (0: no filter); the median
        filter pads the log's end by reflection as the paper's code does (:func:`median_filter`).
        """
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        g = np.asarray(grad_norms, dtype=np.float64).reshape(-1)
        if g.size < 2:
            raise ValueError(f"refining a schedule needs a gradient-norm log of at least 2 steps, "
                             f"got {g.size}")
        if not (np.isfinite(g).all() and (g > 0).all()):
            raise ValueError("refining a schedule needs finite, positive gradient norms (a run whose "
                             "gradient vanished or diverged has no schedule to give)")
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing <= 1:
            raise ValueError(f"smoothing must be a number in [0, 1], got {smoothing!r}")
        smooth = median_filter(g, _filter_width(smoothing, g.size))
        weights = smooth ** (-2.0 if norm == "l2" else -1.0)
        tail = np.cumsum(weights[::-1])[::-1]  # tail[t] = sum_{s >= t} weights[s]
        w = weights * np.append(tail[1:], 0.0)  # w_t = weights_t * sum_{s > t} weights_s
        return Schedule("refined", warmup=warmup, values=tuple((w / w.max()).tolist()))


def _filter_width(smoothing: float, n: int) -> int:
    """The paper's odd filter width :math:`2\\lfloor \\lfloor \\tau n\\rfloor / 2\\rfloor + 1`."""
    return 2 * (int(smoothing * n) // 2) + 1


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Running median of odd ``width``, as the refinement paper's code applies it: the sequence's
    end is padded by reflection (``2 * width`` values), then the median is taken with the edge
    values repeated beyond both ends (scipy's ``mode="nearest"``), and the padding dropped."""
    x = np.asarray(x, dtype=np.float64)
    if width <= 1:
        return x.copy()
    if width % 2 == 0:
        raise ValueError(f"median filter width must be odd, got {width}")
    pad = 2 * width
    padded = np.pad(x, (0, pad), mode="reflect") if x.size > 1 else np.repeat(x, pad + 1)
    edged = np.pad(padded, (width // 2, width // 2), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(edged, width)
    return np.median(windows, axis=-1)[: x.size]


def _integer(name: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"schedule {name} must be an integer >= {low}, got {value!r}")


def schedules_from(d: Mapping[str, Any] | None) -> dict[str, Schedule]:
    """``{hyperparameter: Schedule}`` from plain data (or Schedules), dropping constant ones."""
    out = {}
    for name, s in (d or {}).items():
        sched = Schedule.from_dict(s)
        if not sched.constant:
            out[str(name)] = sched
    return out
