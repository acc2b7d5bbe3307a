r"""From a spec to batched :class:`engine.run.Run`\ s, and one task's program.

**Layout.** An experiment's unit of work is a :class:`Task`: one problem, one optimizer entry,
a chunk of its configurations and its run seeds. Each seed's start rows are always rows of one
run (``RunConfig.n_starts``). The configurations are

* **lanes of one Run** (layout ``"lanes"``) when that is bit-for-bit the same as running each
  alone: the problem's loss is row-wise (an analytic landscape evaluates each row with elementwise
  ops, so a row's value and gradient do not depend on the other rows) and the optimizer draws no
  random numbers (a seeded optimizer's seed is derived from its lane's index, which is 0 in a race
  of one lane);
* **one Run each, in turn, inside the task** (layout ``"separate"``) otherwise: for a network
  (a problem with ``param_shapes``) the loss is a vmapped ``functional_call`` whose batched
  matmuls may round differently with the batch size (measured: a single row's gradient differs
  in the last bits from the same row inside a batch), and for a seeded optimizer. The run of a
  configuration then *is* the race ``row_to_race`` reopens, so equality holds by construction.

Chunks are split only as memory requires (``TASK_BYTES`` per Run, estimated per lane by
:func:`engine.limits.estimate_run` for a named problem, else from rows x parameters: only the lanes
layout grows a Run with its chunk), plus, when the executor asks for more tasks than there are, to
keep workers busy (configurations are split first, then seeds).

**A trajectory's extent.** Record *t* of a lane describes iterate :math:`x_t` and carries the
oracle calls made through step *t*. A lane steps while it has budget: its last iterate is
:math:`x_T` with *T* the first step whose calls would exceed the budget (or ``max_steps``).
Records 0..T are the trajectory: the final loss is :math:`f(x_T)`, the best loss the least of
:math:`f(x_0..x_T)`, the units spent those of steps 0..T-1, and the time to target the units spent
before the first iterate whose loss is <= the target (0 if :math:`x_0` already is).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.device import make_generator
from engine.events import RemoveLane
from engine.experiments.budget import OracleCosts
from engine.experiments.problems import ProblemRef
from engine.experiments.spec import Configuration, ExperimentSpec
from engine.limits import DEFAULT_LIMITS, LimitError, estimate_run
from engine.problem import Problem
from engine.records import OracleCounts, Record
from engine.registry import get_spec
from engine.run import LaneConfig, Run, RunConfig

TASK_BYTES = 256 * 2**20
"""Estimated memory one task may use (parameters, gradients, optimizer state and activations of
all its rows); larger chunks are split."""


@dataclass(frozen=True)
class Task:
    """One unit of work: ``configs`` of one entry on one problem with its run ``seeds`` (plain
    data). Several seeds only in the lanes layout on a problem without minibatches: rows of one Run."""

    key: str
    problem: str
    options: dict[str, Any]
    entry: str
    optimizer: str
    seeds: tuple[int, ...]
    configs: tuple[Configuration, ...]
    layout: str  # "lanes" | "separate"
    starts: int
    start: tuple[float, ...] | None
    budget: float
    costs: OracleCosts
    max_steps: int
    target: float | None
    dtype: str
    device: str
    fused: bool = True

    @property
    def n_rows(self) -> int:
        return len(self.configs) * len(self.seeds) * self.starts


def race_config(
    config: Configuration,
    *,
    seed: int,
    starts: int,
    start: tuple[float, ...] | None,
    device: str,
    dtype: str,
    fused: bool = True,
) -> RunConfig:
    """The race of one configuration: what an experiment's trajectory equals, and what
    ``row_to_race`` reopens."""
    return RunConfig(
        lanes=(config.lane_config(),),
        start=start,
        n_starts=starts,
        seed=seed,
        device=device,
        dtype=dtype,
        fused=fused,
    )


def layout_for(problem: Problem, optimizer: str) -> str:
    """``"lanes"`` when batching configurations as lanes keeps each bit-exact (see module doc)."""
    rowwise = getattr(problem, "param_shapes", None) is None
    return "lanes" if rowwise and not get_spec(optimizer).seeded else "separate"


def seeds_as_rows(problem: Problem, optimizer: str) -> bool:
    """Whether run seeds may be rows of one Run (see the module doc): the lanes layout, a problem
    that draws no minibatch and an optimizer whose oracle calls per step are the same for every row."""
    spec = get_spec(optimizer)
    return (
        layout_for(problem, optimizer) == "lanes"
        and problem.sample_batch(make_generator(0)) is None
        and not spec.closure_driven
        and not spec.per_trajectory
    )


_UNCAPPED = dataclasses.replace(DEFAULT_LIMITS, max_lanes=2**62, max_starts=2**62)
"""The per-session caps on lanes and starts are the app's; an experiment is bounded by its spec."""


