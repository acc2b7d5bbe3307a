"""The experiments panel's model (no Panel): an experiment built from the current race, run off
the UI thread on Dask, its analysis, basin maps, and any row or pixel reopened as a live race.

:class:`ExperimentModel` holds the settings a person chooses (seeds, learning-rate points and
span, budget in oracle units, target, workers) as ``param`` parameters. :meth:`build` turns the
race into an :class:`engine.experiments.ExperimentSpec` (each lane's optimizer, its current
hyperparameters fixed, ``lr`` on a log grid around the lane's own value,
:meth:`ExperimentSpec.from_race`); :meth:`start` runs it on an
:class:`engine.experiments.ExperimentHandle` (a background thread driving a Dask LocalCluster, or
a given client); the page polls :attr:`progress` and :meth:`poll`. Cancel stops the pending tasks
and closes the cluster; what finished is kept. The figures' data come from
:mod:`engine.experiments.analysis`; :meth:`cost` says what they cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import param

from app.jobs import Job
from app.sharing import RaceSpec, RunParams
from engine.experiments import (
    BasinMap,
    ExperimentHandle,
    ExperimentResult,
    ExperimentSpec,
    basin_map,
    performance_profile,
    row_to_race,
    sensitivity,
    tuned_vs_default,
)
from engine.registry import get_spec
from engine.run import LaneConfig, RunConfig

CATALOGS = ["landscapes.catalog:LANDSCAPES", "landscapes.networks:NETWORKS"]


class ExperimentModel(param.Parameterized):
    """See the module docstring. ``session`` is an :class:`app.model.RaceSession` (or None in a
    notebook that gives the race as data to :meth:`build`)."""

    seeds = param.Integer(default=3, bounds=(1, 32), doc="run seeds per configuration")
    lr_points = param.Integer(default=9, bounds=(1, 64), doc="learning rates per optimizer")
    lr_decades = param.Number(default=2.0, bounds=(0.0, 4.0), doc="the grid spans lr x 10^(+-decades)")
    budget = param.Number(default=600.0, bounds=(1.0, 1e7), doc="oracle units per trajectory (gradient = 3)")
    target = param.Number(default=None, allow_None=True,
                          doc="loss to reach (empty: 1e-3 above the known minimum, where one is known)")
    n_workers = param.Integer(default=2, bounds=(1, 16), doc="processes of the local Dask cluster")
    basin_grid = param.Integer(default=60, bounds=(8, 1000), doc="starts per side of a basin map")
    basin_steps = param.Integer(default=200, bounds=(1, 100_000))

    def __init__(self, session: Any = None, **params: Any) -> None:
        super().__init__(**params)
        self.session = session
        self.spec: ExperimentSpec | None = None
        self.handle: ExperimentHandle | None = None
        self.result: ExperimentResult | None = None
        self.error = ""
        self.started = 0.0
        self.basin_job: Job | None = None
        self.basins: list[BasinMap] = []

    # -- building -------------------------------------------------------------------------------
    def race(self) -> tuple[str, dict[str, Any], RunConfig]:
        """The session's race as ``(problem, options, RunConfig)``."""
        s = self.session
        if s is None:
            raise ValueError("no race to build an experiment from: pass one to build()")
        start = None if s.start_x is None or s.start_y is None else (s.start_x, s.start_y)
        if s.problem_obj is not None and s.problem_obj.dim != 2:
            start = None
        lanes = tuple(lane.config() for lane in s.lanes)
        options = dict(s.problem_options)
        if s.is_network and s.batch_size is not None:  # as RunParams.make_problem: 0 is the full batch
            options["batch_size"] = s.batch_size or None
        return s.problem, options, RunConfig(lanes=lanes, start=start, n_starts=s.n_starts, seed=s.seed)

    def build(self, race: tuple[str, Mapping[str, Any], RunConfig] | None = None) -> ExperimentSpec:
        """The experiment around ``race`` (default: the session's). Raises ``SpecError``/``ValueError``
        with the user's terms before anything runs."""
        name, options, rc = race if race is not None else self.race()
        if not rc.lanes:
            raise ValueError("the race has no lanes: add an optimizer first")
        spec = ExperimentSpec.from_race(
            name,
            options,
            dataclasses_replace(rc, device="cpu"),
            budget=float(self.budget),
            target=self.target if self.target is not None else self.known_target(),
            search=self._search,
            seeds=tuple(range(rc.seed, rc.seed + self.seeds)),
        )
        spec.validate(CATALOGS)
        self.spec = spec
        return spec

    def known_target(self) -> float | None:
        """Without a typed target: 1e-3 above the problem's known global minimum (a performance
        profile needs a loss to reach); None where no minimum is known (networks: type one)."""
        problem = self.session.problem_obj if self.session is not None else None
        minima = [m.value for m in getattr(problem, "minima", None) or () if math.isfinite(m.value)]
        return min(minima) + 1e-3 if minima else None

    def _search(self, lane: LaneConfig) -> dict[str, list[float]]:
        """``lr`` on a log grid of ``lr_points`` around the lane's own value, inside the spec's range."""
        spec = get_spec(lane.optimizer)
        lr = spec.validate(lane.hyperparameters)["lr"]
        hp = spec.hyperparameter("lr")
        n, d = self.lr_points, self.lr_decades
        values = [lr * 10 ** (d * (2 * k / (n - 1) - 1)) for k in range(n)] if n > 1 else [lr]
        keep = [v for v in values if (hp.low is None or v >= hp.low) and (hp.high is None or v <= hp.high)]
        return {"lr": keep or [lr]}

    # -- running --------------------------------------------------------------------------------
    def start(self, client: Any = None) -> ExperimentHandle:
        """Run the built (or the session's) experiment on a background thread."""
        if self.running:
            raise RuntimeError("an experiment is already running: cancel it first")
        spec = self.spec or self.build()
        self.result, self.error, self.started = None, "", time.monotonic()
        kwargs: dict[str, Any] = {"catalogs": CATALOGS}
        kwargs.update({"client": client} if client is not None else {"n_workers": self.n_workers})
        self.handle = ExperimentHandle(spec, **kwargs)
        return self.handle

    @property
    def running(self) -> bool:
        return self.handle is not None and not self.handle.done()

    @property
    def fraction(self) -> float:
        p = None if self.handle is None else self.handle.progress
        return 0.0 if p is None else p.fraction

    @property
    def status(self) -> str:
        if self.error:
            return self.error
        if self.running:
            p = self.handle.progress if self.handle else None
            done = "starting the cluster…" if p is None else f"{p.trials_done} of {p.trials_total} trials"
            return f"experiment: {done} ({time.monotonic() - self.started:.0f} s)"
        if self.result is not None:
            meta = self.result.metadata
            return "cancelled: kept the finished tasks" if meta.get("cancelled") else "experiment done"
        return "idle"

    def cancel(self, wait: float | None = 30.0) -> None:
        """Stop it: pending tasks are cancelled, the cluster closed; finished rows are kept."""
        if self.handle is not None:
            self.handle.cancel()
            if wait:
                self.poll(wait)
        if self.basin_job is not None:
            self.basin_job.cancel()

    def poll(self, wait: float | None = None) -> bool:
        """True once, when the experiment has just finished (its result is then in ``result``)."""
        h = self.handle
        if h is None or (not h.done() and not wait):
            return False
        try:
            self.result = h.result(wait)
        except TimeoutError:
            return False
        except Exception as exc:  # shown in the page
            self.error = f"experiment failed: {exc}"
        self.handle = None
        return True

    # -- what it found --------------------------------------------------------------------------
    @property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame() if self.result is None else self.result.frame

    def sensitivity(self) -> pd.DataFrame:
        return sensitivity(self.frame) if len(self.frame) else pd.DataFrame()

    def tuned(self) -> pd.DataFrame:
        return tuned_vs_default(self.frame, n_boot=500) if len(self.frame) else pd.DataFrame()

    def profile(self) -> pd.DataFrame:
        """Performance profile over the experiment's problems and its seeds (each seed counts as a
        problem instance when there is one problem: a single problem has a trivial profile)."""
        f = self.frame
        if not len(f) or not f["steps_to_target"].ge(0).any():
            return pd.DataFrame()
        if f["problem"].nunique() == 1:
            f = f.assign(problem=f["problem"] + " seed " + f["seed"].astype(str))
        return performance_profile(f)

    def cost(self) -> str:
        """What the results cost: oracle units, wall time, rows."""
        f = self.frame
        if self.result is None or not len(f):
            return "nothing run yet"
        meta = self.result.metadata
        devices = ", ".join(map(str, meta.get("devices") or ["?"]))
        return (
            f"{len(f):,} rows (configuration x seed x start), {f['units'].sum():,.0f} oracle units, "
            f"{meta.get('seconds', math.nan):.1f} s wall on {devices}"
        )

    # -- reopening as races -----------------------------------------------------------------------
    def race_of_row(self, row: Mapping[str, Any] | pd.Series) -> RaceSpec:
        """The race a result row reproduces, as the page opens it."""
        name, options, rc = row_to_race(row, device="cpu")
        return _race_spec(name, options, rc)

    def race_of_pixel(self, bmap: BasinMap, i: int, j: int) -> RaceSpec:
        name, options, rc = bmap.race(i, j)
        return _race_spec(name, options, rc)

    def open(self, race: RaceSpec) -> bool:
        """Open ``race`` in the session (a live race)."""
        if self.session is None:
            raise ValueError("no session to open the race in")
        return bool(self.session.load(race, source="an experiment"))

    # -- basin maps -------------------------------------------------------------------------------
    def start_basins(self, race: tuple[str, Mapping[str, Any], RunConfig] | None = None) -> Job | None:
        """Basin maps of each lane's optimizer (2-D landscapes only), on a Job (cancellable)."""
        name, options, rc = race if race is not None else self.race()
        problem = self.session.problem_obj if self.session is not None else None
        if problem is None:
            from landscapes import get_landscape

            problem = get_landscape(name, **dict(options))
        if problem.dim != 2 or getattr(problem, "param_shapes", None) is not None:
            return None
        lanes = list(rc.lanes)
        grid, steps = self.basin_grid, self.basin_steps
        self.basins = []

        def work(job: Job) -> list[BasinMap]:
            out = []
            for k, lane in enumerate(lanes):
                job.check()
                # the lane as it races: its lr schedule and clipping change where it ends up
                wraps = {"schedules": dict(lane.schedules), "clip": lane.clip}
                m = basin_map(problem, lane.optimizer, dict(lane.hyperparameters), grid=grid, steps=steps,
                              device="cpu", lane_options=wraps)
                m.problem, m.options = name, dict(options)
                out.append(m)
                self.basins = list(out)
                job.progress((k + 1) / len(lanes), f"{lane.optimizer} done")
            return out

        self.basin_job = Job("basin maps", work).start()
        return self.basin_job


def _race_spec(name: str, options: Mapping[str, Any], rc: RunConfig) -> RaceSpec:
    start = None if rc.start is None or len(rc.start) != 2 else (float(rc.start[0]), float(rc.start[1]))
    params = RunParams(
        problem=name,
        options=tuple(sorted(dict(options).items())),
        start=start,
        n_starts=rc.n_starts,
        seed=rc.seed,
        batch_size=dict(options).get("batch_size"),
    )
    return RaceSpec(params, tuple(rc.lanes))


def dataclasses_replace(rc: RunConfig, **changes: Any) -> RunConfig:
    import dataclasses

    return dataclasses.replace(rc, **changes)


def finite(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]
