"""A lane of the race as a ``param`` object: its optimizer, its colour, and its hyperparameters as
parameters built from the optimizer's spec. Never imports Panel (views render it with ``pn.Param``).

One value, one home: a lane's learning rate lives on ``lane.hyperparameters.lr`` and nowhere else in
the app. The lane's watcher hands every change to ``on_change`` (the race session), which sends it to
the engine as an event; the engine's optimizer then holds it (``param_groups``), which is what a run
is. The lane's lr schedule, gradient clipping and batch size live on ``lane.wrap`` (a
:class:`Wrappers`), go into ``lane.config()`` (so links, logs, export and replay carry them) and
reach the engine as ``SetSchedule`` / ``SetClip`` / ``SetBatchSize`` events.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import param

from engine.batching import BatchSize
from engine.clipping import Clip
from engine.registry import Hyperparameter, OptimizerSpec, get_spec
from engine.run import LaneConfig
from engine.schedules import Schedule

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
"""Category10 without grey and olive (they vanish on the viridis heatmap). A lane takes one of these
slots when it joins and keeps it (and its colour) until it leaves: at most one lane per slot."""
MAX_LANES = len(PALETTE)


def lane_color(index: int) -> str:
    """The colour of slot (or engine lane) ``index`` (pictures of an exported race use it)."""
    return PALETTE[index % len(PALETTE)]

_ids = itertools.count()


def _parameter(hp: Hyperparameter) -> param.Parameter:
    """The ``param`` twin of a spec's hyperparameter: same default, bounds and open ends."""
    if hp.kind == "bool":
        return param.Boolean(default=bool(hp.default), doc=hp.doc, label=hp.name)
    if hp.kind == "choice":  # pn.Param renders a Selector as a drop-down of its options
        return param.Selector(default=str(hp.default), objects=list(hp.choices), doc=hp.doc, label=hp.name)
    bounds = (hp.low, hp.high)
    if hp.kind == "int":
        return param.Integer(default=int(hp.default), bounds=bounds, doc=hp.doc, label=hp.name,
                             inclusive_bounds=(hp.include_low, hp.include_high))
    return param.Number(default=float(hp.default), bounds=bounds, doc=hp.doc, label=hp.name,
                        inclusive_bounds=(hp.include_low, hp.include_high))


_CLASSES: dict[tuple[str, int], type[param.Parameterized]] = {}


def hyperparameter_class(spec: OptimizerSpec) -> type[param.Parameterized]:
    """A ``param.Parameterized`` class with one parameter per hyperparameter of ``spec`` (one class
    per spec). Log-scale ones are listed in the class's ``log_scale`` attribute."""
    key = (spec.name, id(spec))
    if key in _CLASSES:
        return _CLASSES[key]
    cls = param.parameterized_class(
        f"{spec.name}_hyperparameters", {hp.name: _parameter(hp) for hp in spec.hyperparameters})
    cls.log_scale = frozenset(hp.name for hp in spec.hyperparameters if hp.log)
    _CLASSES[key] = cls
    return cls


SCHEDULED = "lr"
"""The hyperparameter a lane card schedules (schedules of others, from a link or log, are kept)."""
NO_CLIP = "none"
OWN_BATCH = "problem's own"


