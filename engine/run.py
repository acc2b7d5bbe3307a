r"""A :class:`Run`: K optimizers (lanes) x M start points on one problem, as one tensor program.

Each step evaluates every trajectory of every lane in a single batched call
``problem.loss(X) -> [K*M]`` and differentiates its **sum** (rows are independent runs; a mean
would rescale each gradient by :math:`1/(KM)`). Each lane then takes one ``optimizer.step()``.

Row independence needs care: an optimizer whose update of a coordinate depends only on that
coordinate's history (``spec.row_separable``: SGD, Adam, Lion, ...) steps one ``[M, d]`` tensor;
any other (AdamP, SGD-SaI: tensor-wide norms) gets M separate ``[d]`` tensors in one optimizer.

A min-max game declares ``problem.ascent``, a boolean mask of the maximizing coordinates; every
lane then steps along the descent field :math:`(\nabla_x f, -\nabla_y f)` (so SGD is gradient
descent-ascent).

Optimizers that ask for other oracles (function values, rankings, JVPs, HVPs: see
:mod:`engine.oracles`) get one optimizer per start, stepped as ``optimizer.step(oracles)``; their
records count the oracle calls they made. The loss and gradient norm in every record are
measured by the batched pass whatever the optimizer consumed (instrumentation, not counted).
A lane whose optimizer waits for a person's ranking takes no step and yields no record until a
:class:`engine.events.SubmitRanking` arrives; ``Run.awaiting`` holds its candidates.

A trajectory whose loss or gradient becomes NaN/Inf is marked "diverged at step N" and frozen
where it was; the others continue. Events change a live run between steps and are logged, so
``Run.replay(problem, config, log)`` reproduces the same records exactly on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

import engine.optimizers  # noqa: F401  (registers the built-in optimizers)
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
    SetHyperparameter,
    SetProbes,
    SubmitRanking,
    SwitchOptimizer,
)
from engine.instruments import Probe, ProbeConfig, probe, second_moment
from engine.oracles import HUMAN, AwaitingRanking, Oracles, Ranker, rank_by_value
from engine.problem import Problem
from engine.records import RUNNING, OracleCounts, Record, make_record
from engine.registry import OptimizerSpec, Oracle, get_spec

POSITION_MAX_DIM = 3
"""Records carry positions for problems of at most this many dimensions (views draw them)."""
TRAJECTORY_CAP = 400
"""Snapshots kept per lane for larger problems (for landscape slices); beyond it, every other
snapshot is dropped, so the kept ones always span the whole run."""

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class LaneConfig:
    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))


@dataclass(frozen=True)
class RunConfig:
    """Everything that, with the problem and the event log, determines a run's records.

    Starts: row 0 is ``start`` (the problem's default start if None); rows 1..M-1 are drawn
    with the run's seeded generator: fresh initializations for a problem with ``random_starts``
    (networks), else uniformly from the problem's bounds.

    ``metrics_every``: how often (in a lane's steps) the problem's ``metrics`` (full-set train/test
    loss and accuracy of a network) are computed into the records. ``snapshot_every``: how often
    row 0's parameters are kept for a problem too big to carry positions in its records.
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
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict can't copy a mappingproxy
        d["lanes"] = [{"optimizer": ln.optimizer, "hyperparameters": dict(ln.hyperparameters)}
                      for ln in self.lanes]
        d["probes"] = self.probes.to_dict() if self.probes is not None else None
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> RunConfig:
        d = dict(d)
        d["lanes"] = tuple(LaneConfig(**ln) for ln in d["lanes"])
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
    return torch.cat([t.reshape(*t.shape[:n_lead], -1) for t in tensors], dim=-1)


class _Lane:
    """One optimizer over the M start rows.

    Leaves are laid out for the optimizer, not for the loss: a problem that declares
    ``param_shapes`` (a network) gets one tensor per layer parameter, so layer-aware optimizers
    (AdamP) see real layers; a row-separable optimizer holds each of them as ``[M, *shape]``, any
    other optimizer holds M separate sets. ``points()`` flattens them back to ``[M, P]``.
    """

    def __init__(self, lane_id: int, spec: OptimizerSpec, hyperparameters: Mapping[str, Any],
                 starts: torch.Tensor, shapes: Sequence[tuple[int, ...]] | None, seed: int) -> None:
        self.id = lane_id
        self.spec = spec
        self.shapes = shapes
        self.seed = seed
        self.values = spec.validate(hyperparameters)
        self.n_rows = starts.shape[0]
        self.restart(starts)

    def restart(self, starts: torch.Tensor) -> None:
        self._place(starts)
        self.step = 0
        self.counts = OracleCounts()
        self.diverged_at = np.full(self.n_rows, -1, dtype=np.int64)

    def _place(self, points: torch.Tensor) -> None:
        points = points.detach()
        self.separable = self.spec.row_separable and not self.spec.closure_driven
        """The M rows live in one ``[M, ...]`` tensor per parameter (else one set per row)."""
        if self.separable:
            self.rows = [[t.clone().requires_grad_(True) for t in _split(points, self.shapes)]]
        else:
            self.rows = [[t.clone().requires_grad_(True) for t in _split(row, self.shapes)] for row in points]
        self.params = [p for row in self.rows for p in row]
        if self.spec.closure_driven or self.spec.per_trajectory:  # one optimizer per start
            self.optimizers = [self.spec.build(row, self.values, seed=self._row_seed(i))
                               for i, row in enumerate(self.rows)]
        else:
            self.optimizers = [self.spec.build(self.params, self.values, seed=self._row_seed(0))]

    def _row_seed(self, row: int) -> int:
        """A seeded optimizer's seed for one trajectory: fixed by the run's seed, lane and row."""
        return (self.seed * 1_000_003 + self.id * 10_007 + row) % (2**31)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The (first) optimizer: what reads of live hyperparameters and state look at."""
        return self.optimizers[0]

    def set_hyperparameter(self, name: str, value: Any) -> Any:
        for opt in self.optimizers:
            value = self.spec.apply(opt, name, value)
        self.values[name] = value
        return value

    def switch(self, spec: OptimizerSpec, hyperparameters: Mapping[str, Any]) -> None:
        """New optimizer (fresh state) from the current positions."""
        self.values = spec.validate(hyperparameters)
        points = self.points()
        self.spec = spec
        self._place(points)

    def points(self) -> torch.Tensor:
        """Current positions ``[M, P]`` (differentiable through the leaves)."""
        if self.separable:
            return _flatten(self.rows[0], 1)
        return torch.stack([_flatten(row, 0) for row in self.rows])

    def flat_grads(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Gradients of this lane's leaves (in ``self.params`` order) as ``[M, P]``."""
        if self.separable:
            return _flatten(grads, 1)
        n = len(self.rows[0])
        return torch.stack([_flatten(grads[i * n:(i + 1) * n], 0) for i in range(self.n_rows)])

    def status(self) -> tuple[str, ...]:
        return tuple(RUNNING if s < 0 else f"diverged at step {s}" for s in self.diverged_at)


class Run:
    """K lanes x M starts stepping ``problem`` together; see the module docstring."""

    def __init__(self, problem: Problem, config: RunConfig) -> None:
        self.problem = problem
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = _DTYPES[config.dtype]
        self._generator = make_generator(config.seed)  # CPU: same stream on every device
        self.starts = self._make_starts()
        ascent = getattr(problem, "ascent", None)
        self._ascent = (None if ascent is None
                        else torch.as_tensor(ascent, dtype=torch.bool, device=self.device))
        """For a min-max game (a problem with an ``ascent`` mask over its coordinates): the
        coordinates that maximize. Every lane then follows the field (grad_x f, -grad_y f)."""
        self.lanes: dict[int, _Lane] = {}
        self._next_lane = 0
        self.tick = 0
        self.paused = False
        self.compute_time = 0.0
        self.probe_time = 0.0  # the part of compute_time spent in curvature probes
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
            self._add_lane(lane.optimizer, lane.hyperparameters)

    # -- construction --------------------------------------------------------------------------
    def _make_starts(self) -> torch.Tensor:
        p, c = self.problem, self.config
        x0 = torch.tensor(c.start, dtype=torch.float64) if c.start is not None else p.x0().double()
        if x0.shape != (p.dim,):
            raise ValueError(f"start has {x0.numel()} coordinates but {p.name} has dim {p.dim}")
        rows = [x0[None]]
        if c.n_starts > 1:
            if hasattr(p, "random_starts"):
                rows.append(p.random_starts(c.n_starts - 1, self._generator).double())
            elif p.bounds is None:
                raise ValueError(f"{p.name} has no bounds to draw {c.n_starts - 1} random starts from")
            else:
                rows.append(p.bounds.sample(c.n_starts - 1, self._generator, dtype=torch.float64,
                                            device=torch.device("cpu")))
        return torch.cat(rows).to(device=self.device, dtype=self.dtype)

    def _add_lane(self, optimizer: str, hyperparameters: Mapping[str, Any]) -> int:
        get_spec(optimizer).check_problem(self.problem)
        lane = _Lane(self._next_lane, get_spec(optimizer), hyperparameters, self.starts,
                     getattr(self.problem, "param_shapes", None), self.config.seed)
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
            spec.validate(event.hyperparameters)  # raise before touching the lane
            spec.check_problem(self.problem)
            lane.switch(spec, event.hyperparameters)
            if not event.keep_position:
                lane.restart(self.starts)
                self._snapshots.pop(lane.id, None)
            self.awaiting.pop(lane.id, None)
        elif isinstance(event, AddLane):
            result = self._add_lane(event.optimizer, event.hyperparameters)
        elif isinstance(event, RemoveLane):
            self._lane(event.lane)
            del self.lanes[event.lane]
            self.awaiting.pop(event.lane, None)
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
        """One step of every lane; one :class:`Record` per lane (none if ``record`` is False)."""
        t0 = time.perf_counter()
        lanes = list(self.lanes.values())
        if not lanes:
            self.tick += 1
            self._apply_due()
            return []
        batch = self.problem.sample_batch(self._generator)
        points = [lane.points() for lane in lanes]
        losses = self.problem.loss(torch.cat(points), batch)
        leaves = [p for lane in lanes for p in lane.params]
        reuse = self._probe_reuses_graph(lanes)  # curv16: a due probe differentiates this gradient again
        grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True, create_graph=reuse)
        grads = self._keep_graph(lanes[0], grads, losses) if reuse else grads  # curv16
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)]
        losses = losses.detach()

        metrics = self._metrics(lanes, points) if record else {}
        probes: dict[int, Probe] = {}
        probe_now, self._probe_now = self._probe_now, False
        out: list[tuple[_Lane, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        row = leaf = 0
        for lane, x in zip(lanes, points, strict=True):
            m, n_leaves = lane.n_rows, len(lane.params)
            f = losses[row:row + m]
            lane_grads = grads[leaf:leaf + n_leaves]
            if self._ascent is not None:  # a min-max game: step along the descent field
                lane_grads = [torch.where(self._ascent, -g, g) for g in lane_grads]
            g = lane.flat_grads(lane_grads)
            row, leaf = row + m, leaf + n_leaves
            x_old = x.detach().clone()
            frozen = self._mark_divergence(lane, f, g)
            if lane.spec.closure_driven:
                if not self._closure_step(lane, lane_grads, frozen, batch):
                    continue  # waiting for a ranking: no step, no record
            else:
                self._take_step(lane, lane_grads, frozen, x_old)
            x_new = lane.points().detach()
            update = (x_new - x_old).norm(dim=-1)
            out.append((lane, f, g.norm(dim=-1), update, x_old))
            self._snapshot(lane, x_old)
            if self.probes is not None and (probe_now or self.probes.due(lane.step - 1)) \
                    and lane.diverged_at[0] < 0:
                probes[lane.id] = self._probe(lane, x_old[0], x_new[0] - x_old[0], batch)
        self.tick += 1
        self.compute_time += time.perf_counter() - t0
        records = [self._record(*item, metrics.get(item[0].id, {}), probes.get(item[0].id))
                   for item in out] if record else []
        self._apply_due()  # after the records: they describe the step as it was taken
        return records

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
        result, vectors = probe(
            lambda t: self.problem.loss(t[None], batch)[0], x, update, stability=lane.spec.stability,
            hyperparameters=lane.spec.read(lane.optimizer), config=self.probes,
            generator=self._probe_generator, step=lane.step - 1, dim=self.problem.dim, moment=moment,
            warm=warm, op=op)
        self._warm.pop(lane.id, None)
        self._warm[lane.id] = vectors  # the most recent last, for the next lane's first probe
        self.probe_time += time.perf_counter() - t0
        lane.counts = lane.counts + OracleCounts(hvps=result.hvps)
        return result

    def _probe_reuses_graph(self, lanes: list[_Lane]) -> bool:
        """Whether this step's gradient should keep its graph for a probe due after it.

        Only when the probed start is the whole batch (one lane, one start): the run's gradient is
        of the sum over all lanes and starts, and a product through it costs ~3x a one-row product
        at K*M = 2 and ~6x at 4 (a vmapped backward over every row), while building one row's graph
        costs ~1.2 gradients once per probe (benchmarks/hessian.py, section b); at K*M = 1 reuse
        saves that setup (~15% of a sharpness probe every step, section d). Also only for problems
        whose loss sees a copy of the leaves (several parameter tensors, concatenated): a single
        leaf is saved by the loss itself and the optimizer's in-place step would invalidate it.
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

    def _metrics(self, lanes: list[_Lane], points: list[torch.Tensor]) -> dict[int, dict[str, np.ndarray]]:
        """The problem's metrics at the current points of the lanes whose schedule is due (one
        batched call for all of them)."""
        fn = getattr(self.problem, "metrics", None)
        every = self.config.metrics_every
        due = [i for i, lane in enumerate(lanes) if fn is not None and lane.step % every == 0]
        if not due:
            return {}
        values = fn(torch.cat([points[i].detach() for i in due]))
        out, row = {}, 0
        for i in due:
            m = lanes[i].n_rows
            out[lanes[i].id] = {k: v[row:row + m].cpu().numpy() for k, v in values.items()}
            row += m
        return out

    def _snapshot(self, lane: _Lane, x: torch.Tensor) -> None:
        t = lane.step - 1  # the step x was taken from
        if self.problem.dim <= POSITION_MAX_DIM or t % self.config.snapshot_every:
            return
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

    def _mark_divergence(self, lane: _Lane, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        bad = (~torch.isfinite(f) | ~torch.isfinite(g).all(dim=-1)).cpu().numpy()
        newly = bad & (lane.diverged_at < 0)
        lane.diverged_at[newly] = lane.step
        return torch.as_tensor(lane.diverged_at >= 0, device=f.device)

    def _closure_step(self, lane: _Lane, grads: Sequence[torch.Tensor], frozen: torch.Tensor,
                      batch: Any) -> bool:
        """Step each live trajectory of a closure-driven lane with its own :class:`Oracles`.
        False (and nothing changed) when the first trajectory waits for a person's ranking."""
        n = len(lane.rows[0])
        gets_gradient = lane.spec.oracle in (Oracle.HVPS, Oracle.GRADIENTS)
        # ``awaiting`` is read by other threads (the UI polls it): a lane that still waits keeps its
        # entry (replaced below, never popped and set again, which would look like an answer), and
        # loses it only once it has stepped.
        stepped: OracleCounts | None = None
        for i, (row, opt) in enumerate(zip(lane.rows, lane.optimizers, strict=True)):
            if bool(frozen[i]):
                continue
            for p, g in zip(row, grads[i * n:(i + 1) * n], strict=True):
                # second-order and lookahead methods get the gradient the run computed anyway
                # (counted below);
                # every other oracle kind gets nothing it did not ask for
                p.grad = g if gets_gradient else None
            ranker = self._human_ranker(lane) if i == 0 and lane.values.get(HUMAN) else rank_by_value
            oracles = Oracles(lambda x: self.problem.loss(x, batch), row, ranker, self._ascent,
                              sampled_losses=self._sampled_losses(batch))
            try:
                opt.step(oracles)
            except AwaitingRanking as waiting:
                self.awaiting[lane.id] = waiting.candidates.detach().clone()
                return False
            if stepped is None:
                stepped = oracles.counts
        self.awaiting.pop(lane.id, None)
        lane.step += 1
        given = OracleCounts(function_values=1, gradients=1) if gets_gradient else OracleCounts()
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
    def _take_step(lane: _Lane, grads: Sequence[torch.Tensor], frozen: torch.Tensor,
                   x_old: torch.Tensor) -> None:
        any_frozen = bool(frozen.any())
        if lane.separable:
            for p, g in zip(lane.params, grads, strict=True):
                mask = frozen.reshape(-1, *([1] * (g.dim() - 1)))
                p.grad = torch.where(mask, torch.zeros_like(g), g) if any_frozen else g
            lane.optimizer.step()
            if any_frozen:  # momentum or weight decay would still move a frozen row: put it back
                with torch.no_grad():
                    for p, old in zip(lane.params, _split(x_old, lane.shapes), strict=True):
                        mask = frozen.reshape(-1, *([1] * (p.dim() - 1)))
                        p.copy_(torch.where(mask, old, p))
        else:
            n = len(lane.rows[0])
            for i, fz in enumerate(frozen.tolist()):
                for p, g in zip(lane.rows[i], grads[i * n:(i + 1) * n], strict=True):
                    p.grad = None if fz else g  # torch optimizers skip parameters without a gradient
            if len(lane.optimizers) == 1:
                lane.optimizer.step()
            else:  # one optimizer per start: a frozen start's is not stepped at all
                for opt, fz in zip(lane.optimizers, frozen.tolist(), strict=True):
                    if not fz:
                        opt.step()
        lane.step += 1
        lane.counts = lane.counts + OracleCounts(function_values=1, gradients=1)

    def _record(self, lane: _Lane, f: torch.Tensor, gnorm: torch.Tensor, update: torch.Tensor,
                x: torch.Tensor, metrics: Mapping[str, np.ndarray], curvature: Probe | None) -> Record:
        return make_record(
            tick=self.tick - 1,
            lane=lane.id,
            optimizer=lane.spec.name,
            step=lane.step - 1,
            loss=f.cpu().numpy(),
            grad_norm=gnorm.cpu().numpy(),
            update_norm=update.cpu().numpy(),
            position=x.cpu().numpy() if self.problem.dim <= POSITION_MAX_DIM else None,
            hyperparameters=lane.spec.read(lane.optimizer),
            counts=lane.counts,
            status=lane.status(),
            wall_time=self.compute_time,
            metrics=metrics,
            curvature=curvature,
        )

    def run(self, n_steps: int, record_every: int = 1) -> list[Record]:
        """Take ``n_steps`` steps, keeping the records of every ``record_every``-th one."""
        records: list[Record] = []
        for i in range(n_steps):
            records.extend(self.step(record=(i + 1) % record_every == 0))
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