def lane_bytes(ref: ProblemRef, problem: Problem, optimizer: str, rows: int) -> int:
    """Estimated memory of one lane of ``rows`` rows: the project's estimate
    (:func:`engine.limits.estimate_run`, without the problem's own data, held once) for a named
    problem; else 8 float64 copies of every row's parameters plus a network's activations."""
    if ref.problem is None:
        try:
            est = estimate_run(
                ref.name,
                ref.options,
                RunConfig(lanes=(LaneConfig(optimizer, {}),), n_starts=rows),
                limits=_UNCAPPED,
            )
            return int(sum(v for k, v in est.memory if k != "problem data and setup"))
        except (ValueError, LimitError):
            pass  # a problem the limits do not know: the rough estimate below
    return task_bytes(problem, rows, 1)


def task_bytes(problem: Problem, starts: int, n_configs: int) -> int:
    """A rough upper estimate of one task's memory: 8 float64 copies of every row's parameters
    (point, gradient, old point, optimizer state), plus a network's activations on its data."""
    per_row = 8 * 8 * int(problem.dim)
    X = getattr(problem, "X_train", None)
    if X is not None:
        per_row += 8 * 4 * int(X.shape[0]) * max(int(np.prod(X.shape[1:])), 64)
    return per_row * starts * n_configs


