"""A race as data, and the one gate every race passes: share links, uploaded event logs, presets
and the page's own settings all become a :class:`RaceSpec`, and :func:`check_race` validates it
before anything is built (build first, swap after: a race refused here never touches the running
one). Sizes are bounded in one place, :func:`engine.limits.check_run`, which it calls.

A share link carries the whole race, events included (a learning rate changed at step 600 reopens
changed at step 600): the race as compact JSON, zlib-compressed, base64url, in one ``race=`` query
parameter. Links of the older readable form (``?problem=...&lanes=...``) still open. Never imports
Panel.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from engine.events import LoggedEvent, Pause, Resume
from engine.instruments import ProbeConfig
from engine.limits import DEFAULT_LIMITS, check_run
from engine.problem import Problem
from engine.registry import HyperparameterError, get_spec
from engine.run import LaneConfig, RunConfig
from engine.untrusted import check_event_log, decode_upload
from landscapes import available_landscapes, available_networks, get_landscape, get_network, parse_expression

CUSTOM = "custom: type f(x, y)"
X_AXES = ("step", "gradients", "function values", "HVPs", "JVPs", "rankings", "oracle calls",
          "wall time (s)")
UPLOAD_LIMIT_BYTES = DEFAULT_LIMITS.upload_bytes
UPLOAD_LIMIT = f"{UPLOAD_LIMIT_BYTES / 1e6:g} MB"
"""Largest event log the page accepts, as the page states it."""


class RaceError(ValueError):
    """A race that cannot be opened; the message says why, in the page's terms."""


@dataclass(frozen=True)
class RunParams:
    """The run-defining settings of a session: changing any of them builds a new run."""

    problem: str = "rosenbrock"
    options: tuple[tuple[str, Any], ...] = ()
    expression: str = "sin(x)*y**2 + 0.1*x**2"
    start: tuple[float, float] | None = None
    n_starts: int = 1
    seed: int = 0
    batch_size: int | None = None

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def is_network(self) -> bool:
        return self.problem in available_networks()

    def make_problem(self) -> Problem:
        """The problem these settings name (raises with a message in the page's terms)."""
        if self.problem == CUSTOM:
            return parse_expression(self.expression)
        options = self.option_dict
        if self.is_network:
            if self.batch_size is not None:
                options["batch_size"] = self.batch_size or None  # 0: full batch
            return get_network(self.problem, **options)
        return get_landscape(self.problem, **options)


@dataclass(frozen=True)
class RaceSpec:
    """Everything that opens a race: its settings, its lanes, the events to replay at their ticks,
    and how it is shown (speed and x-axis; None keeps the page's)."""

    params: RunParams
    lanes: tuple[LaneConfig, ...]
    events: tuple[LoggedEvent, ...] = ()
    ticks: int = 0
    paused: bool = False
    """The saved race ended paused: its replay pauses at ``ticks``."""
    probes: Mapping[str, Any] | None = None
    speed: float | None = None
    x_axis: str | None = None

    def config(self) -> RunConfig:
        """The engine's config of this race (the start only where the problem is 2-D)."""
        p = self.params
        dim2 = not p.is_network and p.option_dict.get("dim", 2) == 2
        return RunConfig(lanes=self.lanes, start=p.start if dim2 else None, n_starts=p.n_starts,
                         seed=p.seed, probes=ProbeConfig(**self.probes) if self.probes else None)


