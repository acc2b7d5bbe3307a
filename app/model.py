"""The race session: a ``param.Parameterized`` model of one page's race. Never imports Panel.

Run-defining parameters (problem, its options, the typed function, starts, seed, batch size)
trigger ONE rebuild through one watcher. A rebuild builds the new problem and run first and swaps
them in only when both exist; a rejected change puts the parameters back, and since they then
describe the run already running, the same watcher has nothing to do: the race goes on untouched.
Lanes (:class:`app.lanes.Lane`) hold their hyperparameters; their changes, and every other action,
travel to the worker thread as engine events. The page's views read :meth:`RaceSession.drain`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

import param

from app.batch import Batch, Mark, axis_row
from app.lanes import MAX_LANES, Lane, free_slot, relabel
from app.ranking import Ranking
from app.sharing import CUSTOM, X_AXES, RaceError, RaceSpec, RunParams, check_race, lanes_of
from engine.events import (
    AddLane,
    LoggedEvent,
    Pause,
    RemoveLane,
    RequestProbe,
    Reset,
    Resume,
    SetHyperparameter,
    SetProbes,
    SwitchOptimizer,
)
from engine.instruments import LANDSCAPE_PROBES, NETWORK_PROBES, SCHEDULES, ProbeConfig
from engine.problem import Problem
from engine.records import Record
from engine.registry import HyperparameterError, available, get_spec
from engine.run import Run
from engine.views import to_plane
from engine.worker import RunWorker
from landscapes import (
    ExpressionError,
    NetworkProblem,
    available_landscapes,
    available_networks,
    get_landscape,
    get_network,
    parse_expression,
)
from landscapes.defaults import problem_defaults, retune

DEFAULT_RACE: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    (name, problem_defaults("rosenbrock", name)) for name in ("sgd", "momentum", "adam"))
"""The race a new page opens with: learning rates a student can watch reach the valley."""
RUN_PARAMS = ("problem", "problem_options", "expression", "start_x", "start_y", "n_starts", "seed",
              "batch_size")
PROBE_PARAMS = ("probe_schedule", "probe_every", "probe_top_k", "probe_density", "probe_trace")


def make_problem(p: RunParams) -> Problem:
    """The problem a race's settings name (raises with a message in the page's terms)."""
    if p.problem == CUSTOM:
        return parse_expression(p.expression)
    options = p.option_dict
    if p.problem in available_networks():
        if p.batch_size is not None:
            options["batch_size"] = p.batch_size or None  # 0: full batch
        return get_network(p.problem, **options)
    return get_landscape(p.problem, **options)


class RaceSession(param.Parameterized):
    """One page's race: its settings, its lanes, its run and the worker thread stepping it."""

    problem = param.Selector(default="rosenbrock", objects=[*available_landscapes(), CUSTOM,
                                                            *available_networks()],
                             doc="a 2-D landscape, a typed f(x, y), or a small network")
    expression = param.String(default=RunParams.expression, doc="f(x, y) of the custom landscape")
    problem_options = param.Dict(default={}, doc="keywords of the problem (quadratic's kappa, ...)")
    start_x = param.Number(default=None, allow_None=True, doc="start x (None: the problem's own)")
    start_y = param.Number(default=None, allow_None=True)
    n_starts = param.Integer(default=1, bounds=(1, 64), doc="start points (1 + random ones)")
    seed = param.Integer(default=0, bounds=(0, 2**31 - 1))
    batch_size = param.Integer(default=None, allow_None=True, bounds=(0, 100_000),
                               doc="networks: minibatch size (0: full batch; empty: the problem's own)")
    speed = param.Number(default=60.0, bounds=(1.0, 1000.0), doc="steps per second asked of the worker")
    x_axis = param.Selector(default="step", objects=list(X_AXES))
    on_switch = param.Selector(default="continue from here", objects=["continue from here", "restart"])
    probe_schedule = param.Selector(default="every", objects=list(SCHEDULES))
    probe_every = param.Integer(default=LANDSCAPE_PROBES.every, bounds=(1, 10_000))
    probe_top_k = param.Integer(default=1, bounds=(1, 10))
    probe_density = param.Boolean(default=False)
    probe_trace = param.Boolean(default=False)
    running = param.Boolean(default=False, doc="stepping continuously (False: paused)")
    message = param.String(default="", doc="the last error, in the page's terms")
    lanes = param.List(default=[], item_type=Lane, doc="the race's lanes, in the order shown")
    revision = param.Integer(default=0, doc="counts the runs built: views start over at each")

    def __init__(self, *, lanes: Sequence[tuple[str, Mapping[str, Any]]] | None = None,
                 optimizers: Sequence[str] | None = None, **params: Any) -> None:
        type(self).param.problem.objects = [*available_landscapes(), CUSTOM, *available_networks()]
        if params.get("problem") in available_networks():
            params.setdefault("probe_every", NETWORK_PROBES.every)
        super().__init__(**params)
        self.param.watch(self._rebuild, list(RUN_PARAMS), precedence=1_000_000)
        if lanes is None:
            lanes = [(n, {}) for n in optimizers] if optimizers is not None else DEFAULT_RACE
            problem = params.get("problem", "rosenbrock")  # the page's defaults, tuned to its problem
            lanes = [(n, retune(n, v, "rosenbrock", problem)) for n, v in lanes]
        self.worker: RunWorker | None = None
        self.latest: dict[int, Record] = {}
        self.ranking = Ranking()
        self.problem_obj: Problem | None = None
        self._applied: RunParams | None = None
        self._recent_slots: list[int] = []
        self._marks: list[Mark] = []
        self._scheduled: list[LoggedEvent] = []  # a replay's events, mirrored as the run reaches them
        self._pending_reset: Future | None = None
        self._pending_adds: list[tuple[Lane, Future]] = []
        self.origin = 0
        if not self.load(RaceSpec(self._requested(), lanes_of(lanes)), "this race"):
            raise ValueError(self.message)

    # -- building and swapping runs ----------------------------------------------------------------
    def _requested(self) -> RunParams:
        start = None if self.start_x is None or self.start_y is None else (self.start_x, self.start_y)
        return RunParams(problem=self.problem, options=tuple(sorted(self.problem_options.items())),
                         expression=self.expression, start=start, n_starts=self.n_starts, seed=self.seed,
                         batch_size=self.batch_size)

    def _probe_config(self, network: bool) -> ProbeConfig:
        base = NETWORK_PROBES if network else LANDSCAPE_PROBES
        return ProbeConfig(schedule=self.probe_schedule, every=self.probe_every, top_k=self.probe_top_k,
                           density=self.probe_density, trace=self.probe_trace, tol=base.tol, seed=self.seed)

    def load(self, spec: RaceSpec, source: str = "this race", *, keep_lanes: bool = False) -> bool:
        """Open ``spec``: check it, build its problem and run, and only then replace the running
        race. False, with the reason in ``message`` and nothing changed, if any part fails."""
        network = spec.params.is_network
        if spec.probes is None:  # the page's probe settings; each kind of problem has its own default
            probes = self._probe_config(network)
            if network != self.is_network:
                probes = replace(probes, every=(NETWORK_PROBES if network else LANDSCAPE_PROBES).every)
            spec = replace(spec, probes=probes.to_dict())
        try:
            spec = check_race(spec, source)
            problem = make_problem(spec.params)
            run = Run(problem, spec.config())
            if spec.paused:
                run.schedule([LoggedEvent(spec.ticks, Pause())])
            run.schedule(spec.events)
        except (RaceError, HyperparameterError, ExpressionError, ValueError, TypeError, RuntimeError) as exc:
            self.message = _message(exc, source)
            return False
        self._swap(problem, run, spec, keep_lanes)
        return True

    def _swap(self, problem: Problem, run: Run, spec: RaceSpec, keep_lanes: bool) -> None:
        old = self.worker
        if old is not None:
            old.stop()
        self.problem_obj = problem
        self._applied = spec.params
        if keep_lanes:  # the same lanes go on in the new run: same objects, ids, colours, widgets
            lanes = list(self.lanes)
        else:  # lanes in the same colour slots are reused (their cards and widgets stay on the page)
            by_slot = {lane.slot: lane for lane in self.lanes}
            lanes = [by_slot[i].become(config) if i in by_slot else
                     Lane.from_config(config, slot=i, on_change=self._on_lane_change)
                     for i, config in enumerate(spec.lanes)]
        for i, lane in enumerate(lanes):
            lane.engine_id = i
        relabel(lanes)
        self._scheduled = sorted(spec.events, key=lambda e: e.tick)
        self._marks, self._pending_reset, self._pending_adds, self.origin = [], None, [], 0
        self._removed: set[int] = set()
        self.ranking = Ranking()
        self.latest: dict[int, Record] = {}
        """Each lane's newest record (by the app's lane id), as drained."""
        self._resumed_at = 0
        self.worker = RunWorker(run, steps_per_second=spec.speed or self.speed).start()
        probes = run.config.probes
        x0 = run.starts[0].cpu().numpy()
        start = (float(x0[0]), float(x0[1])) if problem.dim == 2 else (None, None)
        updates = dict(problem=spec.params.problem, problem_options=spec.params.option_dict,
                       expression=spec.params.expression, start_x=start[0], start_y=start[1],
                       n_starts=spec.params.n_starts, seed=spec.params.seed,
                       batch_size=spec.params.batch_size, probe_schedule=probes.schedule,
                       probe_every=probes.every, probe_top_k=probes.top_k, probe_density=probes.density,
                       probe_trace=probes.trace, message="")
        if spec.speed is not None:
            updates["speed"] = spec.speed
        if spec.x_axis is not None:
            updates["x_axis"] = spec.x_axis
        self._applied = replace(spec.params, start=start if problem.dim == 2 else None)
        # the parameters now describe the run that is running: the rebuild watcher finds nothing to do
        self.param.update(**updates, lanes=lanes, revision=self.revision + 1)
        if spec.paused and spec.ticks == 0:
            self.running = False
        if self.running:
            self.worker.resume()

    def _rebuild(self, *_: Any) -> None:
        """The one watcher of the run-defining parameters (see the module docstring). It runs after
        every other watcher of a change (widgets included), so when it puts a refused change back,
        no watcher is left holding the refused value to set again."""
        requested = self._requested()
        if requested == self._applied or (self.start_x is None) != (self.start_y is None):
            return  # already running, or waiting for the other coordinate
        before = self._applied
        new_problem = (requested.problem, requested.options, requested.expression) != \
            (before.problem, before.options, before.expression)
        if new_problem:  # a new problem starts from its own start point
            requested = replace(requested, start=None)
        lanes = tuple(lane.config() for lane in self.lanes)
        if requested.problem != before.problem:  # each lane takes the new problem's defaults
            lanes = tuple(replace(c, hyperparameters=retune(c.optimizer, c.hyperparameters, before.problem,
                                                            requested.problem)) for c in lanes)
        if self.load(RaceSpec(requested, lanes), "this setting", keep_lanes=True):
            for lane, config in zip(self.lanes, lanes, strict=True):
                for name, value in config.hyperparameters.items():
                    lane.mirror(name, value)  # the run has them already: shown, not sent
        else:
            message = self.message
            start = before.start or (None, None)
            self.param.update(problem=before.problem, problem_options=before.option_dict,
                              expression=before.expression, start_x=start[0], start_y=start[1],
                              n_starts=before.n_starts, seed=before.seed, batch_size=before.batch_size)
            self.message = message

    @param.depends(*PROBE_PARAMS, watch=True)
    def _on_probes(self) -> None:
        try:
            config = self._probe_config(self.is_network)
        except ValueError as exc:
            self.message = str(exc)
            return
        self.worker.submit(SetProbes(config.to_dict()))

    @param.depends("speed", watch=True)
    def _on_speed(self) -> None:
        self.worker.steps_per_second = self.speed

    @property
    def is_network(self) -> bool:
        return isinstance(self.problem_obj, NetworkProblem)

    @property
    def is_drawn(self) -> bool:
        """Drawn as a picture: a bounded problem of 2 dimensions, or a simplex drawn on its triangle."""
        p = self.problem_obj
        return p.bounds is not None and not self.is_network and to_plane(p) is not None

    def spec(self) -> RaceSpec:
        """The running race as data: settings, lanes as configured, and the events so far."""
        log = self.worker.call(lambda run: run.event_log()).result(timeout=30)
        events = tuple(LoggedEvent(e.tick, e.event) for e in map(LoggedEvent.from_dict, log["events"])
                       if not isinstance(e.event, (Pause, Resume)))  # how it was watched, not the race
        return RaceSpec(self._applied, lanes_of(log["config"]["lanes"]), events, ticks=log["ticks"],
                        paused=not self.running, probes=log["config"]["probes"], speed=self.speed,
                        x_axis=self.x_axis)

    # -- actions ---------------------------------------------------------------------------------
    def play(self) -> None:
        self.running = True
        self._resumed_at = self.worker.tick
        self.worker.resume()

    def pause(self) -> None:
        self.running = False
        self.worker.pause()

    def step(self) -> None:
        """One step of every lane (pauses a running race first)."""
        if self.running:
            self.pause()
        self.worker.step_once()

    def reset(self) -> None:
        """Every lane back to its starts with fresh state; lanes keep their ids and colours."""
        def apply(run: Run) -> int:
            run.apply(Reset())
            return run.tick
        self._pending_reset = self.worker.call(apply)

    def probe_now(self) -> None:
        self.worker.submit(RequestProbe())

    def add_lane(self, optimizer: str, values: Mapping[str, Any] | None = None) -> Lane | None:
        """A new lane, starting from the starts at the next step (None, with a message, if refused)."""
        try:
            if len(self.lanes) >= MAX_LANES:
                raise ValueError(f"a race holds at most {MAX_LANES} optimizers")
            spec = get_spec(optimizer)
            spec.check_problem(self.problem_obj)
            values = {**problem_defaults(self.problem, optimizer), **(values or {})}
            lane = Lane(optimizer, values, slot=free_slot(self.lanes, self._recent_slots),
                        on_change=self._on_lane_change)
        except (HyperparameterError, ValueError) as exc:
            self.message = str(exc)
            return None
        event = AddLane(optimizer, lane.values())
        self._pending_adds.append((lane, self.worker.call(lambda run: run.apply(event))))
        self._set_lanes([*self.lanes, lane])
        self.mark(f"+ {lane.label}", lane)
        return lane

    def remove_lane(self, lane: Lane) -> None:
        if lane not in self.lanes:
            return
        if lane.engine_id >= 0:
            self.worker.submit(RemoveLane(lane.engine_id))
        else:  # still joining: removed from the run once it is there (see drain)
            self._removed.add(lane.id)
        self._recent_slots = [lane.slot] + [s for s in self._recent_slots if s != lane.slot]
        self.mark(f"− {lane.label}")
        self.latest.pop(lane.id, None)
        self._set_lanes([ln for ln in self.lanes if ln is not lane])

    def switch_optimizer(self, lane: Lane, optimizer: str) -> bool:
        """Swap a lane's optimizer (continue from its position, or restart: ``on_switch``): a new
        segment of the lane, with its own label. False, with a message, if the problem refuses it."""
        if optimizer == lane.optimizer:
            return True
        try:
            get_spec(optimizer).check_problem(self.problem_obj)
        except (HyperparameterError, ValueError) as exc:
            self.message = str(exc)
            return False
        old = lane.label
        lane.switch(optimizer, problem_defaults(self.problem, optimizer))
        self.worker.submit(SwitchOptimizer(lane.engine_id, optimizer, lane.values(),
                                           keep_position=self.on_switch == "continue from here"))
        self._set_lanes(list(self.lanes))
        self.mark(f"{old} → {lane.label}" + (" (restart)" if self.on_switch == "restart" else ""), lane)
        return True

    def _on_lane_change(self, lane: Lane, name: str, old: Any, value: Any) -> None:
        """A lane's hyperparameter changed (its widget): the engine gets it as an event."""
        self.worker.submit(SetHyperparameter(lane.engine_id, name, value))
        self.mark(f"{lane.label}: {name} {_show(old)} → {_show(value)}", lane)

    def _set_lanes(self, lanes: list[Lane]) -> None:
        relabel(lanes)
        self.lanes = lanes

    def mark(self, label: str, lane: Lane | None = None) -> None:
        tick = self.worker.tick if self.worker is not None else 0
        self._marks.append(Mark(tick, label, None if lane is None else lane.id))

    def lane(self, lane_id: int) -> Lane | None:
        return next((ln for ln in self.lanes if ln.id == lane_id), None)

    # -- reading ---------------------------------------------------------------------------------
    def drain(self) -> Batch:
        """Records and marks since the last call, per lane, with replayed events mirrored into the
        lanes as the run reaches them (called by the page's periodic pump)."""
        batch = Batch(origin=self.origin)
        worker = self.worker
        if self._pending_reset is not None:
            if not self._pending_reset.done():
                return batch  # the records wait in the worker until the reset has a tick
            self.origin = batch.origin = self._pending_reset.result()
            self._pending_reset, batch.reset = None, True
            records = [r for r in worker.drain() if r.tick >= self.origin]
            self._marks = [Mark(self.origin, "reset")]
        else:
            records = worker.drain()
        for lane, future in list(self._pending_adds):
            if future.done():
                self._pending_adds.remove((lane, future))
                if future.exception() is not None:
                    self.message = f"{lane.label} could not join: {future.exception()}"
                    self._set_lanes([ln for ln in self.lanes if ln is not lane])
                else:
                    lane.engine_id = future.result()
                    if lane.id in self._removed:
                        self.worker.submit(RemoveLane(lane.engine_id))
        by_engine = {ln.engine_id: ln for ln in self.lanes if ln.engine_id >= 0}
        for r in records:
            if self._scheduled and self._scheduled[0].tick <= r.tick:
                self._mirror(r.tick, batch)
                by_engine = {ln.engine_id: ln for ln in self.lanes if ln.engine_id >= 0}
            lane = by_engine.get(r.lane) or self._bind(r)
            if lane is not None:
                batch.records.setdefault(lane.id, []).append(r)
        self._mirror(worker.tick, batch)
        if batch.reset:
            self.latest = {}
        for lane_id, recs in batch.records.items():
            self.latest[lane_id] = recs[-1]
        batch.marks = [self._place(m) for m in self._marks]
        self._marks = []
        errors = worker.errors()
        if errors:
            self.message = errors[-1]
        if self.running and worker.run.paused and worker.tick > self._resumed_at:
            self.running = False  # a replayed race reached the step where it was saved paused
        return batch

    def _place(self, mark: Mark) -> Mark:
        """A mark's position on every x-axis: its lane's counts (or the race's furthest) now."""
        if mark.lane is not None:
            row = axis_row(self.latest.get(mark.lane), mark.tick, self.origin)
        else:
            rows = [axis_row(r, mark.tick, self.origin) for r in self.latest.values()] or \
                [axis_row(None, mark.tick, self.origin)]
            row = {k: max(r[k] for r in rows) for k in rows[0]}
        return replace(mark, at=row)

    def _bind(self, record: Record) -> Lane | None:
        """A lane a replayed event added: it gets the engine id of its first record."""
        for lane in self.lanes:
            if lane.engine_id == -2 and lane.optimizer == record.optimizer:
                lane.engine_id = record.lane
                return lane
        return None

    def _mirror(self, tick: int, batch: Batch) -> None:
        """Show the replayed events the run applied up to ``tick`` in the lanes (not sent back)."""
        lanes = list(self.lanes)
        changed = False
        while self._scheduled and self._scheduled[0].tick <= tick:
            e = self._scheduled.pop(0)
            ev = e.event
            lane = next((ln for ln in lanes if ln.engine_id == getattr(ev, "lane", None)), None)
            if isinstance(ev, SetHyperparameter) and lane is not None:
                before = getattr(lane.hyperparameters, ev.name)
                lane.mirror(ev.name, ev.value)
                text = f"{lane.label}: {ev.name} {_show(before)} → {_show(ev.value)}"
                self._marks.append(Mark(e.tick, text, lane.id))
            elif isinstance(ev, SwitchOptimizer) and lane is not None:
                old = lane.label
                lane.switch(ev.optimizer, ev.hyperparameters)
                self._marks.append(Mark(e.tick, f"{old} → {lane.spec.display_name}", lane.id))
                changed = True
            elif isinstance(ev, AddLane):
                new = Lane(ev.optimizer, ev.hyperparameters, slot=free_slot(lanes, self._recent_slots),
                           on_change=self._on_lane_change)
                new.engine_id = -2  # bound to the engine's id by its first record
                lanes.append(new)
                self._marks.append(Mark(e.tick, f"+ {new.spec.display_name}", new.id))
                changed = True
            elif isinstance(ev, RemoveLane) and lane is not None:
                lanes.remove(lane)
                self._marks.append(Mark(e.tick, f"− {lane.label}"))
                changed = True
            elif isinstance(ev, Reset):  # what came before it is gone from the page
                self.origin = batch.origin = e.tick
                batch.reset, batch.records = True, {}
                self._marks = [Mark(e.tick, "reset")]
        if changed:
            self._set_lanes(lanes)

    def private_problem(self) -> Future[Problem]:
        """A copy of the run's problem for another thread, taken by the worker between two steps
        (a network step swaps its module's parameters while it runs: never share or copy mid-step)."""
        return self.worker.call(lambda run: copy.deepcopy(run.problem))

    def close(self) -> None:
        """Stop the worker (the page closed). Returns at once; the thread ends at its next check."""
        if self.worker is not None:
            self.worker.stop()


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _message(exc: Exception, source: str) -> str:
    text = str(exc)
    if isinstance(exc, (RaceError, ExpressionError)) or text.startswith(source):
        return text
    if isinstance(exc, (TypeError, RuntimeError)):
        return f"{source} cannot be opened: a value has the wrong form or size"
    return f"{source} cannot be opened: {text}"


__all__ = ["DEFAULT_RACE", "Batch", "Mark", "RaceSession", "available", "make_problem"]
