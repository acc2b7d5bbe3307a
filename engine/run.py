r"""A :class:`Run`: K optimizers (lanes) x M start points on one problem, as one tensor program.

Each step evaluates every trajectory of every lane in a single batched call
``problem.loss(X) -> [K*M]`` and differentiates its **sum** (rows are independent runs; a mean
would rescale each gradient by :math:`1/(KM)`). Each lane then takes one ``optimizer.step()``.

Row independence needs care: an optimizer whose update of a coordinate depends only on that
coordinate's history (``spec.row_separable``: SGD, Adam, Lion, ...) steps one ``[M, d]`` tensor;
any other (AdamP, SGD-SaI: tensor-wide norms) gets M separate ``[d]`` tensors in one optimizer.

A min-max game declares ``problem.ascent``, a boolean mask of the maximizing coordinates; every
lane then steps along the descent field :math:`(\nabla_x f, -\nabla_y f)` (so SGD is gradient
descent-ascent). The mask is split like the parameters.

A lane is an optimizer plus what wraps it (:class:`LaneConfig`): **schedules** multiply the base
value of any hyperparameter by a factor of the lane's step (:mod:`engine.schedules`); the live
value is what the optimizer uses and what records carry, and it may go below a range's low end
down to 0 (the base is what is checked). **Clipping** (:mod:`engine.clipping`) acts on the gradient
each row's optimizer sees: the run clips ``.grad`` per row before ``optimizer.step()`` for
gradient-driven lanes, and hands the clip to a closure-driven optimizer (``optimizer.clip``),
which clips its own estimate. A **batch size** (:mod:`engine.batching`, networks only) says how
many samples the lane's gradient sees; lanes with the same batch size at the same tick see the
same minibatch (lanes on the problem's own size draw it from the run's generator, as always).

Optimizers that ask for other oracles (function values, rankings, JVPs, HVPs: see
:mod:`engine.oracles`) get one optimizer per start, stepped as ``optimizer.step(oracles)``; their
records count the oracle calls they made. A lane whose optimizer waits for a person's ranking
takes no step and yields no record until a :class:`engine.events.SubmitRanking` arrives;
``Run.awaiting`` holds its candidates.

**Instruments and timing.** Records carry the loss :math:`f(x_t)` of every row, measured by the
batched pass. Lanes whose optimizer uses gradients get their gradient from that pass; for lanes
that do not (function values, rankings, JVPs), the true gradient norm is instrumentation, measured
every ``RunConfig.grad_norm_every`` lane steps (NaN in the records between), and their recorded
loss comes from a forward pass without a graph. ``Record.compute_time`` is the lane's own method
only; the run's ``instrument_time`` holds the rest (probes, metrics, those measurements).

**Divergence.** A row diverges when its loss or gradient is not finite, or when its loss exceeds
``RunConfig.divergence_factor`` times its start (:math:`|f(x_t)| > c \max(|f(x_0)|, 1)`); it is
marked "diverged at step N: <reason>" and frozen where it was; the others continue. A lane whose
optimizer raises is **stopped** ("stopped at step N: <message>", also in ``Run.stopped``) at the
position it had; the other lanes go on.

Events change a live run between steps and are logged, so ``Run.replay(problem, config, log)``
reproduces the same records exactly on CPU.

**Cost.** A step costs what its tensor program costs plus a few whole-array reductions (the
divergence check); a step that yields a record adds two row norms and a copy of where it began,
and the record's columns are the step's own arrays, never a Python object per row (a row's status
text is made on demand). A step without a record copies nothing when the lane's optimizer is one of
torch's own (which raises, if at all, before it writes: ``_Lane.atomic``) and no row is frozen.
Adam-type lanes use torch's fused kernel (``RunConfig.fused``). A problem that takes its
parameters as they are (``loss_parts``: a network) is evaluated on the leaves directly, not on a
flattened copy, and a lane of one start on its leaves in their own shapes (``loss_row``).
``benchmarks/race.py`` measures all this against the least a plain program costs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from engine.batching import BatchSize, norm_test_size
from engine.cancel import checkpoint
from engine.clipping import Clip, clip_
from engine.curvature import HVP
from engine.device import make_generator, resolve_device
from engine.events import (
    AddLane,
    Event,
    LoggedEvent,
    Pause,
    RemoveLane,
    RequestProbe,
    Reset,
    Resume,
    SetBatchSize,
    SetClip,
    SetHyperparameter,
    SetProbes,
    SetSchedule,
    SubmitRanking,
    SwitchOptimizer,
)
from engine.instruments import Probe, ProbeConfig, probe, second_moment
from engine.oracles import HUMAN, AwaitingRanking, Oracles, Ranker, model_view, rank_by_value
from engine.problem import Problem
from engine.records import STOPPED, OracleCounts, Record, read_only, status_text
from engine.registry import OptimizerSpec, Oracle, get_spec
from engine.schedules import Schedule, schedules_from
from engine.seeds import minibatch_seed, trajectory_seed

POSITION_MAX_DIM = 3
"""Records carry positions for problems of at most this many dimensions (views draw them)."""
TRAJECTORY_CAP = 400
"""Snapshots kept per lane for larger problems (for landscape slices); beyond it, every other
snapshot is dropped, so the kept ones always span the whole run."""

_DTYPES = {"float64": torch.float64, "float32": torch.float32}

FUSABLE: tuple[type[torch.optim.Optimizer], ...] = (torch.optim.Adam, torch.optim.AdamW)
"""torch optimizers a run with ``fused`` steps with their fused kernel (on the CPU and CUDA). Not
the others: fused SGD equals its single-tensor path bit for bit but is no faster on the CPU, and
fused Adagrad differs from it by more than rounding."""


@dataclass(frozen=True)
class LaneConfig:
    """One lane: an optimizer with its base hyperparameters, and what wraps it.

    ``schedules``: hyperparameter name -> :class:`~engine.schedules.Schedule` (a multiplier on the
    base value; constant ones are dropped); ``clip``: a :class:`~engine.clipping.Clip` of the
    gradient (or of a zeroth-order estimate) before each step; ``batch_size``: a
    :class:`~engine.batching.BatchSize` for problems with a training set (``None``: the problem's
    own). Each also accepts its plain-data form (``to_dict``)."""

    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    clip: Clip | None = None
    batch_size: BatchSize | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))
        object.__setattr__(self, "schedules", MappingProxyType(schedules_from(self.schedules)))
        if self.clip is not None and not isinstance(self.clip, Clip):
            object.__setattr__(self, "clip", Clip.from_dict(self.clip))
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", BatchSize.from_dict(self.batch_size))

    def to_dict(self) -> dict[str, Any]:
        """Plain data; the wrappers only when set (short links and logs)."""
        d: dict[str, Any] = {"optimizer": self.optimizer, "hyperparameters": dict(self.hyperparameters)}
        if self.schedules:
            d["schedules"] = {k: s.to_dict() for k, s in self.schedules.items()}
        if self.clip is not None:
            d["clip"] = self.clip.to_dict()
        if self.batch_size is not None:
            d["batch_size"] = self.batch_size.to_dict()
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> LaneConfig:
        return LaneConfig(**dict(d))


@dataclass(frozen=True)
class RunConfig:
    """Everything that, with the problem and the event log, determines a run's records.

    Starts: row 0 is ``start`` (the problem's default start if None); rows 1..M-1 are drawn
    with the run's seeded generator: fresh initializations for a problem with ``random_starts``
    (networks), else uniformly from the problem's bounds.

    ``metrics_every``: how often (in a lane's steps) the problem's ``metrics`` (full-set train/test
    loss and accuracy of a network) are computed into the records. ``snapshot_every``: how often
    row 0's parameters are kept for a problem too big to carry positions in its records.

    ``divergence_factor`` :math:`c`: a row diverges when its loss or gradient is not finite or
    when :math:`|f(x_t)| > c\\,\\max(|f(x_0)|, 1)` (``None``: only when not finite). 10^6 sits far
    above any loss a converging or oscillating run reaches on the built-in landscapes and networks,
    and far below where float64 overflows.

    ``grad_norm_every``: for lanes whose optimizer does not use gradients (zeroth-order, ranking,
    forward-gradient), the true gradient norm is an instrument, measured every this many lane
    steps (NaN in the records between; ``None``: never).

    ``fused``: step ``torch.optim.Adam``/``AdamW`` lanes (Adam, AdamW, AMSGrad) with torch's fused
    kernel (:data:`FUSABLE`): the same update in one pass per tensor instead of about ten, 1.6-3x
    faster on the CPU, rounded differently in the last bit (about 1e-15 relative per step).
    ``False`` keeps torch's single-tensor arithmetic bit for bit.
    """

    lanes: tuple[LaneConfig, ...]
    start: tuple[float, ...] | None = None
    n_starts: int = 1
    seed: int = 0
    device: str = "auto"
    dtype: str = "float64"
    metrics_every: int = 10
    snapshot_every: int = 5
    probes: ProbeConfig | None = None
    divergence_factor: float | None = 1e6
    grad_norm_every: int | None = 10
    fused: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.probes, Mapping):
            object.__setattr__(self, "probes", ProbeConfig(**self.probes))
        lanes = tuple(ln if isinstance(ln, LaneConfig) else LaneConfig(**ln) for ln in self.lanes)
        object.__setattr__(self, "lanes", lanes)
        if self.start is not None:
            object.__setattr__(self, "start", tuple(float(v) for v in self.start))
        if not isinstance(self.n_starts, int) or self.n_starts < 1:
            raise ValueError(f"n_starts must be an integer >= 1, got {self.n_starts!r}")
        for name in ("metrics_every", "snapshot_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.grad_norm_every is not None and (not isinstance(self.grad_norm_every, int)
                                                 or isinstance(self.grad_norm_every, bool)
                                                 or self.grad_norm_every < 1):
            raise ValueError(f"grad_norm_every must be an integer >= 1 or None, got {self.grad_norm_every!r}")
        c = self.divergence_factor
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float))
                              or not math.isfinite(c) or c <= 1):
            raise ValueError(f"divergence_factor must be a finite number > 1 or None, got {c!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.fused, bool):
            raise ValueError(f"fused must be True or False, got {self.fused!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict can't copy a mappingproxy
        d["lanes"] = [ln.to_dict() for ln in self.lanes]
        d["probes"] = self.probes.to_dict() if self.probes is not None else None
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> RunConfig:
        d = dict(d)
        d["lanes"] = tuple(LaneConfig.from_dict(ln) for ln in d["lanes"])
        if d.get("start") is not None:
            d["start"] = tuple(d["start"])
        return RunConfig(**d)


def _split(flat: torch.Tensor, shapes: Sequence[tuple[int, ...]] | None) -> list[torch.Tensor]:
    """``[..., P]`` -> one tensor ``[..., *shape]`` per parameter (``[flat]`` when no shapes)."""
    if shapes is None:
        return [flat]
    lead = flat.shape[:-1]
    sizes = [int(np.prod(s)) for s in shapes]
    return [t.reshape(*lead, *s) for t, s in zip(flat.split(sizes, dim=-1), shapes, strict=True)]


def _flatten(tensors: Sequence[torch.Tensor], n_lead: int) -> torch.Tensor:
    """Inverse of :func:`_split`: concatenate parameters over their trailing dimensions."""
    if len(tensors) == 1 and tensors[0].dim() == n_lead + 1:
        return tensors[0]
    if n_lead == 1:
        return torch.cat([t.flatten(1) if t.dim() > 1 else t[:, None] for t in tensors], dim=-1)
    return torch.cat([t.reshape(*t.shape[:n_lead], -1) for t in tensors], dim=-1)


def _column(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """A record's read-only float64 array over this tick's fresh values (a view when they are
    float64 on the CPU already, else a copy). Tensors come without a graph."""
    if isinstance(values, torch.Tensor):
        values = values.numpy() if values.device.type == "cpu" else values.cpu().numpy()
    if values.dtype != np.float64:
        values = values.astype(np.float64)
    return read_only(values)


_NONE: Mapping[str, np.ndarray] = MappingProxyType({})
_ONE_GRADIENT = OracleCounts(function_values=1, gradients=1)  # what the batched pass gives a lane


def _columns(values: Mapping[str, torch.Tensor | np.ndarray]) -> Mapping[str, np.ndarray]:
    return MappingProxyType({k: _column(v) for k, v in values.items()}) if values else _NONE


def _total(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of every entry of ``tensors`` (non-finite when any entry is), without concatenating them."""
    total = tensors[0].sum()
    for t in tensors[1:]:
        total = total + t.sum()
    return total


def _norms(rows: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row of ``[M, P]`` (``Tensor.norm(dim=-1)`` without its wrapper)."""
    return torch.linalg.vector_norm(rows, dim=-1)


def _fuse(optimizer: torch.optim.Optimizer) -> None:
    """Switch a fresh optimizer of a :data:`FUSABLE` type (exactly: not a subclass, whose step
    may differ) to torch's fused kernel, where torch has it for its tensors."""
    if type(optimizer) not in FUSABLE or optimizer.state:
        return
    groups = optimizer.param_groups
    if any(g.get("differentiable") or g.get("foreach") for g in groups) or not all(
            p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64)
            for g in groups for p in g["params"]):
        return
    for g in groups:
        g["fused"] = True


def _uses_gradient(spec: OptimizerSpec) -> bool:
    """Whether the lane's method consumes the gradient the batched pass computes (first-order,
    look-ahead and HVP-driven lanes), as opposed to function values, rankings or JVPs."""
    return not spec.closure_driven or spec.oracle in (Oracle.HVPS, Oracle.GRADIENTS)


def _check_schedules(spec: OptimizerSpec, schedules: Mapping[str, Schedule]) -> None:
    for name in schedules:
        hp = spec.hyperparameter(name)  # unknown names raise with the known ones
        if hp.kind != "float":
            what = {"int": "an integer", "bool": "True or False", "choice": "a choice"}[hp.kind]
            raise ValueError(f"{spec.name}: only real-valued hyperparameters can be scheduled; "
                             f"{name} is {what}")


class _Lane:
    """One optimizer over the M start rows.

    Leaves are laid out for the optimizer, not for the loss: a problem that declares
    ``param_shapes`` (a network) gets one tensor per layer parameter, so layer-aware optimizers
    (AdamP) see real layers; a row-separable optimizer holds each of them as ``[M, *shape]``, any
    other optimizer holds M separate sets. ``points()`` flattens them back to ``[M, P]``.
    """

    def __init__(self, lane_id: int, spec: OptimizerSpec, config: LaneConfig,
                 starts: torch.Tensor, shapes: Sequence[tuple[int, ...]] | None, seed: int,
                 fused: bool = False) -> None:
        self.id = lane_id
        self.spec = spec
        self.shapes = shapes
        self.seed = seed
        self.fused = fused
        self._scratch: torch.Tensor | None = None
        self.values = spec.validate(config.hyperparameters)
        """Base values (what a person set); scheduled ones are multiplied before each step."""
        _check_schedules(spec, config.schedules)
        self.schedules: dict[str, Schedule] = dict(config.schedules)
        self.clip = config.clip
        self.batch = config.batch_size
        self.n_rows = starts.shape[0]
        self.restart(starts)

    def restart(self, starts: torch.Tensor) -> None:
        """Fresh optimizer state at ``starts``: step 0, counts, statuses and schedules restart."""
        self._install(*self._build(self.spec, starts, self.values))
        self.step = 0
        self.counts = OracleCounts()
        self.diverged_at = read_only(np.full(self.n_rows, -1, dtype=np.int64))
        """The step at which each row diverged (-1: it runs). Replaced, never changed in place, so
        records share it (and ``reasons``) without a copy."""
        self.reasons: Mapping[int, str] = MappingProxyType({})  # diverged row -> why
        self.frozen: torch.Tensor | None = None  # ``diverged_at >= 0`` as a mask, None while no row is
        self.limit: torch.Tensor | None = None  # divergence threshold per row, set at step 0
        self.lowest_limit = math.inf  # its smallest entry
        self.error: str | None = None
        self.error_step = -1
        self.own_time = 0.0
        self.clipped: np.ndarray | None = None
        self.batch_now: int | None = None  # a norm-test lane's current size (set on first use)
        self.apply_schedules()

    def _build(self, spec: OptimizerSpec, points: torch.Tensor, values: Mapping[str, Any]
               ) -> tuple[bool, list[list[torch.Tensor]], list[torch.optim.Optimizer]]:
        """Leaves and optimizers for ``spec`` at ``points``, checked, without touching the lane."""
        points = points.detach()
        separable = spec.row_separable and not spec.closure_driven
        """The M rows live in one ``[M, ...]`` tensor per parameter (else one set per row)."""
        if separable:
            rows = [[t.clone().requires_grad_(True) for t in _split(points, self.shapes)]]
        else:
            rows = [[t.clone().requires_grad_(True) for t in _split(row, self.shapes)] for row in points]
        params = [p for row in rows for p in row]
        if spec.closure_driven or spec.per_trajectory:  # one optimizer per start
            optimizers = [spec.build(row, values, seed=trajectory_seed(self.seed, self.id, i))
                          for i, row in enumerate(rows)]
        else:
            optimizers = [spec.build(params, values, seed=trajectory_seed(self.seed, self.id, 0))]
        self._check_clip(spec, optimizers, self.clip)
        if self.fused:
            for opt in optimizers:
                _fuse(opt)
        return separable, rows, optimizers

    def _install(self, separable: bool, rows: list[list[torch.Tensor]],
                 optimizers: list[torch.optim.Optimizer]) -> None:
        self.separable, self.rows, self.optimizers = separable, rows, optimizers
        self.params = [p for row in rows for p in row]
        self.uses_gradient = _uses_gradient(self.spec)
        self.atomic = not self.spec.closure_driven and all(
            type(opt).__module__.startswith("torch.optim.") for opt in optimizers)
        """Its optimizers are torch's own, which check what they are given before they write: one
        that raises leaves the leaves as they were, so a step needs no copy of where it began."""
        self._twins: list[torch.Tensor] | None = None
        self.dense_grads = any(g.get("fused") for opt in optimizers for g in opt.param_groups)
        """Its gradients must be laid out as its (contiguous) leaves: torch's fused CPU Adam reads
        a gradient with other strides wrongly (torch 2.13: wrong steps, no error), and gradients
        split from a flat ``[M, P]`` one have other strides."""
        self._hand_clip()

    @staticmethod
    def _check_clip(spec: OptimizerSpec, optimizers: Sequence[torch.optim.Optimizer],
                    clip: Clip | None) -> None:
        if clip is None or not spec.closure_driven:
            return
        if not all(hasattr(opt, "clip") for opt in optimizers):
            raise ValueError(f"{spec.display_name} cannot be clipped: it builds its own step from "
                             f"{spec.oracle.value} and does not take a clip")

    def _hand_clip(self) -> None:
        """A closure-driven optimizer clips its own estimate: it holds the lane's clip."""
        if self.spec.closure_driven:
            for opt in self.optimizers:
                if hasattr(opt, "clip"):
                    opt.clip = self.clip

    def set_clip(self, clip: Clip | None) -> None:
        self._check_clip(self.spec, self.optimizers, clip)
        self.clip = clip
        self.clipped = None
        self._hand_clip()

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The (first) optimizer: what reads of live hyperparameters and state look at."""
        return self.optimizers[0]

    def set_hyperparameter(self, name: str, value: Any) -> Any:
        """Set a base value; on a scheduled hyperparameter the live value is base x factor."""
        if name in self.schedules:
            value = self.spec.hyperparameter(name).check(value, self.spec.name)
            self.values[name] = value
            self.apply_schedules()
            return value
        for opt in self.optimizers:
            value = self.spec.apply(opt, name, value)
        self.values[name] = value
        return value

    def set_schedule(self, name: str, schedule: Schedule | None) -> None:
        new = dict(self.schedules)
        if schedule is None or schedule.constant:
            new.pop(name, None)
        else:
            new[name] = schedule
        _check_schedules(self.spec, new)
        self.schedules = new
        if name not in new:  # back to the base value
            for opt in self.optimizers:
                self.spec.apply(opt, name, self.values[name])
        self.apply_schedules()

    def apply_schedules(self) -> None:
        """Write each scheduled value for the lane's next step into its optimizers."""
        for name, sched in self.schedules.items():
            value = sched.value(self.step, self.values[name])
            for opt in self.optimizers:
                self.spec.write(opt, name, value)  # unchecked: a schedule may go below the range

    def switch(self, spec: OptimizerSpec, config: LaneConfig, keep: tuple[bool, bool]) -> None:
        """New optimizer (fresh state) from the current positions; ``keep`` says whether the
        lane's clip and batch size stay (else they come from ``config``). Nothing changes if the
        new configuration is refused."""
        values = spec.validate(config.hyperparameters)
        _check_schedules(spec, config.schedules)
        clip = self.clip if keep[0] else config.clip
        old_clip, self.clip = self.clip, clip
        try:
            built = self._build(spec, self.points(), values)
        finally:
            self.clip = old_clip
        self.spec, self.values, self.schedules, self.clip = spec, values, dict(config.schedules), clip
        if not keep[1]:
            self.set_batch(config.batch_size)
        self._install(*built)
        self.clipped = None
        self.apply_schedules()

    def set_batch(self, batch: BatchSize | None) -> None:
        self.batch = batch
        self.batch_now = None

    def points(self) -> torch.Tensor:
        """Current positions ``[M, P]`` (differentiable through the leaves)."""
        if self.separable:
            return _flatten(self.rows[0], 1)
        return torch.stack([_flatten(row, 0) for row in self.rows])

    @torch.no_grad()
    def set_points(self, points: torch.Tensor) -> None:
        """Put the leaves at ``points [M, P]`` (a stopped lane goes back where its step began)."""
        if self.separable:
            for p, v in zip(self.rows[0], _split(points, self.shapes), strict=True):
                p.copy_(v)
        else:
            for row, x in zip(self.rows, points, strict=True):
                for p, v in zip(row, _split(x, self.shapes), strict=True):
                    p.copy_(v)

    def scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A buffer shaped like ``like`` that the lane reuses from step to step: a fresh ``[M, P]``
        tensor per step costs, at a million rows, more in page faults than its copy."""
        buf = self._scratch
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._scratch = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    def parts(self) -> list[torch.Tensor]:
        """Current positions as one ``[M, *shape]`` tensor per parameter (differentiable through
        the leaves): what a problem's ``loss_parts`` takes."""
        if self.separable:
            return self.rows[0]
        return [torch.stack(p) for p in zip(*self.rows, strict=True)]

    def twins(self) -> list[torch.Tensor] | None:
        """One start's leaves again in their own shapes, sharing storage (and version counters) with
        the ``[1, *shape]`` ones the optimizer holds (None: several starts, or one leaf): a problem
        with ``loss_row`` (a network) is differentiated on these, whose backward pass has no view
        per parameter (a digits-MLP minibatch gradient costs ~20% less, benchmarks/race.py).
        Made again if an optimizer gave a leaf new storage (``p.data = ...``)."""
        if not self.separable or self.n_rows != 1 or len(self.params) < 2:
            return None
        twins = self._twins
        if twins is None or any(t.data_ptr() != p.data_ptr()
                                for t, p in zip(twins, self.params, strict=True)):
            self._twins = [p.detach()[0].requires_grad_(True) for p in self.params]
        return self._twins

    def flat_grads(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Gradients of this lane's leaves (in ``self.params`` order) as ``[M, P]``."""
        if self.separable:
            return _flatten(grads, 1)
        n = len(self.rows[0])
        return torch.stack([_flatten(grads[i * n:(i + 1) * n], 0) for i in range(self.n_rows)])

    @property
    def stopped(self) -> str | None:
        """The status of its rows that had not diverged once its optimizer raised, else None."""
        return None if self.error is None else status_text(STOPPED, self.error_step, self.error)

    def frozen_list(self) -> list[bool]:
        """Whether each row is frozen (diverged), as Python booleans (for per-row paths)."""
        return (self.diverged_at >= 0).tolist()


class _Eval:
    """One lane's share of this tick's batched pass. ``x``: the points ``[M, P]`` it was taken at,
    flattened on first use when the pass took the leaves as they are (read it before the step)."""

    __slots__ = ("_lane", "_x", "batch", "f", "grads", "size")

    def __init__(self, x: torch.Tensor | _Lane, f: torch.Tensor, grads: list[torch.Tensor] | None, batch: Any,
                 size: int | None) -> None:
        self._x, self._lane = (None, x) if isinstance(x, _Lane) else (x, None)
        self.f, self.grads, self.batch, self.size = f, grads, batch, size

    @property
    def x(self) -> torch.Tensor:
        if self._x is None:
            with torch.no_grad():  # (flattening several leaves builds no graph)
                self._x = self._lane.points()
        return self._x


class Run:
    """K lanes x M starts stepping ``problem`` together; see the module docstring."""

    def __init__(self, problem: Problem, config: RunConfig) -> None:
        self.problem = problem
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = _DTYPES[config.dtype]
        self._generator = make_generator(config.seed)  # CPU: same stream on every device
        self.starts = self._make_starts()
        self._check_problem()
        shapes = getattr(problem, "param_shapes", None)
        ascent = getattr(problem, "ascent", None)
        self._ascent = (None if ascent is None
                        else torch.as_tensor(ascent, dtype=torch.bool, device=self.device))
        """For a min-max game (a problem with an ``ascent`` mask over its coordinates): the
        coordinates that maximize. Every lane then follows the field (grad_x f, -grad_y f)."""
        if self._ascent is not None and tuple(self._ascent.shape) != (problem.dim,):
            raise ValueError(f"{problem.name}: ascent must mark each of the {problem.dim} coordinates, "
                             f"got a mask of shape {list(self._ascent.shape)}")
        self._ascent_parts = None if self._ascent is None else _split(self._ascent, shapes)
        """The mask split like the parameters (one piece per parameter tensor)."""
        self.n_train: int | None = getattr(problem, "n_train", None)
        """Training samples of a problem with a data set (networks); None for landscapes."""
        self.lanes: dict[int, _Lane] = {}
        self._next_lane = 0
        self.tick = 0
        self.paused = False
        self.compute_time = 0.0
        self.probe_time = 0.0  # the part of compute_time spent in curvature probes
        self._instrument_seconds = 0.0  # metrics and gradient-norm measurements (probes: probe_time)
        self.probes = config.probes
        self._probe_now = False
        self._warm: dict[int, dict[str, torch.Tensor]] = {}  # lane -> last probe's top Ritz vectors
        self._probe_generator = make_generator(config.probes.seed if config.probes else 0)
        self._t0 = time.perf_counter()
        self.log: list[LoggedEvent] = []
        self._snapshots: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.awaiting: dict[int, torch.Tensor] = {}
        """Lanes waiting for a person's ranking -> the candidates ``[m, P]`` to rank."""
        self._rankings: dict[int, tuple[int, ...]] = {}
        self._scheduled: list[LoggedEvent] = []
        for lane in config.lanes:
            self._add_lane(lane)

    # -- construction --------------------------------------------------------------------------
    def _make_starts(self) -> torch.Tensor:
        p, c = self.problem, self.config
        name = getattr(p, "name", type(p).__name__)
        dim = getattr(p, "dim", None)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{name}: dim must be a positive integer, got {dim!r}")
        if c.start is not None:
            x0 = torch.tensor(c.start, dtype=torch.float64)
            if x0.shape != (p.dim,):
                raise ValueError(f"start has {x0.numel()} coordinates but {name} has dim {p.dim}")
        else:
            x0 = p.x0()
            if not isinstance(x0, torch.Tensor) or tuple(x0.shape) != (p.dim,):
                shape = list(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
                raise ValueError(f"{name}: x0() must return a tensor of shape [dim] = [{p.dim}], got {shape}")
            if not x0.is_floating_point():
                raise ValueError(f"{name}: x0() must return floating-point values, got {x0.dtype}")
            x0 = x0.double()
        rows = [x0[None]]
        if c.n_starts > 1:
            if hasattr(p, "random_starts"):
                rows.append(p.random_starts(c.n_starts - 1, self._generator).double())
            elif p.bounds is None:
                raise ValueError(f"{name} has no bounds to draw {c.n_starts - 1} random starts from")
            else:
                rows.append(p.bounds.sample(c.n_starts - 1, self._generator, dtype=torch.float64,
                                            device=torch.device("cpu")))
        return torch.cat(rows).to(device=self.device, dtype=self.dtype)

    def _check_problem(self) -> None:
        """The problem's contract, checked once before any work: ``loss`` maps points ``[B, dim]``
        to floating-point losses ``[B]`` (evaluated at two copies of the first start, on a
        minibatch drawn with a throwaway generator, so the run's own stream is untouched)."""
        p = self.problem
        name = getattr(p, "name", type(p).__name__)
        x = torch.cat([self.starts[:1], self.starts[:1]])
        try:
            sample = getattr(p, "sample_batch", None)
            batch = sample(make_generator(0)) if sample is not None else None
            with torch.no_grad():
                out = p.loss(x, batch)
        except Exception as exc:
            raise ValueError(f"{name}: loss(x) failed on points x of shape [2, {p.dim}]: "
                             f"{exc or type(exc).__name__}") from exc
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"{name}: loss(x) must return a tensor of shape [B] (one loss per row of x "
                             f"[B, {p.dim}]); it returned {type(out).__name__}")
        if tuple(out.shape) != (2,):
            raise ValueError(f"{name}: loss(x) must return one loss per row, shape [B] for x of shape "
                             f"[B, {p.dim}]; for x of shape [2, {p.dim}] it returned shape {list(out.shape)}")
        if not out.is_floating_point():
            raise ValueError(f"{name}: loss(x) must return floating-point values, got {out.dtype}")

    def _check_batch(self, batch: BatchSize | None) -> None:
        if batch is None:
            return
        name = self.problem.name
        if self.n_train is None:
            raise ValueError(f"{name} has no training set: a batch size applies to problems with data "
                             f"(networks)")
        if batch.kind == "norm_test" and not hasattr(self.problem, "per_sample_grads"):
            raise ValueError(f"{name} offers no per-sample gradients, which the norm test needs")

    def _add_lane(self, config: LaneConfig) -> int:
        spec = get_spec(config.optimizer)
        spec.check_problem(self.problem)
        self._check_batch(config.batch_size)
        lane = _Lane(self._next_lane, spec, config, self.starts, getattr(self.problem, "param_shapes", None),
                     self.config.seed, self.config.fused)
        self.lanes[lane.id] = lane
        self._next_lane += 1
        return lane.id

    def _lane(self, lane_id: int) -> _Lane:
        try:
            return self.lanes[lane_id]
        except KeyError:
            raise ValueError(f"no lane {lane_id}; lanes: {sorted(self.lanes)}") from None

    # -- events --------------------------------------------------------------------------------
    def apply(self, event: Event) -> Any:
        """Apply ``event`` now (between steps) and log it. Invalid events raise and are not logged."""
        result: Any = None
        if isinstance(event, SetHyperparameter):
            result = self._lane(event.lane).set_hyperparameter(event.name, event.value)
        elif isinstance(event, SwitchOptimizer):
            lane = self._lane(event.lane)
            spec = get_spec(event.optimizer)
            spec.check_problem(self.problem)
            config = LaneConfig(event.optimizer, event.hyperparameters, event.schedules, event.clip,
                                event.batch_size)
            self._check_batch(config.batch_size)
            lane.switch(spec, config, keep=(event.clip is None, event.batch_size is None))  # raises first
            lane.error = None  # a fresh optimizer: a stopped lane goes on
            if not event.keep_position:
                lane.restart(self.starts)
                self._snapshots.pop(lane.id, None)
            self.awaiting.pop(lane.id, None)
        elif isinstance(event, AddLane):
            result = self._add_lane(LaneConfig(event.optimizer, event.hyperparameters, event.schedules,
                                               event.clip, event.batch_size))
        elif isinstance(event, SetSchedule):
            self._lane(event.lane).set_schedule(
                event.name, None if event.schedule is None else Schedule.from_dict(event.schedule))
        elif isinstance(event, SetClip):
            self._lane(event.lane).set_clip(None if event.clip is None else Clip.from_dict(event.clip))
        elif isinstance(event, SetBatchSize):
            lane = self._lane(event.lane)
            batch = None if event.batch_size is None else BatchSize.from_dict(event.batch_size)
            self._check_batch(batch)
            lane.set_batch(batch)
        elif isinstance(event, RemoveLane):
            self._lane(event.lane)
            del self.lanes[event.lane]
            self.awaiting.pop(event.lane, None)
            self._snapshots.pop(event.lane, None)  # a removed lane keeps nothing alive
            self._warm.pop(event.lane, None)
        elif isinstance(event, Pause):
            self.paused = True
        elif isinstance(event, Resume):
            self.paused = False
        elif isinstance(event, RequestProbe):
            self._probe_now = True
        elif isinstance(event, SetProbes):
            self.probes = ProbeConfig(**event.config) if event.config is not None else None
            if self.probes is not None:
                self._probe_generator = make_generator(self.probes.seed)
        elif isinstance(event, SubmitRanking):
            if event.lane not in self.awaiting:
                raise ValueError(f"lane {event.lane} is not waiting for a ranking")
            m = self.awaiting[event.lane].shape[0]
            if sorted(event.order) != list(range(m)):
                raise ValueError(f"a ranking must list each of the {m} candidates once (best first), "
                                 f"got {list(event.order)}")
            self._rankings[event.lane] = event.order
        elif isinstance(event, Reset):
            for lane in self.lanes.values():
                lane.restart(self.starts)
                self._snapshots.pop(lane.id, None)
            self.awaiting.clear()
            self._rankings.clear()
        else:
            raise TypeError(f"not an event: {event!r}")
        self.log.append(LoggedEvent(self.tick, event, time.perf_counter() - self._t0))
        return result

    # -- stepping ------------------------------------------------------------------------------
    def step(self, record: bool = True) -> list[Record]:
        """One step of every lane; one :class:`Record` per lane. With ``record`` False, only the
        lanes that computed something this step (a probe, metrics, a stop) yield one."""
        t0 = time.perf_counter()
        lanes = [lane for lane in self.lanes.values() if lane.error is None]
        if not lanes:
            self.tick += 1
            self._apply_due()
            return []
        evals = self._evaluate(lanes)
        metrics = self._metrics(lanes, evals)
        probes: dict[int, Probe] = {}
        probe_now, self._probe_now = self._probe_now, False
        self._arm_estimates(lanes, probe_now)
        out: list[tuple[Any, ...]] = []
        for lane in lanes:
            checkpoint()  # a stopped worker leaves between lanes (engine/cancel.py)
            ev = evals[lane.id]
            grads = ev.grads
            if grads is not None and self._ascent_parts is not None:  # a min-max game
                grads = self._descent_field(lane, grads)
            step_t = lane.step
            probe_due = self.probes is not None and (probe_now or self.probes.due(step_t))
            # Norms are for records: computed only on a step that yields one (else a stop does)
            keep = record or probe_due or lane.id in metrics
            g = lane.flat_grads(grads) if grads is not None and keep else None
            gnorm = _norms(g) if g is not None else None
            frozen = self._mark_divergence(lane, ev.f, grads, gnorm)
            # where a frozen row stays and a stopped lane goes back: a copy, unless the batched pass
            # made one already (the leaves flattened); the lane's own buffer when no record keeps it;
            # none when nothing reads it (no record, no frozen row, no snapshot, and an optimizer
            # that writes nothing before it could raise)
            snapshot = self.problem.dim > POSITION_MAX_DIM and step_t % self.config.snapshot_every == 0
            x_old = None
            if keep or frozen is not None or snapshot or not lane.atomic:
                x_old = self._where_from(lane, ev, keep)
            t = time.perf_counter()
            if lane.schedules:
                lane.apply_schedules()  # the values of step t, which its record reads back
            try:
                if lane.batch is not None and lane.batch.kind == "norm_test":
                    self._norm_test(lane, ev)
                if lane.spec.closure_driven:
                    if not self._closure_step(lane, grads, ev.batch):
                        continue  # waiting for a ranking: no step, no record
                else:
                    self._take_step(lane, grads, frozen, x_old)
            except Exception as exc:  # this lane stops; the others go on
                if x_old is None:  # an atomic optimizer raised before it wrote: the leaves are x_t
                    x_old = self._where_from(lane, ev, True)
                self._stop(lane, step_t, exc, x_old)
                x_old = x_old.clone() if x_old is lane._scratch else x_old  # its record keeps it
                if gnorm is None and grads is not None:
                    gnorm = _norms(lane.flat_grads(grads))
                out.append((lane, step_t, ev, gnorm, torch.zeros_like(ev.f), x_old))
                continue
            finally:
                lane.own_time += time.perf_counter() - t
            update = None
            if keep:
                with torch.no_grad():  # (flattening several leaves builds no graph)
                    x_new = lane.points().detach()
                update = _norms(torch.sub(x_new, x_old, out=lane.scratch(x_new)))  # (x_old is no scratch)
                if probe_due and lane.diverged_at[0] < 0:
                    probes[lane.id] = self._probe(lane, x_old[0], x_new[0] - x_old[0], ev.batch)
            out.append((lane, step_t, ev, gnorm, update, x_old))
            if snapshot:
                self._snapshot(lane, x_old)
        self.tick += 1
        self.compute_time += time.perf_counter() - t0
        records = [self._record(*item, metrics.get(item[0].id, {}), probes.get(item[0].id))
                   for item in out
                   if record or item[0].id in metrics or item[0].id in probes or item[0].error is not None]
        self._apply_due()  # after the records: they describe the step as it was taken
        return records

    @staticmethod
    def _where_from(lane: _Lane, ev: _Eval, keep: bool) -> torch.Tensor:
        """``x_t [M, P]`` as the step is about to leave it: a tensor the step does not change (the
        flattened copy the batched pass made, or a copy of the leaf; the lane's reused buffer unless
        a record ``keep``s it)."""
        x = ev.x
        if x is lane.params[0]:
            return x.detach().clone() if keep else lane.scratch(x).copy_(x.detach())
        return x.detach()

    def _evaluate(self, lanes: list[_Lane]) -> dict[int, _Eval]:
        """This tick's losses (and gradients) of every lane, one batched call per group of lanes
        that share a minibatch and a need: lanes whose method uses the gradient (timed as theirs,
        split by rows), lanes that don't but whose gradient norm is due, and lanes that need only
        the recorded loss (both instrumentation). Usually that is one call, as it always was."""
        batches = self._batches(lanes)
        every = self.config.grad_norm_every
        groups: dict[tuple[Any, int], list[_Lane]] = {}
        for lane in lanes:
            need = 0 if lane.uses_gradient else (1 if every is not None and lane.step % every == 0 else 2)
            groups.setdefault((batches[lane.id][2], need), []).append(lane)
        out: dict[int, _Eval] = {}
        reuse = self._probe_reuses_graph(lanes)  # a due probe differentiates this gradient again
        # a network is evaluated on its leaves as they are; a reused graph must hold a copy of them
        # (the step changes them in place): clones of the parts, which cost 3-9% less per step and
        # per product than the flattened rows (benchmarks/hessian.py, section b)
        by_parts = getattr(self.problem, "loss_parts", None)
        by_row = getattr(self.problem, "loss_row", None)
        for (_, need), group in groups.items():
            t = time.perf_counter()
            batch, size, _ = batches[group[0].id]
            if by_parts is None:
                points = [lane.points() for lane in group]
                x = points[0] if len(points) == 1 else torch.cat(points)  # one lane: no copy
                loss = lambda x=x, batch=batch: self.problem.loss(x, batch)  # noqa: E731
            else:  # the leaves as they are, one tensor per parameter (a network); flattened only if read
                points = group
                parts = group[0].parts() if len(group) == 1 else \
                    [torch.cat(p) for p in zip(*(lane.parts() for lane in group), strict=True)]
                if reuse:
                    parts = [p.clone() for p in parts]
                loss = lambda parts=parts, batch=batch: by_parts(parts, batch)  # noqa: E731
            grads: list[torch.Tensor] | None = None
            twins = group[0].twins() if by_row is not None and len(group) == 1 and not reuse else None
            if need == 2:
                with torch.no_grad():
                    losses = loss()
            elif twins is not None:  # one start: its leaves in their own shapes (see _Lane.twins)
                value = by_row(twins, batch)
                grads = [torch.zeros_like(p) if g is None else g.unsqueeze(0) for p, g in zip(
                    group[0].params, torch.autograd.grad(value, twins, allow_unused=True), strict=True)]
                losses = value.detach().reshape(1)
            else:
                losses = loss()
                leaves = group[0].params if len(group) == 1 else [p for lane in group for p in lane.params]
                total = losses.sum() if losses.numel() > 1 else losses.reshape(())  # one row: a view
                grads = list(torch.autograd.grad(total, leaves, allow_unused=True, create_graph=reuse))
                if reuse:  # one lane, one start: the whole batch (see _probe_reuses_graph)
                    grads = self._keep_graph(group[0], grads, losses)
                if any(g is None for g in grads):  # a parameter the loss does not use
                    grads = [torch.zeros_like(p) if g is None else g
                             for p, g in zip(leaves, grads, strict=True)]
                losses = losses.detach()
            seconds = time.perf_counter() - t
            if need != 0:
                self._instrument_seconds += seconds
            if len(group) == 1:
                out[group[0].id] = _Eval(points[0], losses, grads, batch, size)
                if need == 0:
                    group[0].own_time += seconds
                continue
            n_rows = sum(lane.n_rows for lane in group)
            row = leaf = 0
            for lane, x in zip(group, points, strict=True):
                m, n = lane.n_rows, len(lane.params)
                out[lane.id] = _Eval(x, losses[row:row + m], None if grads is None else grads[leaf:leaf + n],
                                     batch, size)
                if need == 0:
                    lane.own_time += seconds * m / n_rows
                row, leaf = row + m, leaf + n
        return out

    def _default_size(self) -> int | None:
        if self.n_train is None:
            return None
        size = getattr(self.problem, "batch_size", None)
        return self.n_train if size is None else min(int(size), self.n_train)

    def _lane_size(self, lane: _Lane) -> int | None:
        """The lane's batch size this step (None: the problem's own)."""
        batch = lane.batch
        if batch is None or self.n_train is None:
            return None
        if batch.kind == "norm_test":
            if lane.batch_now is None:
                lane.batch_now = batch.initial(self.n_train)
            return lane.batch_now
        return batch.scheduled(lane.step, self.n_train)

    def _batches(self, lanes: list[_Lane]) -> dict[int, tuple[Any, int | None, int | None]]:
        """lane id -> (minibatch, its size for the records, group key). The problem's own size is
        drawn from the run's generator once per tick (as always); any other size from a generator
        seeded by (seed, tick, size), so lanes with the same size see the same samples."""
        default = self.problem.sample_batch(self._generator)
        default_size = self._default_size()
        drawn: dict[int, Any] = {}
        out = {}
        for lane in lanes:
            size = None if lane.batch is None else self._lane_size(lane)
            if size is None or size == default_size:
                out[lane.id] = (default, default_size, None)
                continue
            if size not in drawn:
                gen = make_generator(minibatch_seed(self.config.seed, self.tick, size))
                drawn[size] = self.problem.sample_batch(gen, batch_size=size)
            out[lane.id] = (drawn[size], size, size)
        return out

    def _norm_test(self, lane: _Lane, ev: _Eval) -> None:
        """AdAdaGrad's norm test at :math:`x_t` on this step's minibatch (see
        :mod:`engine.batching`): the next size is the largest any live row asks for."""
        batch, n_train = lane.batch, self.n_train
        assert batch is not None and n_train is not None
        if lane.step % batch.every or ev.size is None or ev.size >= n_train or ev.batch is None:
            return
        need = ev.size
        for x, fz in zip(ev.x.detach(), lane.frozen_list(), strict=True):
            if not fz:
                need = max(need, norm_test_size(self.problem.per_sample_grads(x, ev.batch), batch.theta))
        lane.batch_now = min(need, batch.cap(n_train))

    def _descent_field(self, lane: _Lane, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """(grad_x f, -grad_y f): each parameter's gradient negated where its piece of the mask is set."""
        parts = self._ascent_parts
        assert parts is not None
        n = len(parts)
        return [torch.where(parts[j % n], -g, g) for j, g in enumerate(grads)]

    def _stop(self, lane: _Lane, step: int, exc: Exception, x_old: torch.Tensor) -> None:
        """The lane's optimizer raised: back to where the step began, stopped with its message."""
        what = str(exc) or type(exc).__name__
        lane.error = f"{lane.spec.display_name} failed: {what}"
        lane.error_step = step
        lane.set_points(x_old)
        self.awaiting.pop(lane.id, None)

    @property
    def stopped(self) -> dict[int, str]:
        """Stopped lanes -> their status text ("stopped at step N: <message>")."""
        return {i: status_text(STOPPED, lane.error_step, lane.error)
                for i, lane in self.lanes.items() if lane.error is not None}

    _step_graph: tuple[_Lane, list[torch.Tensor | None], float] | None = None
    """The step's graph-attached gradient kept for a due probe (see :meth:`_probe_reuses_graph`)."""

    def _probe(self, lane: _Lane, x: torch.Tensor, update: torch.Tensor, batch: Any) -> Probe:
        """Curvature of the lane's first start at ``x`` (where this step's gradient was taken).

        Warm-started from this lane's last probe, or, before its first, from the latest probe of
        any lane (lanes of a race start at the same point, so their first Hessians agree). On the
        step's own gradient graph when :meth:`_probe_reuses_graph` kept it."""
        t0 = time.perf_counter()
        key = lane.spec.second_moment_key
        moment = None
        if key is not None:
            moment = second_moment(lane.optimizer, lane.rows[0], key, 0 if lane.separable else None)
        warm = self._warm.get(lane.id)
        if warm is None and self._warm:
            warm = {"top": next(reversed(self._warm.values()))["top"]}
        graph, self._step_graph = self._step_graph, None
        op = None
        if graph is not None and graph[0] is lane:
            op = HVP.from_gradient(graph[1], lane.params, x=x, value=graph[2])
        estimate, kept = self._lane_estimate(lane) if self.probes.estimate_cosine else (None, 0.0)
        result, vectors = probe(
            lambda t: self.problem.loss(t[None], batch)[0], x, update, stability=lane.spec.stability,
            hyperparameters=lane.spec.read(lane.optimizer), config=self.probes,
            generator=self._probe_generator, step=lane.step - 1, dim=self.problem.dim, moment=moment,
            warm=warm, op=op, problem=self.problem, batch=batch, estimate=estimate)
        self._warm.pop(lane.id, None)
        self._warm[lane.id] = vectors  # the most recent last, for the next lane's first probe
        self.probe_time += time.perf_counter() - t0 + kept
        lane.own_time -= kept  # keeping the estimate was the instrument's work, not the method's
        lane.counts = lane.counts + OracleCounts(hvps=result.hvps)
        return result

    def _arm_estimates(self, lanes: list[_Lane], probe_now: bool) -> None:
        """Tell each closure-driven lane's first optimizer whether to keep this step's gradient
        estimate for a probe's ``estimate_cosine`` (only then does it materialise one)."""
        for lane in lanes:
            opt = lane.optimizers[0]
            if hasattr(opt, "keep_estimate"):
                opt.keep_estimate = bool(self.probes is not None and self.probes.estimate_cosine
                                         and (probe_now or self.probes.due(lane.step)))

    def _lane_estimate(self, lane: _Lane) -> tuple[torch.Tensor | str, float]:
        """The flat gradient (estimate) the lane's first start stepped from, as an estimate of the
        gradient (or why there is none), and the seconds its optimizer spent keeping it: a
        closure-driven optimizer's kept estimate, else the ``.grad`` the run handed over (clipped
        when the lane clips; on a game, the descent field turned back into the gradient)."""
        if lane.spec.closure_driven:
            opt = lane.optimizers[0]
            if not hasattr(opt, "take_estimate"):
                return f"{lane.spec.display_name} forms no gradient estimate", 0.0
            g, seconds = opt.take_estimate()
            return (f"{lane.spec.display_name} kept no estimate at this step" if g is None else g), seconds
        grads = [p.grad for p in lane.rows[0]]
        if any(g is None for g in grads):
            return f"{lane.spec.display_name} has no gradient at this step", 0.0
        g = torch.cat([(gr[0] if lane.separable else gr).reshape(-1) for gr in grads])
        return (g if self._ascent is None else torch.where(self._ascent, -g, g)), 0.0

    def _probe_reuses_graph(self, lanes: list[_Lane]) -> bool:
        """Whether this step's gradient should keep its graph for a probe due after it.

        Only when the probed start is the whole batch (one lane, one start): the run's gradient is
        of the sum over all lanes and starts, and a product through it costs ~3x a one-row product
        at K*M = 2 and ~6x at 4 (a vmapped backward over every row), while building one row's graph
        costs ~1.2 gradients once per probe (benchmarks/hessian.py, section b); at K*M = 1 reuse
        saves that setup (~15% of a sharpness probe every step, section d). Also only for problems
        whose loss sees a copy of the leaves (several parameter tensors, cloned by
        :meth:`_evaluate`, or concatenated where the problem has no ``loss_parts``): a single leaf
        is saved by the loss itself and the optimizer's in-place step would invalidate it.
        The step's gradient is then taken with ``create_graph=True`` (a few % more for that step)."""
        self._step_graph = None
        if self.probes is None or len(lanes) != 1:
            return False
        lane = lanes[0]
        if lane.n_rows != 1 or len(lane.params) < 2 or lane.spec.closure_driven or lane.diverged_at[0] >= 0:
            return False
        if self.probes.probe_dtype(self.dtype) != self.dtype:
            return False
        return self._probe_now or self.probes.due(lane.step)

    def _keep_graph(self, lane: _Lane, grads: Sequence[torch.Tensor | None],
                    losses: torch.Tensor) -> list[torch.Tensor | None]:
        """Keep the graph-attached gradient for :meth:`_probe`; the step gets detached copies (a
        ``.grad`` holding a graph that reaches its own leaf would be a reference cycle)."""
        self._step_graph = (lane, list(grads), float(losses.detach()[0]))
        return [None if g is None else g.detach() for g in grads]

    @property
    def probe_overhead(self) -> float:
        """Fraction of the run's compute time spent in curvature probes."""
        return self.probe_time / self.compute_time if self.compute_time > 0 else 0.0

    @property
    def instrument_time(self) -> float:
        """Seconds of the run's compute spent on instruments: curvature probes, metrics, and for
        lanes that do not use gradients, their recorded loss and their gradient-norm measurements."""
        return self.probe_time + self._instrument_seconds

    @property
    def instrument_overhead(self) -> float:
        """Fraction of the run's compute time spent on instruments (:attr:`instrument_time`)."""
        return self.instrument_time / self.compute_time if self.compute_time > 0 else 0.0

    def _metrics(self, lanes: list[_Lane], evals: Mapping[int, _Eval]) -> dict[int, dict[str, np.ndarray]]:
        """The problem's metrics at the current points of the lanes whose schedule is due (one
        batched call for all of them); every computed metric reaches a record."""
        fn = getattr(self.problem, "metrics", None)
        if fn is None:
            return {}
        every = self.config.metrics_every
        waiting = {i for i in self.awaiting if i not in self._rankings}  # they take no step this tick
        due = [lane for lane in lanes if lane.step % every == 0 and lane.id not in waiting]
        if not due:
            return {}
        t = time.perf_counter()
        points = [evals[lane.id].x.detach() for lane in due]
        values = fn(points[0] if len(points) == 1 else torch.cat(points))
        out, row = {}, 0
        for lane in due:
            m = lane.n_rows
            out[lane.id] = {k: v[row:row + m].cpu().numpy() for k, v in values.items()}
            row += m
        self._instrument_seconds += time.perf_counter() - t
        return out

    def _snapshot(self, lane: _Lane, x: torch.Tensor) -> None:
        t = lane.step - 1  # the step x was taken from
        kept = self._snapshots.setdefault(lane.id, [])
        kept.append((t, x[0].cpu().numpy().copy()))
        if len(kept) > TRAJECTORY_CAP:
            kept[:] = kept[::2]

    def trajectory(self, lane_id: int) -> tuple[np.ndarray, np.ndarray]:
        """``(steps [T], parameters [T, P])`` of lane ``lane_id``'s first start, as kept so far
        (every ``snapshot_every`` steps, thinned to at most TRAJECTORY_CAP), plus where it is now."""
        lane = self._lane(lane_id)
        kept = list(self._snapshots.get(lane_id, []))
        now = lane.points().detach()[0].cpu().numpy()
        steps = np.array([s for s, _ in kept] + [lane.step], dtype=np.int64)
        return steps, np.stack([x for _, x in kept] + [now])

    def _mark_divergence(self, lane: _Lane, f: torch.Tensor, grads: Sequence[torch.Tensor] | None,
                         gnorm: torch.Tensor | None) -> torch.Tensor | None:
        """Rows whose loss or (measured) gradient (``grads``, the lane's leaves') is not finite, or
        whose loss left ``divergence_factor`` x its start, are marked at this step; returns the
        frozen rows (None: none). Whole-array tests find the candidates: a row with a non-finite
        gradient has a non-finite gradient norm (and makes the gradient's sum non-finite), though
        not conversely; Python then looks at the rows that newly fail only."""
        c = self.config.divergence_factor
        if c is not None and lane.limit is None:  # the lane's step 0 (or its first after a restart)
            start = f.abs().clamp(min=1.0)
            lane.limit = torch.where(torch.isfinite(start), c * start, 0.0)  # a non-finite start: at once
            lane.lowest_limit = float(lane.limit.min())
        if lane.frozen is None:  # the usual case, in two reductions: every loss within every limit...
            if f.numel() == 1:
                lo = hi = float(f)
            else:
                lo, hi = (float(v) for v in torch.aminmax(f))
            bound = math.inf if c is None else lane.lowest_limit
            if math.isfinite(lo) and math.isfinite(hi) and -bound <= lo and hi <= bound and (
                    grads is None or math.isfinite(float(_total(grads) if gnorm is None else gnorm.sum()))):
                return None  # ...and every gradient finite (a finite sum): no row diverges now
        if c is None:
            ok = f.abs() < math.inf  # False for NaN too (one kernel; isfinite takes three)
        else:
            ok = f.abs() <= lane.limit  # False for NaN and +-inf too
        g = None if grads is None else lane.flat_grads(grads)
        if g is not None:
            if gnorm is not None:
                ok &= gnorm < math.inf
            elif not math.isfinite(float(g.sum())):
                ok &= torch.isfinite(g).all(dim=-1)
        if lane.frozen is not None:
            ok |= lane.frozen
        if bool(ok.all()):
            return lane.frozen
        rows = torch.nonzero(~ok).flatten()
        fs = f[rows].tolist()
        limits = lane.limit[rows].tolist() if c is not None else None
        finite_grads = torch.isfinite(g[rows]).all(dim=-1).tolist() if g is not None else None
        new: dict[int, str] = {}
        for k, i in enumerate(rows.tolist()):
            if not math.isfinite(fs[k]):
                new[i] = "loss not finite"
            elif finite_grads is not None and not finite_grads[k]:
                new[i] = "gradient not finite"
            elif limits is not None and not abs(fs[k]) <= limits[k]:
                new[i] = f"|loss| {abs(fs[k]):.3g} > {c:g} x start"
            # else: a finite gradient whose norm overflowed: the row runs on
        if new:
            diverged_at = lane.diverged_at.copy()
            diverged_at[list(new)] = lane.step
            lane.diverged_at = read_only(diverged_at)
            lane.reasons = MappingProxyType({**lane.reasons, **new})
            lane.frozen = torch.as_tensor(diverged_at >= 0, device=f.device)
        return lane.frozen

    def _closure_step(self, lane: _Lane, grads: Sequence[torch.Tensor] | None, batch: Any) -> bool:
        """Step each live trajectory of a closure-driven lane with its own :class:`Oracles`.
        False (and nothing changed) when the first trajectory waits for a person's ranking."""
        n = len(lane.rows[0])
        gets_gradient = lane.spec.oracle in (Oracle.HVPS, Oracle.GRADIENTS)
        # ``awaiting`` is read by other threads (the UI polls it): a lane that still waits keeps its
        # entry (replaced below, never popped and set again, which would look like an answer), and
        # loses it only once it has stepped.
        stepped: OracleCounts | None = None
        model = model_view(self.problem, batch) if lane.spec.uses_model else None
        frozen = lane.frozen_list()
        for i, (row, opt) in enumerate(zip(lane.rows, lane.optimizers, strict=True)):
            if frozen[i]:
                continue
            for j, p in enumerate(row):
                # second-order and lookahead methods get the gradient the run computed anyway
                # (counted below); every other oracle kind gets nothing it did not ask for
                p.grad = grads[i * n + j] if gets_gradient and grads is not None else None
            ranker = self._human_ranker(lane) if i == 0 and lane.values.get(HUMAN) else rank_by_value
            oracles = Oracles(lambda x: self.problem.loss(x, batch), row, ranker, self._ascent,
                              sampled_losses=self._sampled_losses(batch),
                              bounds=getattr(self.problem, "bounds", None), model=model,
                              problem=self.problem, batch=batch)
            try:
                opt.step(oracles)
            except AwaitingRanking as waiting:
                self.awaiting[lane.id] = waiting.candidates.detach().clone()
                return False
            if stepped is None:
                stepped = oracles.counts
        self.awaiting.pop(lane.id, None)
        lane.step += 1
        given = _ONE_GRADIENT if gets_gradient else OracleCounts()
        lane.counts = lane.counts + given + (stepped or OracleCounts())
        return True

    def _sampled_losses(self, batch: Any) -> Any:
        """Per-sample losses with labels drawn from the model (Sophia-G), for problems with a likelihood."""
        sampled = getattr(self.problem, "sampled_losses", None)
        return None if sampled is None else (lambda theta, gen: sampled(theta, batch, gen))

    def _human_ranker(self, lane: _Lane) -> Ranker:
        """Hands out the ranking a :class:`SubmitRanking` event delivered, or makes the lane wait."""

        def ranker(candidates: torch.Tensor, values: torch.Tensor) -> tuple[int, ...]:
            order = self._rankings.pop(lane.id, None)
            if order is None:
                raise AwaitingRanking(candidates)
            return order
        return ranker

    @staticmethod
    def _take_step(lane: _Lane, grads: Sequence[torch.Tensor], frozen: torch.Tensor | None,
                   x_old: torch.Tensor) -> None:
        """One step of a gradient-driven lane; ``frozen``: its diverged rows (None: none)."""
        if lane.dense_grads:
            grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        if lane.separable:
            if frozen is None:
                for p, g in zip(lane.params, grads, strict=True):
                    p.grad = g
            else:
                for p, g in zip(lane.params, grads, strict=True):
                    mask = frozen.reshape(-1, *([1] * (g.dim() - 1)))
                    p.grad = torch.where(mask, 0.0, g).contiguous()
            if lane.clip is not None:  # rows are independent runs: clipped one by one
                fraction = clip_([p.grad for p in lane.params], lane.clip, batch_dims=1)
                if frozen is not None:
                    fraction = torch.where(frozen, math.nan, fraction)
                lane.clipped = fraction.cpu().numpy()
            lane.optimizer.step()
            if frozen is not None:  # momentum or weight decay would still move a frozen row: put it back
                with torch.no_grad():
                    for p, old in zip(lane.params, _split(x_old, lane.shapes), strict=True):
                        mask = frozen.reshape(-1, *([1] * (p.dim() - 1)))
                        p.copy_(torch.where(mask, old, p))
        else:
            n = len(lane.rows[0])
            live = [not fz for fz in lane.frozen_list()]
            for i, ok in enumerate(live):
                for p, g in zip(lane.rows[i], grads[i * n:(i + 1) * n], strict=True):
                    p.grad = g if ok else None  # torch optimizers skip parameters without a gradient
            if lane.clip is not None:
                lane.clipped = np.array([float(clip_([p.grad for p in row], lane.clip)) if ok else math.nan
                                         for row, ok in zip(lane.rows, live, strict=True)])
            if len(lane.optimizers) == 1:
                lane.optimizer.step()
            else:  # one optimizer per start: a frozen start's is not stepped at all
                for opt, ok in zip(lane.optimizers, live, strict=True):
                    if ok:
                        opt.step()
        lane.step += 1
        lane.counts = lane.counts + _ONE_GRADIENT

    def _diagnostics(self, lane: _Lane) -> dict[str, np.ndarray]:
        """The lane's optimizer diagnostics (``spec.read_diagnostics``) and its clipped fraction, per
        row (see :attr:`engine.records.Record.diagnostics`); NaN for rows that did not step."""
        out: dict[str, np.ndarray] = {}
        spec, m = lane.spec, lane.n_rows
        if not spec.diagnostics and lane.clip is None:
            return out
        still = lane.diverged_at >= 0
        if spec.diagnostics:
            reads = [spec.read_diagnostics(opt) if hasattr(opt, "diagnostics") else {}
                     for opt in lane.optimizers]
            for name in dict.fromkeys(k for r in reads for k in r):
                values = (np.full(m, reads[0][name]) if len(reads) == 1
                          else np.array([r.get(name, math.nan) for r in reads], dtype=np.float64))
                out[name] = np.where(still, math.nan, values)
        if lane.clip is not None and "clipped_fraction" not in out:
            if spec.closure_driven:
                values = np.array([float(opt.diagnostics().get("clipped_fraction", math.nan))
                                   if hasattr(opt, "diagnostics") else math.nan for opt in lane.optimizers])
                out["clipped_fraction"] = np.where(still, math.nan, values)
            elif lane.clipped is not None:
                out["clipped_fraction"] = lane.clipped
        return out

    def _record(self, lane: _Lane, step: int, ev: _Eval, gnorm: torch.Tensor | None,
                update: torch.Tensor, x: torch.Tensor, metrics: Mapping[str, np.ndarray],
                curvature: Probe | None) -> Record:
        """The step's record, its arrays columns of this tick's tensors (fresh ones, not copied:
        nothing writes to them again) and the lane's divergence columns, shared as they are."""
        return Record(
            tick=self.tick - 1,
            lane=lane.id,
            optimizer=lane.spec.name,
            step=step,
            loss=_column(ev.f),
            grad_norm=_column(gnorm) if gnorm is not None else np.full(lane.n_rows, math.nan),
            update_norm=_column(update),
            position=_column(x) if self.problem.dim <= POSITION_MAX_DIM else None,
            hyperparameters=MappingProxyType(lane.spec.read(lane.optimizer)),
            counts=lane.counts,
            diverged_at=lane.diverged_at,
            reasons=lane.reasons,
            stopped=lane.stopped,
            wall_time=self.compute_time,
            metrics=_columns(metrics),
            curvature=curvature,
            batch_size=ev.size,
            diagnostics=_columns(self._diagnostics(lane)),
            compute_time=lane.own_time,
        )

    def run(self, n_steps: int, record_every: int = 1) -> list[Record]:
        """Take ``n_steps`` steps, keeping the records of ticks 0, k, 2k, ... (``k = record_every``),
        the schedule metrics and probes follow, and of any other step where a probe or metrics
        were computed: nothing computed is thrown away."""
        if isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1:
            raise ValueError(f"record_every must be an integer >= 1, got {record_every!r}")
        records: list[Record] = []
        for _ in range(n_steps):
            records.extend(self.step(record=self.tick % record_every == 0))
        return records

    # -- reading -------------------------------------------------------------------------------
    def positions(self, lane_id: int) -> np.ndarray:
        return self._lane(lane_id).points().detach().cpu().numpy()

    def event_log(self) -> dict[str, Any]:
        """Config, events and tick count: all a replay needs (plain JSON-able data)."""
        return {"problem": self.problem.name, "config": self.config.to_dict(),
                "events": [e.to_dict() for e in self.log], "ticks": self.tick}

    def schedule(self, events: Iterable[LoggedEvent]) -> None:
        """Apply each logged event when the run reaches its tick: a session replayed live."""
        self._scheduled = sorted([*self._scheduled, *events], key=lambda e: e.tick)
        self._apply_due()

    def _apply_due(self) -> None:
        while self._scheduled and self._scheduled[0].tick <= self.tick:
            self.apply(self._scheduled.pop(0).event)

    @classmethod
    def replay(cls, problem: Problem, config: RunConfig, events: Iterable[LoggedEvent],
               ticks: int) -> tuple[Run, list[Record]]:
        """Re-run ``config`` for ``ticks`` steps, applying each logged event at its tick."""
        run = cls(problem, config)
        run.schedule(events)
        return run, run.run(ticks)
