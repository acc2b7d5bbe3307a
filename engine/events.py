"""Events: everything a user can do to a live run, as data.

Events are applied between steps and logged with the tick at which they took effect, so a run
is replayed exactly from its config and its event log (:meth:`engine.run.Run.replay`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

from engine.batching import BatchSize
from engine.clipping import Clip
from engine.schedules import Schedule, schedules_from


def _plain(v: Any) -> Any:
    """Mappings (and mapping proxies) as dicts, all the way down: JSON-able event data."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict can't copy a mappingproxy
        return {"kind": self.kind, **{k: _plain(v) for k, v in d.items()}}


@dataclass(frozen=True)
class SetHyperparameter(Event):
    """Change one hyperparameter of one lane; it applies at that lane's next step.

    On a scheduled hyperparameter this sets the *base* value: the live value is the base times the
    schedule's factor, so the schedule is rescaled from that step on (its shape is kept)."""

    kind: ClassVar[str] = "set_hyperparameter"
    lane: int
    name: str
    value: float | int | bool | str  # str: a choice hyperparameter's option


def _plain_schedules(schedules: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Validated schedules as plain data (constant ones dropped): what a log stores."""
    return MappingProxyType({k: s.to_dict() for k, s in schedules_from(schedules).items()})


def _plain_clip(clip: Any) -> Mapping[str, Any] | None:
    if clip is None:
        return None
    return MappingProxyType((clip if isinstance(clip, Clip) else Clip.from_dict(clip)).to_dict())


def _plain_batch(batch_size: Any) -> Mapping[str, Any] | None:
    return None if batch_size is None else MappingProxyType(BatchSize.from_dict(batch_size).to_dict())


def _lane_parts(event: Any) -> None:
    object.__setattr__(event, "hyperparameters", MappingProxyType(dict(event.hyperparameters)))
    object.__setattr__(event, "schedules", _plain_schedules(event.schedules))
    object.__setattr__(event, "clip", _plain_clip(event.clip))
    object.__setattr__(event, "batch_size", _plain_batch(event.batch_size))


@dataclass(frozen=True)
class SwitchOptimizer(Event):
    """Replace a lane's optimizer. ``keep_position`` continues from where the lane is (fresh
    optimizer state); otherwise the lane restarts from the start points.

    Schedules belong to the optimizer's hyperparameters, so they are replaced with it (none unless
    given); ``clip`` and ``batch_size`` belong to the lane and are kept unless given (remove them
    with :class:`SetClip` / :class:`SetBatchSize` and ``None``)."""

    kind: ClassVar[str] = "switch_optimizer"
    lane: int
    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    keep_position: bool = True
    schedules: Mapping[str, Any] = field(default_factory=dict)
    clip: Mapping[str, Any] | None = None
    batch_size: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _lane_parts(self)


@dataclass(frozen=True)
class AddLane(Event):
    """Add an optimizer to the race, starting from the start points, with the lane's schedules
    (hyperparameter -> :class:`~engine.schedules.Schedule` data), clip
    (:class:`~engine.clipping.Clip` data) and batch size (:class:`~engine.batching.BatchSize`
    data), as in :class:`engine.run.LaneConfig`."""

    kind: ClassVar[str] = "add_lane"
    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    schedules: Mapping[str, Any] = field(default_factory=dict)
    clip: Mapping[str, Any] | None = None
    batch_size: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _lane_parts(self)


@dataclass(frozen=True)
class SetSchedule(Event):
    """Schedule one hyperparameter of one lane (``schedule``: :class:`~engine.schedules.Schedule`
    data; ``None`` or a constant schedule removes it). The schedule is a function of the lane's
    step, and multiplies the lane's base value from the next step on."""

    kind: ClassVar[str] = "set_schedule"
    lane: int
    name: str
    schedule: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        sched = None if self.schedule is None else Schedule.from_dict(self.schedule)
        object.__setattr__(self, "schedule",
                           None if sched is None or sched.constant else MappingProxyType(sched.to_dict()))


@dataclass(frozen=True)
class SetClip(Event):
    """Clip one lane's gradient (or gradient estimate) from its next step (``None``: stop)."""

    kind: ClassVar[str] = "set_clip"
    lane: int
    clip: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip", _plain_clip(self.clip))


@dataclass(frozen=True)
class SetBatchSize(Event):
    """One lane's batch size from its next step (``None``: the problem's own)."""

    kind: ClassVar[str] = "set_batch_size"
    lane: int
    batch_size: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_size", _plain_batch(self.batch_size))


@dataclass(frozen=True)
class RemoveLane(Event):
    kind: ClassVar[str] = "remove_lane"
    lane: int


@dataclass(frozen=True)
class Pause(Event):
    kind: ClassVar[str] = "pause"


@dataclass(frozen=True)
class Resume(Event):
    kind: ClassVar[str] = "resume"


@dataclass(frozen=True)
class Reset(Event):
    """Every lane back to the start points, with fresh optimizer state."""

    kind: ClassVar[str] = "reset"


@dataclass(frozen=True)
class RequestProbe(Event):
    """Probe the curvature of every lane at the next step (the "on demand" schedule)."""

    kind: ClassVar[str] = "request_probe"


@dataclass(frozen=True)
class SetProbes(Event):
    """Replace the run's probe configuration (``None``: no probes), as keyword arguments of
    :class:`engine.instruments.ProbeConfig`."""

    kind: ClassVar[str] = "set_probes"
    config: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.config is not None:
            object.__setattr__(self, "config", MappingProxyType(dict(self.config)))


@dataclass(frozen=True)
class SubmitRanking(Event):
    """A person's ranking of the candidates a lane is waiting on (``order``: indices, best
    first). Logged like any event, so a human-in-the-loop run replays exactly."""

    kind: ClassVar[str] = "submit_ranking"
    lane: int
    order: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", tuple(int(i) for i in self.order))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lane": self.lane, "order": list(self.order)}


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (SetHyperparameter, SwitchOptimizer, AddLane, RemoveLane, Pause, Resume, Reset,
                              RequestProbe, SetProbes, SubmitRanking, SetSchedule, SetClip, SetBatchSize)
}


@dataclass(frozen=True)
class LoggedEvent:
    """An event with the run tick at which it took effect and the seconds since the run began."""

    tick: int
    event: Event
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"tick": self.tick, "time": self.time, **self.event.to_dict()}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> LoggedEvent:
        d = dict(d)
        tick, time, kind = d.pop("tick"), d.pop("time", 0.0), d.pop("kind")
        try:
            cls = EVENT_TYPES[kind]
        except KeyError:
            raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_TYPES)}") from None
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            takes = f"it takes {', '.join(names)}" if names else "it takes no fields"
            raise ValueError(f"a {kind!r} event has no field {', '.join(map(repr, unknown))}; {takes}")
        missing = [f.name for f in fields(cls) if f.name not in d
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"a {kind!r} event needs {', '.join(map(repr, missing))}")
        return LoggedEvent(int(tick), cls(**d), float(time))
