"""Events: everything a user can do to a live run, as data.

Events are applied between steps and logged with the tick at which they took effect, so a run
is replayed exactly from its config and its event log (:meth:`engine.run.Run.replay`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict can't copy a mappingproxy
        return {"kind": self.kind, **{k: dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}}


@dataclass(frozen=True)
class SetHyperparameter(Event):
    """Change one hyperparameter of one lane; it applies at that lane's next step."""

    kind: ClassVar[str] = "set_hyperparameter"
    lane: int
    name: str
    value: float | int | bool


@dataclass(frozen=True)
class SwitchOptimizer(Event):
    """Replace a lane's optimizer. ``keep_position`` continues from where the lane is (fresh
    optimizer state); otherwise the lane restarts from the start points."""

    kind: ClassVar[str] = "switch_optimizer"
    lane: int
    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    keep_position: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))


@dataclass(frozen=True)
class AddLane(Event):
    """Add an optimizer to the race, starting from the start points."""

    kind: ClassVar[str] = "add_lane"
    optimizer: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", MappingProxyType(dict(self.hyperparameters)))


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
                              RequestProbe, SetProbes, SubmitRanking)
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
        return LoggedEvent(int(tick), cls(**d), float(time))