def plan(spec: ExperimentSpec, problems: dict[str, Problem], *, min_tasks: int = 1) -> list[Task]:
    """All tasks of ``spec`` (problems as returned by :meth:`ExperimentSpec.validate`)."""
    tasks: list[Task] = []
    units: list[tuple[Any, Any, list[Configuration], str, list[tuple[int, ...]], int, bool]] = []
    for ref in spec.problems:
        problem = problems[ref.name]
        for entry in spec.optimizers:
            configs = spec.configurations(entry)
            layout = layout_for(problem, entry.name)
            seeds = list(spec.seeds)
            stacked = seeds_as_rows(problem, entry.name)
            if stacked:
                # the seeds of a configuration are rows of its lane; a lane too big alone splits them
                per_seed = max(1, lane_bytes(ref, problem, entry.name, spec.starts))
                k = max(1, min(len(seeds), TASK_BYTES // per_seed))
                groups = [tuple(seeds[i : i + k]) for i in range(0, len(seeds), k)]
            else:
                groups = [(s,) for s in seeds]
            if layout == "lanes":  # lanes share one Run, so its memory grows with the chunk
                rows = max(len(g) for g in groups) * spec.starts
                per_chunk = max(1, TASK_BYTES // max(1, lane_bytes(ref, problem, entry.name, rows)))
            else:  # separate Runs go one at a time
                per_chunk = len(configs)
            units.append((ref, entry, configs, layout, groups, per_chunk, not stacked))
    n_base = sum(math.ceil(len(c) / k) * len(g) for _, _, c, _, g, k, _ in units)
    split = max(1, math.ceil(min_tasks / max(n_base, 1)))
    for ref, entry, configs, layout, groups, per_chunk, fused in units:
        size = max(1, min(per_chunk, math.ceil(len(configs) / split)))
        n_chunks = math.ceil(len(configs) / size)
        if n_chunks < split and len(groups) == 1 and len(groups[0]) > 1:
            # still too few tasks for the workers: split the seeds too (each group stays rows of a Run)
            k = max(1, math.ceil(len(groups[0]) / math.ceil(split / n_chunks)))
            groups = [groups[0][i : i + k] for i in range(0, len(groups[0]), k)]
        for seeds in groups:
            for c0 in range(0, len(configs), size):
                chunk = tuple(configs[c0 : c0 + size])
                tasks.append(
                    Task(
                        key=f"{ref.name}|{entry.label}|seed={','.join(map(str, seeds))}"
                        f"|configs={c0}-{c0 + len(chunk) - 1}",
                        problem=ref.name,
                        options=dict(ref.options),
                        entry=entry.label,
                        optimizer=entry.name,
                        seeds=seeds,
                        configs=chunk,
                        layout=layout,
                        starts=spec.starts,
                        start=ref.start,
                        budget=float(spec.budget),
                        costs=spec.costs,
                        max_steps=spec.max_steps,
                        target=spec.target_for(ref),
                        dtype=spec.dtype,
                        device=spec.device,
                        fused=fused,
                    )
                )
    return tasks


class SeedRowsRun(Run):
    """A :class:`engine.run.Run` whose rows are the start rows of several run seeds, seed-major:
    rows ``i*M .. (i+1)*M - 1`` are exactly the starts a run with ``seed=seeds[i]`` draws. Only for
    problems without minibatches (the run's generator then draws nothing but starts)."""

    def __init__(self, problem: Problem, config: RunConfig, seeds: Sequence[int]) -> None:
        self._seeds = tuple(seeds)
        super().__init__(problem, config)

    def _make_starts(self) -> torch.Tensor:
        parts = []
        for s in self._seeds:
            self._generator = make_generator(s)
            parts.append(super()._make_starts())
        self._generator = make_generator(self.config.seed)
        return torch.cat(parts)


def slice_record(record: Record, rows: slice, n_rows: int) -> Record:
    """The record of ``rows`` only (every per-row column sliced; diverged rows renumbered)."""

    def cut(v: Any) -> Any:
        return v[rows] if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n_rows else v

    start = rows.start or 0
    keep = range(n_rows)[rows]
    return dataclasses.replace(
        record,
        loss=cut(record.loss),
        grad_norm=cut(record.grad_norm),
        update_norm=cut(record.update_norm),
        position=cut(record.position),
        diverged_at=cut(record.diverged_at),
        metrics={k: cut(v) for k, v in record.metrics.items()},
        diagnostics={k: cut(v) for k, v in record.diagnostics.items()},
        reasons={i - start: why for i, why in record.reasons.items() if i in keep},
    )


@dataclass
class _Trajectories:
    """What one lane's records reduce to, row by row, as they arrive."""

    config: Configuration
    n_rows: int
    budget: float
    costs: OracleCosts
    max_steps: int
    target: float | None
    best: np.ndarray = field(init=False)
    hit_step: np.ndarray = field(init=False)
    hit_units: np.ndarray = field(init=False)
    hit_seconds: np.ndarray = field(init=False)
    spent: OracleCounts = field(default_factory=OracleCounts)
    units: float = 0.0
    seconds: float = 0.0
    last: Record | None = None

    def __post_init__(self) -> None:
        self.best = np.full(self.n_rows, np.inf)
        self.hit_step = np.full(self.n_rows, -1, dtype=np.int64)
        self.hit_units = np.full(self.n_rows, np.nan)
        self.hit_seconds = np.full(self.n_rows, np.nan)

    def add(self, record: Record) -> bool:
        """Fold in record t; True when x_t is the trajectory's last iterate (x_T)."""
        loss = np.asarray(record.loss)
        finite = np.isfinite(loss)
        self.best = np.where(finite, np.minimum(self.best, np.where(finite, loss, np.inf)), self.best)
        if self.target is not None:
            new = (self.hit_step < 0) & finite & (loss <= self.target)
            self.hit_step[new] = record.step
            self.hit_units[new] = self.units
            self.hit_seconds[new] = self.seconds
        self.last = record
        units = self.costs.units(record.counts)
        if units > self.budget or record.step >= self.max_steps:
            return True
        self.spent, self.units = record.counts, units
        # no row runs on (every one diverged, or the lane raised): frozen rows call no oracle, so the
        # budget would never be reached and the task would step to max_steps doing nothing
        return record.stopped is not None or not (np.asarray(record.diverged_at) < 0).any()

    def rows(self) -> list[dict[str, Any]]:
        rec = self.last
        assert rec is not None
        out = []
        for i in range(self.n_rows):
            diverged = int(rec.diverged_at[i])
            out.append(
                {
                    "start": i,
                    "final_loss": float(rec.loss[i]),
                    "best_loss": float(self.best[i]) if np.isfinite(self.best[i]) else math.nan,
                    "steps": int(rec.step),
                    "units": float(self.units),
                    **{k: int(v) for k, v in self.spent.as_dict().items()},
                    "steps_to_target": int(self.hit_step[i]),
                    "units_to_target": float(self.hit_units[i]),
                    "seconds_to_target": float(self.hit_seconds[i]),
                    "diverged_at": diverged,
                    "wall_time": float(self.seconds),
                }
            )
        return out


@dataclass
class TaskResult:
    key: str
    rows: list[dict[str, Any]]
    records: dict[tuple[int, int], list[Record]] | None
    """With ``keep_records``: each (configuration index, seed)'s records, its rows only."""
    device: str
    seconds: float


def run_task(
    task: Task, problem: Problem, *, keep_records: bool = False, checkpoint: Callable[[], None] | None = None
) -> TaskResult:
    """Run one task's batched program and reduce its records to result rows (one per
    configuration x seed x start). ``keep_records`` also returns every record by (configuration
    index, seed) (for tests). ``checkpoint`` is called between steps (it may raise to stop the task)."""
    t0 = time.perf_counter()
    groups = [task.configs] if task.layout == "lanes" else [(c,) for c in task.configs]
    if len(task.seeds) > 1 and task.layout != "lanes":
        raise ValueError(f"{task.key}: several seeds share a Run only in the lanes layout")
    rows: list[dict[str, Any]] = []
    kept: dict[tuple[int, int], list[Record]] | None = {} if keep_records else None
    device = ""
    m, n_rows = task.starts, len(task.seeds) * task.starts
    for group in groups:
        config = RunConfig(
            lanes=tuple(c.lane_config() for c in group),
            start=task.start,
            n_starts=task.starts,
            seed=task.seeds[0],
            device=task.device,
            dtype=task.dtype,
            fused=task.fused,
        )
        run = Run(problem, config) if len(task.seeds) == 1 else SeedRowsRun(problem, config, task.seeds)
        device = str(run.device)
        lanes = {
            lane_id: _Trajectories(c, n_rows, task.budget, task.costs, task.max_steps, task.target)
            for lane_id, c in zip(sorted(run.lanes), group, strict=True)
        }
        active = set(lanes)
        while active:
            if checkpoint is not None:
                checkpoint()
            before = run.compute_time
            records = run.step()
            share = (run.compute_time - before) / len(active)
            for rec in records:
                tr = lanes[rec.lane]
                if kept is not None:
                    for i, seed in enumerate(task.seeds):
                        part = (
                            rec
                            if len(task.seeds) == 1
                            else slice_record(rec, slice(i * m, (i + 1) * m), n_rows)
                        )
                        kept.setdefault((tr.config.index, seed), []).append(part)
                done = tr.add(rec)
                if not done:
                    tr.seconds += share
                else:
                    active.discard(rec.lane)
                    run.apply(RemoveLane(rec.lane))
        for tr in lanes.values():
            for i, row in enumerate(tr.rows()):
                seed, start = task.seeds[i // m], i % m
                rows.append(_describe(task, tr.config, seed) | row | {"start": start, "device": device})
    return TaskResult(task.key, rows, kept, device, time.perf_counter() - t0)


def _describe(task: Task, config: Configuration, seed: int) -> dict[str, Any]:
    return {
        "problem": task.problem,
        "problem_options": json.dumps(_plain(task.options), sort_keys=True),
        "entry": task.entry,
        "optimizer": task.optimizer,
        "config": config.index,
        "is_default": config.is_default,
        "seed": seed,
        "starts": task.starts,
        "start_point": None if task.start is None else json.dumps(list(task.start)),
        "target": math.nan if task.target is None else task.target,
        "dtype": task.dtype,
        "fused": task.fused,
        "run_device": task.device,
        "hyperparameters": json.dumps(dict(config.hyperparameters), sort_keys=True),
        "lane_options": json.dumps(_plain(dict(config.lane)), sort_keys=True, default=str),
        **{f"hp_{k}": v for k, v in config.hyperparameters.items()},
    }


def _plain(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def expected_keys(tasks: Sequence[Task]) -> set[tuple[str, str, int, int, int]]:
    """The (problem, entry, config, seed, start) of every trial the tasks will produce."""
    return {
        (t.problem, t.entry, c.index, seed, s)
        for t in tasks
        for c in t.configs
        for seed in t.seeds
        for s in range(t.starts)
    }