class Wrappers(param.Parameterized):
    """What wraps a lane's optimizer, as widgets: its lr schedule (:class:`engine.schedules.Schedule`,
    a factor in [0, 1] on the base lr, so it may anneal to exactly 0), its gradient clipping
    (:class:`engine.clipping.Clip`) and, on networks, its batch size (:class:`engine.batching.BatchSize`)."""

    schedule = param.Selector(default="constant", objects=["constant", "step", "exponential", "cosine",
                                                           "linear"], label="lr schedule")
    warmup = param.Integer(default=0, bounds=(0, 1_000_000), label="warm-up steps")
    steps = param.Integer(default=1000, bounds=(1, 1_000_000), label="horizon T (steps)")
    gamma = param.Number(default=0.1, bounds=(0.0, 1.0), inclusive_bounds=(False, True), label="gamma")
    every = param.Integer(default=100, bounds=(1, 1_000_000), label="every k steps")
    final = param.Number(default=0.0, bounds=(0.0, 1.0), label="final factor")
    clip = param.Selector(default=NO_CLIP, objects=[NO_CLIP, "norm", "value", "coordinate"],
                          label="gradient clipping")
    threshold = param.Number(default=1.0, bounds=(0.0, None), inclusive_bounds=(False, True),
                             label="clip threshold c")
    fraction = param.Number(default=0.1, bounds=(0.0, 1.0), inclusive_bounds=(False, False),
                            label="clipped fraction of coordinates")
    batch = param.Selector(default=OWN_BATCH, objects=[OWN_BATCH, "constant", "schedule", "norm_test"],
                           label="batch size")
    size = param.Integer(default=32, bounds=(1, 100_000), label="batch (first) size")
    growth = param.Number(default=2.0, bounds=(1.0, 64.0), label="growth factor")
    batch_every = param.Integer(default=100, bounds=(1, 1_000_000), label="grow every k steps")
    theta = param.Number(default=0.5, bounds=(0.0, None), inclusive_bounds=(False, True),
                         label="norm test theta")

    def __init__(self, config: LaneConfig | None = None, **params: Any) -> None:
        super().__init__(**params)
        self.refined: Schedule | None = None  # a refined lr schedule from a link or log (not typed in)
        self.others: dict[str, Schedule] = {}  # schedules of other hyperparameters, kept as they came
        if config is not None:
            self.load(config)

    def load(self, config: LaneConfig) -> None:
        """Show ``config``'s wrappers (its lr schedule, clip and batch size)."""
        self.others = {k: s for k, s in config.schedules.items() if k != SCHEDULED}
        self.param.update(self.values_of(config))

    def values_of(self, config: LaneConfig) -> dict[str, Any]:
        """Widget values for ``config``'s wrappers."""
        out: dict[str, Any] = {}
        s = config.schedules.get(SCHEDULED)
        if s is not None and s.kind == "refined":
            self.refined = s
            if "refined" not in self.param.schedule.objects:
                self.param.schedule.objects = [*self.param.schedule.objects, "refined"]
        s = s or Schedule()
        out.update(schedule=s.kind, warmup=s.warmup, steps=s.steps, gamma=s.gamma, every=s.every,
                   final=s.final)
        c = config.clip
        out.update(clip=NO_CLIP) if c is None else out.update(clip=c.kind, threshold=c.threshold,
                                                              fraction=c.fraction)
        b = config.batch_size
        if b is None:
            out.update(batch=OWN_BATCH)
        else:
            out.update(batch=b.kind, size=b.size, growth=b.growth, batch_every=b.every, theta=b.theta)
        return out

    def lr_schedule(self) -> Schedule | None:
        """The lr schedule the widgets describe (None: constant)."""
        if self.schedule == "refined" and self.refined is not None:
            s = replace(self.refined, warmup=self.warmup)
        else:
            s = Schedule(self.schedule, steps=self.steps, warmup=self.warmup, gamma=self.gamma,
                         every=self.every, final=self.final)
        return None if s.constant else s

    def schedules(self, spec: OptimizerSpec) -> dict[str, Schedule]:
        names = {hp.name for hp in spec.hyperparameters if hp.kind == "float"}
        out = {k: s for k, s in self.others.items() if k in names}
        lr = self.lr_schedule()
        if lr is not None and SCHEDULED in names:
            out[SCHEDULED] = lr
        return out

    def clipping(self) -> Clip | None:
        return None if self.clip == NO_CLIP else Clip(self.clip, self.threshold, self.fraction)

    def batch_size(self) -> BatchSize | None:
        if self.batch == OWN_BATCH:
            return None
        size = max(self.size, 2) if self.batch == "norm_test" else self.size
        return BatchSize(self.batch, size, growth=self.growth, every=self.batch_every, theta=self.theta)


