"""Run descriptions from outside (an uploaded event log, a link's JSON): checked field by field.

``RunConfig.from_dict`` and ``LoggedEvent.from_dict`` trust their input: a wrong type surfaces as
raw Python (``'int' object is not iterable``, ``Pause.__init__() got an unexpected keyword
argument 'x'``). The functions here validate a decoded JSON value *before* calling them, and
every message names the place (``the log's config``, ``event 12 (set_hyperparameter)``), the
field, what it must be and what it was. Field names and types are read from the dataclasses
themselves, so a field added to an event or to the config is checked without an edit here
(a type this module does not know is passed on, and the constructor's own ValueError is shown).

**The one call for an uploaded file** (the app: before stopping or building anything)::

    from engine.untrusted import read_event_log
    log = read_event_log(data, options=race_options)   # bytes of the upload
    # -> CheckedLog(problem, options, config, events, ticks, estimate), or ValueError/LimitError
    #    whose message is the one to show

``read_event_log`` checks the file size (``Limits.upload_bytes``), decodes the JSON, validates the
config and every event (:func:`parse_run_config`, :func:`parse_logged_event`), replays the lanes
through the events (a lane that does not exist when an event names it, an eighth-plus lane, an
invalid hyperparameter) and bounds the whole run with :func:`engine.limits.check_run`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Any

from engine.events import EVENT_TYPES, Event, LoggedEvent
from engine.limits import DEFAULT_LIMITS, Estimate, LimitError, Limits, check_probes, check_run
from engine.run import LaneConfig, RunConfig

__all__ = ["CheckedLog", "check_event_log", "decode_upload", "parse_logged_event", "parse_run_config",
           "read_event_log"]

MAX_NAME = 200
"""Characters of a name (an optimizer, a hyperparameter, a problem) in untrusted input."""
MAX_SEED = 2**63 - 1
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class CheckedLog:
    """An event log that passed every check: what a replay needs, and the estimate of its run."""

    problem: str
    options: Mapping[str, Any]
    config: RunConfig
    events: tuple[LoggedEvent, ...]
    ticks: int
    estimate: Estimate


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind_of(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


def _check(value: Any, hint: Any, where: str, name: str, limits: Limits) -> Any:
    """``value`` if it fits the type ``hint`` (JSON types: lists stand for tuples); else ValueError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, UnionType):
        if value is None and NoneType in args:
            return None
        options = [a for a in args if a is not NoneType]
        if str in options and isinstance(value, str):  # a hyperparameter's choice: float | ... | str
            return _check(value, str, where, name, limits)
        if all(a in (int, float, bool, str) for a in options):  # a scalar: float | int | bool (| str)
            ok = isinstance(value, (int, float)) and (bool in options or not isinstance(value, bool))
            if not ok:
                raise ValueError(f"{where}: {name} must be a number, got {_describe(value)}")
            return value
        for a in options:
            try:
                return _check(value, a, where, name, limits)
            except ValueError:
                continue
        raise ValueError(f"{where}: {name} has the wrong type ({_describe(value)})")
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {name} must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: {name} must be an integer, got {_describe(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be a finite number, got {_describe(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or len(value) > MAX_NAME:
            raise ValueError(f"{where}: {name} must be a name (a string of at most {MAX_NAME} characters), "
                             f"got {_describe(value)}")
        return value
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: {name} must be a list, got {_describe(value)}")
        if len(value) > limits.max_ranking:
            raise LimitError(f"{where}: {name} has {len(value):,} entries (limit {limits.max_ranking:,})")
        return tuple(_check(v, args[0], where, f"{name}[{i}]", limits) for i, v in enumerate(value))
    if origin in (Mapping, dict) or hint in (Mapping, dict):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{where}: {name} must be a mapping of names to values, got {_describe(value)}")
        if len(value) > 1_000:
            raise LimitError(f"{where}: {name} has {len(value):,} entries (limit 1,000)")
        return dict(value)
    return value  # a type this module does not know: the constructor checks it


def _fields(cls: type, d: Mapping[str, Any], where: str, limits: Limits, *,
            special: Sequence[str] = ()) -> dict[str, Any]:
    """The dataclass ``cls``'s fields from ``d``: unknown names and missing required ones refused,
    each value checked against its annotation (``special`` ones are left to the caller)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in d if k not in fields]
    if unknown:
        takes = f"it takes {', '.join(fields)}" if fields else "it takes no fields"
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; {takes}")
    missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: {missing[0]!r} is missing")
    return {k: v if k in special else _check(v, hints[k], where, k, limits) for k, v in d.items()}


def _construct(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """``cls(**values)``, with the constructor's ValueError given its place and any other error
    (a type the checks above did not know) said in words rather than Python's."""
    try:
        return cls(**values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except (TypeError, KeyError, AttributeError, IndexError):
        fields = ", ".join(values)
        raise ValueError(f"{where}: one of its values has the wrong form ({fields})") from None


def _int_in(value: Any, low: int, high: int, where: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {name} must be an integer, got {_describe(value)}")
    if value < low:
        raise ValueError(f"{where}: {name} must be >= {low:,}, got {value:,}")
    if value > high:
        raise LimitError(f"{where}: {name}={value:,} is over the limit of {high:,}")
    return value


def parse_logged_event(d: Any, index: int = 0, *, limits: Limits = DEFAULT_LIMITS) -> LoggedEvent:
    """A :class:`LoggedEvent` from untrusted JSON (``{"tick", "time", "kind", ...fields}``)."""
    where = f"event {index}"
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object with a tick and a kind, got {_describe(d)}")
    kind = d.get("kind")
    if kind not in EVENT_TYPES:
        raise ValueError(f"{where}: unknown kind {_describe(kind)}; kinds: {', '.join(EVENT_TYPES)}")
    where = f"event {index} ({kind})"
    if "tick" not in d:
        raise ValueError(f"{where}: 'tick' is missing")
    tick = _int_in(d["tick"], 0, limits.max_ticks, where, "tick")
    time = d.get("time", 0.0)
    if isinstance(time, bool) or not isinstance(time, (int, float)) or not math.isfinite(time):
        raise ValueError(f"{where}: time must be a finite number, got {_describe(time)}")
    cls: type[Event] = EVENT_TYPES[kind]
    body = {k: v for k, v in d.items() if k not in ("tick", "time", "kind")}
    values = _fields(cls, body, where, limits)
    if "lane" in values:
        values["lane"] = _int_in(values["lane"], 0, 10**9, where, "lane")
    if kind == "set_probes" and values.get("config") is not None:
        check_probes(values["config"], limits, where=f"{where}: probes")
    return LoggedEvent(tick, _construct(cls, values, where), float(time))


def parse_run_config(d: Any, *, limits: Limits = DEFAULT_LIMITS,
                     where: str = "the log's config") -> RunConfig:
    """A :class:`RunConfig` from untrusted JSON (what ``RunConfig.to_dict`` wrote)."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{where} must be an object, got {_describe(d)}")
    values = _fields(RunConfig, d, where, limits, special=("lanes", "start", "probes"))
    lanes = d.get("lanes")
    if not isinstance(lanes, (list, tuple)) or not lanes:
        raise ValueError(f"{where}: lanes must be a non-empty list of optimizers, got {_describe(lanes)}")
    if len(lanes) > limits.max_lanes:
        raise LimitError(f"{where}: a race holds at most {limits.max_lanes} optimizers, got {len(lanes):,}")
    parsed_lanes = []
    for i, lane in enumerate(lanes):
        lane_where = f"{where}, lane {i}"
        if not isinstance(lane, Mapping):
            raise ValueError(f"{lane_where} must be an object with an optimizer, got {_describe(lane)}")
        parsed_lanes.append(_construct(LaneConfig, _fields(LaneConfig, lane, lane_where, limits), lane_where))
    values["lanes"] = tuple(parsed_lanes)
    start = values.get("start")
    if start is not None:
        if not isinstance(start, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in start):
            raise ValueError(f"{where}: start must be a list of finite numbers, got {_describe(start)}")
        values["start"] = tuple(float(v) for v in start)
    for name, low, high in (("n_starts", 1, limits.max_starts), ("seed", 0, MAX_SEED),
                            ("metrics_every", 1, limits.max_metrics_every),
                            ("snapshot_every", 1, limits.max_metrics_every)):
        if name in values:
            _int_in(values[name], low, high, where, name)
    if "device" in values and values["device"] not in DEVICES:
        raise ValueError(f"{where}: device must be one of {', '.join(DEVICES)}, "
                         f"got {_describe(values['device'])}")
    if values.get("probes") is not None:
        values["probes"] = check_probes(values["probes"], limits, where=f"{where}: probes")
    return _construct(RunConfig, values, where)


def decode_upload(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The JSON object in an uploaded file, or a ValueError saying why it is not one (too large:
    a LimitError naming ``Limits.upload_bytes``)."""
    if len(data) > limits.upload_bytes:
        raise LimitError(f"the file is {len(data) / 1e6:.1f} MB; an event log may be at most "
                         f"{limits.upload_bytes / 1e6:g} MB")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not an event log: the file is not UTF-8 text") from None
    try:
        log = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not an event log: invalid JSON at line {exc.lineno}, column {exc.colno} "
                         f"({exc.msg})") from None
    except RecursionError:
        raise ValueError("not an event log: the JSON is nested too deeply") from None
    if not isinstance(log, dict):
        raise ValueError(f"not an event log: expected a JSON object, got a {type(log).__name__}")
    return log


def check_event_log(log: Any, *, options: Mapping[str, Any] | None = None, replay: bool = False,
                    limits: Limits = DEFAULT_LIMITS) -> CheckedLog:
    """Validate a decoded event log (``Run.event_log()``'s shape: problem, config, events, ticks;
    ``options`` of the problem if the log does not carry them) and bound its run. ``replay``:
    the log's ticks will be replayed ahead of time (an export), so they count as work too."""
    if not isinstance(log, Mapping):
        raise ValueError(f"not an event log: expected an object, got {_describe(log)}")
    for key in ("problem", "config", "events"):
        if key not in log:
            raise ValueError(f"not an event log: {key!r} is missing")
    problem = log["problem"]
    if not isinstance(problem, str) or len(problem) > MAX_NAME:
        raise ValueError(f"the log's problem must be a name, got {_describe(problem)}")
    opts = options if options is not None else log.get("options", {})
    if not isinstance(opts, Mapping):
        raise ValueError(f"the log's problem options must be an object, got {_describe(opts)}")
    raw_events = log["events"]
    if not isinstance(raw_events, list):
        raise ValueError(f"the log's events must be a list, got {_describe(raw_events)}")
    if len(raw_events) > limits.max_events:
        raise LimitError(f"the log has {len(raw_events):,} events (limit {limits.max_events:,})")
    ticks = log.get("ticks", 0)
    ticks = _int_in(ticks, 0, limits.max_ticks, "the log", "ticks")
    config = parse_run_config(log["config"], limits=limits)
    events = tuple(parse_logged_event(e, i, limits=limits) for i, e in enumerate(raw_events))
    estimate = check_run(problem, dict(opts), config, events, ticks=ticks if replay else None, limits=limits,
                         what="this log's race")
    return CheckedLog(problem, dict(opts), config, events, ticks, estimate)


def read_event_log(data: bytes, *, options: Mapping[str, Any] | None = None, replay: bool = False,
                   limits: Limits = DEFAULT_LIMITS) -> CheckedLog:
    """:func:`decode_upload` then :func:`check_event_log`: the one call for an uploaded file."""
    return check_event_log(decode_upload(data, limits=limits), options=options, replay=replay, limits=limits)
