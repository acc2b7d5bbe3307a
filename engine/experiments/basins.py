r"""Basin maps: which known minimum an optimizer reaches from every start of a 2-D grid.

A grid of up to 1,000 x 1,000 starts (pixel centres of the problem's bounds, or of ``extent``) runs
as one batched program: chunks of ``chunk`` starts, each the rows of one :class:`engine.run.Run`
(so divergence freezing, oracle handling and the optimizer are exactly a race's), on the device
resolved once (CUDA when present). Every ``check_every`` steps each start is classified by the
nearest known minimum (``problem.minima``) within ``tol`` (Euclidean, in the problem's
coordinates); at the end a start's label is

* ``k >= 0``: it ended within ``tol`` of minimum ``k``; its steps to tolerance are the step from
  which it stayed there (at the checks);
* ``DIVERGED`` (-2): its loss or gradient became NaN/Inf;
* ``NOT_CONVERGED`` (-1): anything else (still moving, stuck elsewhere, at an unlisted minimum).

Chunks stream out as they finish (:func:`basin_chunks` is a generator; :func:`basin_map` takes an
``on_chunk`` callback), so a view draws as the grid fills. :meth:`BasinMap.race` turns a pixel into
the race from that start.

Rows are independent runs only for row-separable optimizers (``OptimizerSpec.row_separable``:
SGD, Adam, Lion, ...), which step the whole chunk as one tensor; any other optimizer gets one
parameter set (or one optimizer) per start, stepped in a Python loop, so its grid is capped at
``MAX_LOOPED_POINTS``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.device import resolve_device
from engine.events import Reset
from engine.problem import Problem
from engine.registry import get_spec
from engine.run import LaneConfig, Run, RunConfig

NOT_CONVERGED = -1
DIVERGED = -2
MAX_SIDE = 1_000
"""Largest grid side (1,000 x 1,000 = 10^6 starts)."""
MAX_STEPS = 100_000
MAX_LOOPED_POINTS = 4_096
"""Starts allowed for an optimizer that is not row-separable (one optimizer per start)."""


@dataclass(frozen=True)
class BasinChunk:
    """Starts ``index[0]..index[1]-1`` (flat, row-major: ``flat = i * nx + j``, i the y row)."""

    index: tuple[int, int]
    label: np.ndarray  # [n] int64
    steps: np.ndarray  # [n] int64, -1 unless label >= 0
    final: np.ndarray  # [n, 2] where each start ended
    seconds: float
    point_steps: int


@dataclass
class BasinMap:
    """A filled (or filling) map: ``label[i, j]`` and ``steps[i, j]`` for the start at
    ``(xs[j], ys[i])``."""

    problem: str
    options: dict[str, Any]
    optimizer: str
    hyperparameters: dict[str, Any]
    lane_options: dict[str, Any]
    xs: np.ndarray
    ys: np.ndarray
    minima: tuple[tuple[float, ...], ...]
    tol: float
    n_steps: int
    seed: int
    dtype: str
    device: str
    label: np.ndarray = field(init=False)
    steps: np.ndarray = field(init=False)
    filled: int = 0
    seconds: float = 0.0
    point_steps: int = 0

    def __post_init__(self) -> None:
        self.label = np.full((len(self.ys), len(self.xs)), NOT_CONVERGED, dtype=np.int64)
        self.steps = np.full((len(self.ys), len(self.xs)), -1, dtype=np.int64)

    def add(self, chunk: BasinChunk) -> None:
        a, b = chunk.index
        self.label.reshape(-1)[a:b] = chunk.label
        self.steps.reshape(-1)[a:b] = chunk.steps
        self.filled += b - a
        self.seconds += chunk.seconds
        self.point_steps += chunk.point_steps

    @property
    def point_steps_per_second(self) -> float:
        return self.point_steps / self.seconds if self.seconds > 0 else math.nan

    def start(self, i: int, j: int) -> tuple[float, float]:
        """The start of pixel (row ``i``, column ``j``)."""
        return float(self.xs[j]), float(self.ys[i])

    def pixel(self, x: float, y: float) -> tuple[int, int]:
        """The pixel whose start is nearest to ``(x, y)``."""
        return int(np.abs(self.ys - y).argmin()), int(np.abs(self.xs - x).argmin())

    def race(self, i: int, j: int) -> tuple[str, dict[str, Any], RunConfig]:
        """``(problem_name, options, RunConfig)``: the race from pixel (i, j)'s start."""
        lane = LaneConfig(self.optimizer, dict(self.hyperparameters), **self.lane_options)
        return (
            self.problem,
            dict(self.options),
            RunConfig(
                lanes=(lane,),
                start=self.start(i, j),
                n_starts=1,
                seed=self.seed,
                device=self.device,
                dtype=self.dtype,
            ),
        )

    def fractions(self) -> dict[int, float]:
        """Label -> fraction of the filled starts."""
        lab = (
            self.label.reshape(-1)[: self.filled] if self.filled < self.label.size else self.label.reshape(-1)
        )
        values, counts = np.unique(lab, return_counts=True)
        return {int(v): float(c) / lab.size for v, c in zip(values, counts, strict=True)}