class Lane(param.Parameterized):
    """One optimizer over the race's starts. ``id`` is the app's name for it for its whole life;
    ``engine_id`` is its id in the run now running (a new run numbers its lanes afresh)."""

    optimizer = param.String(doc="registry name of the optimizer now running in this lane")
    slot = param.Integer(default=0, bounds=(0, MAX_LANES - 1), constant=True,
                         doc="colour slot, kept for the lane's life")
    label = param.String(doc="what the page calls this lane (optimizer name, numbered if repeated)")
    segment = param.Integer(default=0, doc="optimizer switches so far: each starts a new segment")
    hyperparameters = param.ClassSelector(class_=param.Parameterized,
                                          doc="the lane's hyperparameters, one parameter each")

    def __init__(self, optimizer: str, values: Mapping[str, Any] | None = None, *, slot: int,
                 on_change: Callable[[Lane, str, Any, Any], None] | None = None,
                 wrappers: LaneConfig | None = None,
                 on_wrap: Callable[[Lane, str, Any, Any], None] | None = None) -> None:
        super().__init__(slot=slot)
        self.id = next(_ids)
        self.engine_id = -1
        self.on_change = on_change
        self.on_wrap = on_wrap
        """Called with (lane, "schedule" | "clip" | "batch", old, new) when a wrapper widget changes."""
        self._echo: tuple[str, Any] | None = None
        self._watcher: Any = None
        self._use(optimizer, values)
        self.wrap = Wrappers(wrappers)
        self._before = self._wrapped()
        self._wrap_echo = False
        self.wrap.param.watch(self._wrap_changed, [n for n in Wrappers.param if n != "name"])

    @property
    def color(self) -> str:
        return PALETTE[self.slot]

    @property
    def spec(self) -> OptimizerSpec:
        return get_spec(self.optimizer)

    def values(self) -> dict[str, Any]:
        """The hyperparameters' current values (what a config or an event carries to the engine)."""
        hp = self.hyperparameters
        return {name: getattr(hp, name) for name in hp.param if name != "name"}

    def config(self) -> LaneConfig:
        """The lane as the engine's data: optimizer, base values and wrappers (links and logs carry it)."""
        w = self.wrap
        return LaneConfig(self.optimizer, self.values(), schedules=w.schedules(self.spec), clip=w.clipping(),
                          batch_size=w.batch_size())

    def _wrapped(self) -> dict[str, Any]:
        w = self.wrap
        return {"schedule": w.schedules(self.spec).get(SCHEDULED), "clip": w.clipping(),
                "batch": w.batch_size()}

    def _wrap_changed(self, *_: Any) -> None:
        try:
            now = self._wrapped()
        except ValueError:  # a combination the engine refuses: nothing is sent
            return
        before, self._before = self._before, now
        if self._wrap_echo or self.on_wrap is None:
            return
        for what, value in now.items():
            if value != before[what]:
                self.on_wrap(self, what, before[what], value)

    def mirror_wrap(self, config: LaneConfig) -> None:
        """Show wrappers the engine already has (a replayed event) without sending them back."""
        self._wrap_echo = True
        try:
            self.wrap.load(config)
        finally:
            self._wrap_echo = False

    @classmethod
    def from_config(cls, config: LaneConfig, **kwargs: Any) -> Lane:
        return cls(config.optimizer, config.hyperparameters, wrappers=config, **kwargs)

    def switch(self, optimizer: str, values: Mapping[str, Any] | None = None) -> None:
        """A new optimizer with its own hyperparameters (validated): a new segment of this lane."""
        self._use(optimizer, values)
        self.segment += 1

    def become(self, config: LaneConfig) -> Lane:
        """This lane object reused for another race's lane in its slot (the page keeps its card):
        the new optimizer and values, a first segment, and a new identity for the views."""
        if config.optimizer != self.optimizer:
            self._use(config.optimizer, config.hyperparameters)
        else:
            for name, value in get_spec(config.optimizer).validate(config.hyperparameters).items():
                self.mirror(name, value)
        self.mirror_wrap(config)
        self.segment, self.id = 0, next(_ids)
        return self

    def mirror(self, name: str, value: Any) -> None:
        """Show a value the engine already has (an event of a replayed log) without sending it back."""
        self._echo = (name, value)
        try:
            setattr(self.hyperparameters, name, value)
        finally:
            self._echo = None

    def _use(self, optimizer: str, values: Mapping[str, Any] | None) -> None:
        spec = get_spec(optimizer)
        checked = spec.validate(values)  # raises HyperparameterError naming the value and its range
        if self._watcher is not None:
            self.hyperparameters.param.unwatch(self._watcher)
        hp = hyperparameter_class(spec)(**checked)
        self._watcher = hp.param.watch(self._changed, [h.name for h in spec.hyperparameters]) \
            if spec.hyperparameters else None
        self.param.update(optimizer=optimizer, hyperparameters=hp, label=spec.display_name)

    def _changed(self, event: param.parameterized.Event) -> None:
        if self._echo == (event.name, event.new) or self.on_change is None:
            return
        self.on_change(self, event.name, event.old, event.new)


def free_slot(lanes: list[Lane], recent: list[int]) -> int:
    """The slot for a new lane: free, and the least recently vacated (a lane that just left does
    not hand its colour to the next one at once)."""
    taken = {lane.slot for lane in lanes}
    free = [s for s in range(MAX_LANES) if s not in taken]
    if not free:
        raise ValueError(f"a race holds at most {MAX_LANES} optimizers")
    never = [s for s in free if s not in recent]
    return never[0] if never else min(free, key=recent.index)


def relabel(lanes: list[Lane]) -> None:
    """Number repeated optimizers ("Adam #1", "Adam #2") so every lane's label is its own."""
    for lane in lanes:
        same = [other for other in lanes if other.optimizer == lane.optimizer]
        name = lane.spec.display_name
        label = name if len(same) == 1 else f"{name} #{same.index(lane) + 1}"
        if lane.label != label:
            lane.label = label
