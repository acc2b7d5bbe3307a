"""A lane of the race as a ``param`` object: its optimizer, its colour, and its hyperparameters as
parameters built from the optimizer's spec. Never imports Panel (views render it with ``pn.Param``).

One value, one home: a lane's learning rate lives on ``lane.hyperparameters.lr`` and nowhere else in
the app. The lane's watcher hands every change to ``on_change`` (the race session), which sends it to
the engine as an event; the engine's optimizer then holds it (``param_groups``), which is what a run
is. Per-lane schedules, clipping and batch sizes will each be one more sub-object beside
``hyperparameters`` (``LaneConfig(schedules=..., clip=..., batch_size=...)`` and their events).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import param

from engine.registry import Hyperparameter, OptimizerSpec, get_spec
from engine.run import LaneConfig

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
                 wrappers: LaneConfig | None = None) -> None:
        super().__init__(slot=slot)
        self.id = next(_ids)
        self.wrappers = wrappers
        """Schedules, clip and batch size as the engine's LaneConfig carries them (kept and passed on;
        each becomes its own sub-object with widgets in the next wave)."""
        self.engine_id = -1
        self.on_change = on_change
        self._echo: tuple[str, Any] | None = None
        self._watcher: Any = None
        self._use(optimizer, values)

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
        w = self.wrappers
        if w is None:
            return LaneConfig(self.optimizer, self.values())
        return LaneConfig(self.optimizer, self.values(),
                          schedules=w.schedules if w.optimizer == self.optimizer
                          else {}, clip=w.clip, batch_size=w.batch_size)

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
        self.wrappers, self.segment, self.id = config, 0, next(_ids)
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
