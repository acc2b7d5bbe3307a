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

from app.batch import Batch, Mark
from app.lanes import MAX_LANES, SCHEDULED, Lane, free_slot, relabel
from app.mirror import Mirror, describe
from app.mirror import show as _show
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
    SetBatchSize,
    SetClip,
    SetHyperparameter,
    SetProbes,
    SetSchedule,
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
)
from landscapes.defaults import problem_defaults, retune

DEFAULT_RACE: tuple[tuple[str, dict[str, Any]], ...] = tuple(
    (name, problem_defaults("rosenbrock", name)) for name in ("sgd", "momentum", "adam"))
"""The race a new page opens with: learning rates a student can watch reach the valley."""
RUN_PARAMS = ("problem", "problem_options", "expression", "start_x", "start_y", "n_starts", "seed",
              "batch_size")
PROBE_PARAMS = ("probe_schedule", "probe_every", "probe_top_k", "probe_density", "probe_trace")
PROBE_PRESETS = ("default", "sharpness", "economy", "business", "full")
"""The probe presets the page offers: the problem kind's own default, the cheapest (λmax and its
threshold only) or Cockpit's three (:meth:`engine.instruments.ProbeConfig.sharpness` / ``economy`` / ...)."""


class RaceSession(Mirror, param.Parameterized):
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
    probe_preset = param.Selector(default="default", objects=list(PROBE_PRESETS),
                                  doc="what the probes measure and at what cost (Cockpit's presets)")
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
        self.held = False
        """Running but not stepping until :meth:`release` (a served page that has not loaded yet)."""
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
        self._probe_base: ProbeConfig | None = None  # the probes running: widgets change only their fields
        self._quiet_probes = False
        if not self.load(RaceSpec(self._requested(), lanes_of(lanes)), "this race"):
            raise ValueError(self.message)

    # -- building and swapping runs ----------------------------------------------------------------
    def _requested(self) -> RunParams:
        start = None if self.start_x is None or self.start_y is None else (self.start_x, self.start_y)
        return RunParams(problem=self.problem, options=tuple(sorted(self.problem_options.items())),
                         expression=self.expression, start=start, n_starts=self.n_starts, seed=self.seed,
                         batch_size=self.batch_size)

    def _preset_probes(self, network: bool, name: str | None = None) -> ProbeConfig:
        if (name or self.probe_preset) == "default":
            return NETWORK_PROBES if network else LANDSCAPE_PROBES
        return getattr(ProbeConfig, name or self.probe_preset)()

    def _preset_name(self, probes: ProbeConfig, network: bool) -> str:
        """The preset a race's probes are (a link's, a preset's), as the page shows it; the page's if none."""
        names = (self.probe_preset, *PROBE_PRESETS)  # the page's first: "economy" stays, not "default"
        known = {name: self._preset_probes(network, name) for name in names}
        return probes.preset(known) or self.probe_preset

    def _probe_config(self, network: bool) -> ProbeConfig:
        """The probes the widgets describe, on the running (or preset) config: ``replace`` keeps what
        no widget shows (tol, dtype, noise, estimate cosine, probe counts)."""
        same = network == self.is_network or self.problem_obj is None
        base = self._probe_base if same and self._probe_base is not None else self._preset_probes(network)
        fields = dict(schedule=self.probe_schedule, top_k=self.probe_top_k, density=self.probe_density,
                      trace=self.probe_trace, seed=self.seed)
        if same:  # a new kind of problem starts from its own default interval
            fields["every"] = self.probe_every
        return replace(base, **fields)

    def load(self, spec: RaceSpec, source: str = "this race", *, keep_lanes: bool = False) -> bool:
        """Open ``spec``: check it, build its problem and run, and only then replace the running
        race. False, with the reason in ``message`` and nothing changed, if any part fails."""
        network = spec.params.is_network
        if spec.probes is None:  # the page's probe settings; each kind of problem has its own default
            spec = replace(spec, probes=self._probe_config(network).to_dict())
        try:
            spec = check_race(spec, source)
            problem = spec.params.make_problem()
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
                     Lane.from_config(config, slot=i, on_change=self._on_lane_change,
                                      on_wrap=self._on_lane_wrap)
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
        probes = self._probe_base = run.config.probes
        x0 = run.starts[0].cpu().numpy()
        start = (float(x0[0]), float(x0[1])) if problem.dim == 2 else (None, None)
        updates = dict(problem=spec.params.problem, problem_options=spec.params.option_dict,
                       expression=spec.params.expression, start_x=start[0], start_y=start[1],
                       n_starts=spec.params.n_starts, seed=spec.params.seed,
                       batch_size=spec.params.batch_size, probe_schedule=probes.schedule,
                       probe_every=probes.every, probe_top_k=probes.top_k, probe_density=probes.density,
                       probe_trace=probes.trace, message="",
                       probe_preset=self._preset_name(probes, spec.params.is_network))
        if spec.speed is not None:
            updates["speed"] = spec.speed
        if spec.x_axis is not None:
            updates["x_axis"] = spec.x_axis
        self._applied = replace(spec.params, start=start if problem.dim == 2 else None)
        # the parameters now describe the run that is running: the rebuild watcher finds nothing to do
        self._quiet_probes = True
        try:
            self.param.update(**updates, lanes=lanes, revision=self.revision + 1)
        finally:
            self._quiet_probes = False
        if spec.paused and spec.ticks == 0:
            self.running = False
        if self.running and not self.held:
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
        if self._quiet_probes:
            return
        try:
            config = self._probe_config(self.is_network)
        except ValueError as exc:
            self.message = str(exc)
            return
        if config != self._probe_base:
            self._probe_base = config
            self.worker.submit(SetProbes(config.to_dict()))

    @param.depends("probe_preset", watch=True)
    def _on_probe_preset(self) -> None:
        """A preset replaces the whole probe config (its widgets show its values)."""
        if self._quiet_probes:  # a loaded race's own preset shown
            return
        config = replace(self._preset_probes(self.is_network), seed=self.seed)
        self._quiet_probes = True
        try:
            self.param.update(probe_schedule=config.schedule, probe_every=config.every,
                              probe_top_k=config.top_k, probe_density=config.density,
                              probe_trace=config.trace)
        finally:
            self._quiet_probes = False
        self._probe_base = config
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
    def release(self) -> None:
        """The page has loaded: a race held until then (:attr:`held`) starts stepping. Only a held
        race is resumed: a link's race that has replayed to its pause stays paused."""
        if self.held:
            self.held = False
            if self.running:
                self.play()

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
                        on_change=self._on_lane_change, on_wrap=self._on_lane_wrap)
        except (HyperparameterError, ValueError) as exc:
            self.message = str(exc)
            return None
        config = lane.config()
        event = AddLane(optimizer, config.hyperparameters, config.schedules, _plain(config.clip),
                        _plain(config.batch_size))
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
        config = lane.config()  # the lr schedule goes on with the new optimizer, as do clip and batch
        self.worker.submit(SwitchOptimizer(lane.engine_id, optimizer, config.hyperparameters,
                                           keep_position=self.on_switch == "continue from here",
                                           schedules=config.schedules, clip=_plain(config.clip),
                                           batch_size=_plain(config.batch_size)))
        self._set_lanes(list(self.lanes))
        self.mark(f"{old} → {lane.label}" + (" (restart)" if self.on_switch == "restart" else ""), lane)
        return True

    def _on_lane_change(self, lane: Lane, name: str, old: Any, value: Any) -> None:
        """A lane's hyperparameter changed (its widget): the engine gets it as an event."""
        self.worker.submit(SetHyperparameter(lane.engine_id, name, value))
        self._marks.append(Mark.of_change(self._tick(), name, f"{lane.label}: {name}", _show(old),
                                          _show(value), lane.id))

    def _on_lane_wrap(self, lane: Lane, what: str, old: Any, new: Any) -> None:
        """A lane's lr schedule, clipping or batch size changed (its card): one engine event."""
        plain = _plain(new)
        event = {"schedule": lambda: SetSchedule(lane.engine_id, SCHEDULED, plain),
                 "clip": lambda: SetClip(lane.engine_id, plain),
                 "batch": lambda: SetBatchSize(lane.engine_id, plain)}[what]()
        self.worker.submit(event)
        self._marks.append(Mark.of_change(self._tick(), what, f"{lane.label}:", describe(what, old),
                                          describe(what, new), lane.id))

    def _set_lanes(self, lanes: list[Lane]) -> None:
        relabel(lanes)
        self.lanes = lanes

    def mark(self, label: str, lane: Lane | None = None) -> None:
        self._marks.append(Mark(self._tick(), label, None if lane is None else lane.id))

    def _tick(self) -> int:
        return self.worker.tick if self.worker is not None else 0

    def lane(self, lane_id: int) -> Lane | None:
        return next((ln for ln in self.lanes if ln.id == lane_id), None)

    def private_problem(self) -> Future[Problem]:
        """A copy of the run's problem for another thread, taken by the worker between two steps
        (a network step swaps its module's parameters while it runs: never share or copy mid-step)."""
        return self.worker.call(lambda run: copy.deepcopy(run.problem))

    def close(self) -> None:
        """Stop the worker (the page closed). Returns at once; the thread ends at its next check."""
        if self.worker is not None:
            self.worker.stop()


def _plain(wrapper: Any) -> dict[str, Any] | None:
    return None if wrapper is None else wrapper.to_dict()


def _message(exc: Exception, source: str) -> str:
    text = str(exc)
    if isinstance(exc, (RaceError, ExpressionError)) or text.startswith(source):
        return text
    if isinstance(exc, (TypeError, RuntimeError)):
        return f"{source} cannot be opened: a value has the wrong form or size"
    return f"{source} cannot be opened: {text}"


__all__ = ["DEFAULT_RACE", "Batch", "Mark", "RaceSession", "available"]