def lanes_of(pairs: Any) -> tuple[LaneConfig, ...]:
    """``[(optimizer, hyperparameters), ...]`` or LaneConfig data as LaneConfigs."""
    out = []
    for item in pairs:
        if isinstance(item, LaneConfig):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(LaneConfig.from_dict(item))
        else:
            name, values = item
            out.append(LaneConfig(str(name), dict(values)))
    return tuple(out)


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RaceError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _whole(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or not low <= value <= high:
        raise RaceError(f"{what} must be a whole number from {low:,} to {high:,}, got {value!r}")
    return int(value)


def check_race(spec: RaceSpec, source: str = "this race") -> RaceSpec:
    """The one validation of every race from outside (a link, a log, a preset, the page's
    settings): the spec with its values checked and normalized, or :class:`RaceError` saying
    what is wrong. Nothing is built; sizes are bounded by :func:`engine.limits.check_run`."""
    try:
        spec = _normalized(spec)
        p = spec.params
        options = p.option_dict
        if p.is_network and p.batch_size is not None:
            options["batch_size"] = p.batch_size or None
        problem = "expression" if p.problem == CUSTOM else p.problem
        if p.problem == CUSTOM:
            options = {"expression": p.expression}
        check_run(problem, options, spec.config(), spec.events, what=source)
        return spec
    except RaceError as exc:
        raise RaceError(f"{source} cannot be opened: {exc}") from None
    except (HyperparameterError, ValueError) as exc:  # LimitError is a ValueError; it names `source`
        text = str(exc)
        raise RaceError(text if text.startswith(source) else f"{source} cannot be opened: {text}") from None
    except (TypeError, KeyError, AttributeError):
        raise RaceError(f"{source} cannot be opened: a value has the wrong form") from None


def _normalized(spec: RaceSpec) -> RaceSpec:
    p, limits = spec.params, DEFAULT_LIMITS
    if p.problem not in (*available_landscapes(), CUSTOM, *available_networks()):
        raise RaceError(f"unknown problem {p.problem!r}")
    start = None
    if p.start is not None:
        if len(p.start) != 2:
            raise RaceError(f"a start point has 2 coordinates (x, y), got {len(p.start)}")
        start = tuple(_finite(v, "the start point") for v in p.start)
    params = replace(p, start=start, n_starts=_whole(p.n_starts, "the number of starts", 1,
                                                     limits.max_starts),
                     seed=_whole(p.seed, "the seed", 0, 2**31 - 1),
                     batch_size=None if p.batch_size is None else _whole(
                         p.batch_size, "the batch size (0: full batch)", 0, 100_000))
    if not 1 <= len(spec.lanes) <= limits.max_lanes:
        raise RaceError(f"a race holds 1 to {limits.max_lanes} optimizers, got {len(spec.lanes)}")
    lanes = tuple(replace(ln, hyperparameters=get_spec(ln.optimizer).validate(ln.hyperparameters))
                  for ln in spec.lanes)
    speed = spec.speed
    if speed is not None and not 1 <= _finite(speed, "the speed") <= 1000:
        raise RaceError(f"the speed must be from 1 to 1000 steps/s, got {speed!r}")
    if spec.x_axis is not None and spec.x_axis not in X_AXES:
        raise RaceError(f"unknown x-axis {spec.x_axis!r}; x-axes: {', '.join(X_AXES)}")
    ticks = _whole(spec.ticks, "the number of steps", 0, limits.max_ticks)
    for e in spec.events:
        if e.tick > ticks:
            raise RaceError(f"an event at step {e.tick:,} comes after the race's last step ({ticks:,})")
    return replace(spec, params=params, lanes=lanes, ticks=ticks,
                   speed=None if speed is None else float(speed))


# -- links -----------------------------------------------------------------------------------------
def to_dict(spec: RaceSpec) -> dict[str, Any]:
    """The race as plain JSON data (a link's payload; the ``race`` entry of a saved log)."""
    p = spec.params
    d: dict[str, Any] = {"v": 1, "problem": p.problem, "seed": p.seed, "starts": p.n_starts,
                         "lanes": [ln.to_dict() for ln in spec.lanes]}
    if p.problem == CUSTOM:
        d["f"] = p.expression
    if p.options:
        d["options"] = dict(p.options)
    if p.start is not None:
        d["start"] = list(p.start)
    if p.batch_size is not None:
        d["batch"] = p.batch_size
    if spec.events:  # [tick, kind, fields]: no per-event time, shorter links
        d["events"] = [[e.tick, e.event.kind, {k: v for k, v in e.event.to_dict().items() if k != "kind"}]
                       for e in spec.events]
    if spec.ticks:
        d["ticks"] = spec.ticks
    if spec.paused:
        d["paused"] = True
    for key, value in (("probes", spec.probes), ("speed", spec.speed), ("x", spec.x_axis)):
        if value is not None:
            d[key] = dict(value) if isinstance(value, Mapping) else value
    return d


def from_dict(d: Any) -> RaceSpec:
    """:func:`to_dict`'s inverse (checked by :func:`check_race`, not here)."""
    try:
        events = tuple(LoggedEvent.from_dict({"tick": tick, "kind": kind, **fields})
                       for tick, kind, fields in d.get("events", []))
        start = d.get("start")
        params = RunParams(
            problem=str(d["problem"]), options=tuple(sorted(dict(d.get("options") or {}).items())),
            expression=str(d.get("f", RunParams.expression)),
            start=tuple(start) if start is not None else None, n_starts=d.get("starts", 1),
            seed=d.get("seed", 0), batch_size=d.get("batch"))
        return RaceSpec(params=params, lanes=lanes_of(d["lanes"]), events=events, ticks=d.get("ticks", 0),
                        paused=bool(d.get("paused", False)), probes=d.get("probes"), speed=d.get("speed"),
                        x_axis=d.get("x"))
    except KeyError as exc:
        raise RaceError(f"it lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        reason = str(exc) if isinstance(exc, ValueError) and str(exc) else "a value has the wrong form"
        raise RaceError(reason) from None


def encode(spec: RaceSpec) -> str:
    """The race as one URL-safe word (compressed JSON)."""
    raw = json.dumps(to_dict(spec), separators=(",", ":"), allow_nan=False).encode()
    return base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")


def decode(word: str) -> RaceSpec:
    try:
        raw = base64.urlsafe_b64decode(word + "=" * (-len(word) % 4))
        d = json.loads(zlib.decompressobj().decompress(raw, UPLOAD_LIMIT_BYTES))
    except (ValueError, zlib.error):
        raise RaceError("the link is damaged or incomplete") from None
    if not isinstance(d, dict):
        raise RaceError("the link is damaged or incomplete")
    return from_dict(d)


def from_query(query: Mapping[str, str]) -> RaceSpec:
    """A share link's query parameters (``race=...``, or the older readable form) as a race."""
    if query.get("race"):
        return decode(query["race"])
    try:
        start = query.get("start")
        return from_dict({
            "problem": query["problem"], "lanes": json.loads(query.get("lanes", "[]")),
            "options": json.loads(query["options"]) if query.get("options") else {},
            "f": query.get("f", RunParams.expression),
            "start": [float(v) for v in start.split(",")] if start else None,
            "starts": _number(query.get("starts", "1")), "seed": _number(query.get("seed", "0")),
            "batch": _number(query["batch"]) if query.get("batch") else None,
            "speed": float(query["speed"]) if query.get("speed") else None, "x": query.get("x")})
    except KeyError as exc:
        raise RaceError(f"it lacks {exc.args[0]!r}") from None
    except (ValueError, TypeError):
        raise RaceError("a value has the wrong form") from None


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


# -- saved event logs --------------------------------------------------------------------------------
def from_log(log: Any) -> RaceSpec:
    """A saved session (a decoded "save event log" file) as a race that replays it from its start.

    Pause and resume are how a person watched, not part of the race: they are dropped, and a log
    that ended paused replays up to its last step and pauses there. The config and events are
    validated field by field (:func:`engine.untrusted.check_event_log`)."""
    if not isinstance(log, Mapping) or not isinstance(log.get("race"), Mapping):
        raise RaceError("this file is not an Optiscope event log (it has no race)")
    race = dict(log["race"])
    base = from_dict(race) if race.get("v") == 1 else from_query({k: str(v) for k, v in race.items()})
    options = dict(base.params.options)
    try:
        checked = check_event_log(log, options=options)
    except ValueError as exc:
        raise RaceError(f"this event log cannot be opened: {exc}") from None
    watching = [e for e in checked.events if isinstance(e.event, (Pause, Resume))]
    paused = bool(watching) and isinstance(watching[-1].event, Pause)
    kept = tuple(e for e in checked.events if not isinstance(e.event, (Pause, Resume)))
    config = checked.config
    params = replace(base.params, start=config.start, n_starts=config.n_starts, seed=config.seed)
    return replace(base, params=params, lanes=config.lanes, events=kept, ticks=checked.ticks, paused=paused,
                   probes=config.probes.to_dict() if config.probes is not None else None)


def read_upload(data: bytes) -> RaceSpec:
    """An uploaded file: at most :data:`UPLOAD_LIMIT`, JSON, an event log (checked)."""
    try:
        log = decode_upload(bytes(data))
    except ValueError as exc:
        raise RaceError(str(exc)) from None
    return from_log(log)


def event_log_file(spec: RaceSpec, log: Mapping[str, Any]) -> dict[str, Any]:
    """What "save event log" writes: the run's own log (config, events, ticks) and the race."""
    return {**log, "race": to_dict(spec)}