def grid_axes(
    bounds: tuple[tuple[float, float], tuple[float, float]], nx: int, ny: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres: ``xs [nx]`` over bounds[0], ``ys [ny]`` over bounds[1]."""
    (x0, x1), (y0, y1) = bounds
    xs = x0 + (np.arange(nx) + 0.5) * (x1 - x0) / nx
    ys = y0 + (np.arange(ny) + 0.5) * (y1 - y0) / ny
    return xs, ys


def _check(
    problem: Problem,
    optimizer: str,
    grid: int | tuple[int, int],
    steps: int,
    tol: float,
    chunk: int,
    extent: Any,
) -> tuple[int, int, tuple[tuple[float, float], tuple[float, float]]]:
    if problem.dim != 2:
        raise ValueError(f"basin maps are for 2-D landscapes; {problem.name} has dim {problem.dim}")
    if not problem.minima:
        raise ValueError(f"{problem.name} lists no known minima to classify starts by")
    nx, ny = (grid, grid) if isinstance(grid, int) else grid
    for name, v, cap in (
        ("grid width", nx, MAX_SIDE),
        ("grid height", ny, MAX_SIDE),
        ("steps", steps, MAX_STEPS),
        ("chunk", chunk, 10**7),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= cap:
            raise ValueError(f"{name} must be an integer from 1 to {cap:,}, got {v!r}")
    if not (isinstance(tol, int | float) and tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive distance, got {tol!r}")
    spec = get_spec(optimizer)
    if not (spec.row_separable and not spec.closure_driven) and nx * ny > MAX_LOOPED_POINTS:
        raise ValueError(
            f"{optimizer} is not row-separable (one optimizer per start, stepped in a loop): "
            f"its basin map is limited to {MAX_LOOPED_POINTS:,} starts, got {nx * ny:,}"
        )
    if extent is None:
        if problem.bounds is None:
            raise ValueError(f"{problem.name} has no bounds: give extent=((x0, x1), (y0, y1))")
        extent = tuple(zip(problem.bounds.low, problem.bounds.high, strict=True))
    (x0, x1), (y0, y1) = extent
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"extent needs x0 < x1 and y0 < y1, got {extent}")
    if problem.bounds is None:
        raise ValueError(f"{problem.name} has no bounds (a run needs them to lay out its rows)")
    return nx, ny, ((float(x0), float(x1)), (float(y0), float(y1)))


@torch.no_grad()
def _classify(
    x: torch.Tensor, minima: torch.Tensor, tol: float, step: int, label: torch.Tensor, entered: torch.Tensor
) -> None:
    """Update each start's label (nearest minimum within ``tol``, else NOT_CONVERGED) in place, and
    the step at which it took its current label."""
    dist, k = torch.cdist(x, minima).min(dim=1)
    k = torch.where(dist <= tol, k, torch.full_like(k, NOT_CONVERGED))
    entered.copy_(torch.where(k != label, torch.full_like(entered, step), entered))
    label.copy_(k)


def basin_chunks(
    problem: Problem,
    optimizer: str,
    hyperparameters: Mapping[str, Any] | None = None,
    *,
    grid: int | tuple[int, int] = 200,
    steps: int = 500,
    tol: float = 1e-3,
    chunk: int = 65_536,
    extent: Any = None,
    device: str = "auto",
    dtype: str = "float64",
    seed: int = 0,
    check_every: int = 1,
    lane_options: Mapping[str, Any] | None = None,
    into: BasinMap | None = None,
) -> Iterator[BasinChunk]:
    """Yield the map chunk by chunk (see the module docstring). ``into``: a :class:`BasinMap` from
    :func:`new_map` to fill as chunks finish."""
    nx, ny, ext = _check(problem, optimizer, grid, steps, tol, chunk, extent)
    dev = resolve_device(device)  # once, for every chunk
    xs, ys = grid_axes(ext, nx, ny)
    gx, gy = np.meshgrid(xs, ys)  # [ny, nx]: row i is y
    points = torch.from_numpy(np.stack([gx.reshape(-1), gy.reshape(-1)], axis=1))
    minima = torch.tensor([m.x for m in problem.minima], dtype=torch.float64)
    lane = LaneConfig(optimizer, dict(hyperparameters or {}), **dict(lane_options or {}))
    for a in range(0, nx * ny, chunk):
        b = min(a + chunk, nx * ny)
        t0 = time.perf_counter()
        run = Run(problem, RunConfig(lanes=(lane,), n_starts=b - a, seed=seed, device=str(dev), dtype=dtype))
        run.starts = points[a:b].to(device=run.device, dtype=run.dtype)  # the grid, not random starts
        run.apply(Reset())
        mins = minima.to(device=run.device, dtype=run.dtype)
        (lane_id,) = run.lanes
        ln = run.lanes[lane_id]
        n = b - a
        entered = torch.full((n,), -1, dtype=torch.int64, device=run.device)
        label = torch.full((n,), NOT_CONVERGED, dtype=torch.int64, device=run.device)

        _classify(ln.points().detach(), mins, tol, 0, label, entered)
        for t in range(1, steps + 1):
            run.step(record=False)
            if t % check_every == 0 or t == steps:
                _classify(ln.points().detach(), mins, tol, t, label, entered)
        lab = label.cpu().numpy()
        st = np.where(lab >= 0, entered.cpu().numpy(), -1)
        lab = np.where(ln.diverged_at >= 0, DIVERGED, lab)
        st = np.where(lab >= 0, st, -1)
        out = BasinChunk(
            (a, b), lab, st, ln.points().detach().cpu().numpy(), time.perf_counter() - t0, n * steps
        )
        if into is not None:
            into.add(out)
        yield out


def new_map(
    problem: Problem,
    optimizer: str,
    hyperparameters: Mapping[str, Any] | None = None,
    *,
    grid: int | tuple[int, int] = 200,
    steps: int = 500,
    tol: float = 1e-3,
    extent: Any = None,
    device: str = "auto",
    dtype: str = "float64",
    seed: int = 0,
    lane_options: Mapping[str, Any] | None = None,
) -> BasinMap:
    """An empty :class:`BasinMap` laid out as :func:`basin_chunks` will fill it."""
    nx, ny, ext = _check(problem, optimizer, grid, steps, tol, 1, extent)
    xs, ys = grid_axes(ext, nx, ny)
    values = get_spec(optimizer).validate(hyperparameters)
    return BasinMap(
        problem.name,
        dict(getattr(problem, "params", ()) or ()),
        optimizer,
        values,
        dict(lane_options or {}),
        xs,
        ys,
        tuple(tuple(m.x) for m in problem.minima),
        float(tol),
        steps,
        seed,
        dtype,
        str(resolve_device(device)),
    )


def basin_map(
    problem: Problem,
    optimizer: str,
    hyperparameters: Mapping[str, Any] | None = None,
    *,
    on_chunk: Callable[[BasinMap, BasinChunk], None] | None = None,
    **kwargs: Any,
) -> BasinMap:
    """The whole map; ``on_chunk(map, chunk)`` after each chunk (the map filled so far)."""
    layout = {
        k: kwargs[k]
        for k in ("grid", "steps", "tol", "extent", "device", "dtype", "seed", "lane_options")
        if k in kwargs
    }
    out = new_map(problem, optimizer, hyperparameters, **layout)
    for ch in basin_chunks(problem, optimizer, hyperparameters, into=out, **kwargs):
        if on_chunk is not None:
            on_chunk(out, ch)
    return out
