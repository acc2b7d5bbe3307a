"""What the race session hands its views at each pump, and where it sits on the x-axes. Never
imports Panel."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.records import Record

AXES = {"step": "step", "gradients": "gradients", "function values": "function_values", "HVPs": "hvps",
        "JVPs": "jvps", "rankings": "rankings", "oracle calls": "oracle_calls", "wall time (s)": "wall_time"}
"""x-axis label -> column. "step" counts the race's steps since its last reset, so a lane that joins
late starts where it joined; oracle counts are per trajectory, so a zeroth-order method's two
function values per step and a first-order method's one gradient race on one scale."""
COUNTS = ("gradients", "function_values", "hvps", "jvps", "rankings")


def axis_row(record: Record | None, tick: int, origin: int) -> dict[str, float]:
    """Where ``record``'s step sits on every x-axis (zeros for a lane with no record yet)."""
    row = dict.fromkeys(AXES.values(), 0.0)
    if record is not None:
        row.update(record.counts.as_dict(), wall_time=record.wall_time)
        row["oracle_calls"] = sum(record.counts.as_dict().values())
    row["step"] = tick - origin
    return row


def axis_columns(records: Sequence[Record], origin: int) -> dict[str, list]:
    """The x-axis columns of a lane's records (every plotted source carries them all)."""
    counts = [vars(r.counts) for r in records]  # the counts' fields (``as_dict`` copies them deeply)
    data: dict[str, list] = {"step": [r.tick - origin for r in records],
                             "wall_time": [r.wall_time for r in records]}
    for col in COUNTS:
        data[col] = [c[col] for c in counts]
    data["oracle_calls"] = [sum(c.values()) for c in counts]
    return data


@dataclass(frozen=True)
class Mark:
    """Something that happened, to mark on the curves at its tick: "SGD: lr 0.001 → 0.01"."""

    tick: int
    label: str
    lane: int | None = None  # the app's lane id, or None for the whole race
    at: Mapping[str, float] | None = None  # its place on every x-axis (set when drained)
    change: tuple[str, str, str, str] | None = None
    """A value's change: ``(value, prefix, before, after)``, e.g. ``("lr", "Adam: lr", "0.001",
    "0.1")``, the label being "prefix before → after": changes of one value in quick succession are
    drawn as one marker (:class:`app.figures.Marks`)."""

    @classmethod
    def of_change(cls, tick: int, value: str, prefix: str, before: str, after: str,
                  lane: int | None) -> Mark:
        return cls(tick, f"{prefix} {before} → {after}", lane, change=(value, prefix, before, after))


@dataclass
class Batch:
    """What one :meth:`RaceSession.drain` hands the views: records per lane id in tick order, marks,
    and whether the race restarted (views clear first), with the tick its x-axis counts from."""

    records: dict[int, list[Record]] = field(default_factory=dict)
    marks: list[Mark] = field(default_factory=list)
    reset: bool = False
    origin: int = 0

    def __bool__(self) -> bool:
        return bool(self.records or self.marks or self.reset)
