"""Classroom presets, read from the table in ``presets.toml`` (data, not code paths)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

from app.sharing import RaceSpec, RunParams, lanes_of
from engine.instruments import LANDSCAPE_PROBES, NETWORK_PROBES, ProbeConfig

PRESETS_FILE = Path(__file__).with_name("presets.toml")
_KEYS = {"title", "claim", "explanation", "problem", "expression", "options", "lanes", "start", "n_starts",
         "seed", "speed", "x_axis", "batch_size", "probe_every", "probes", "tab", "axes"}
PROBE_KINDS = ("sharpness", "economy", "business", "full")


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    explanation: str
    problem: str
    lanes: tuple[tuple[str, dict[str, Any]], ...]
    options: dict[str, Any] = field(default_factory=dict)
    start: tuple[float, float] | None = None
    n_starts: int = 1
    seed: int = 0
    speed: float = 60.0
    x_axis: str = "step"
    batch_size: int | None = None
    claim: str = ""
    """What a class sees within 30 s at the preset's speed (shown first, in bold)."""
    expression: str | None = None
    """f(x, y) when ``problem`` is the typed-function landscape (app.sharing.CUSTOM)."""
    probe_every: int | None = None
    """Curvature probes every this many steps (None: the page's)."""
    probes: str | None = None
    """The probes' preset (a ``ProbeConfig`` classmethod of ``PROBE_KINDS``; None: the page's)."""
    tab: str | None = None
    """The instrument tab the preset opens (its title: "curvature", "memory", ...)."""
    axes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Plot title prefix -> {"log": bool, "y": [low, high]} (app.axes.set_axes)."""

    def spec(self) -> RaceSpec:
        """The race this preset opens."""
        params = RunParams(problem=self.problem, options=tuple(sorted(self.options.items())),
                           start=self.start, **({"expression": self.expression} if self.expression else {}),
                           n_starts=self.n_starts, seed=self.seed, batch_size=self.batch_size)
        probes = None
        if self.probe_every is not None or self.probes is not None:
            base = (getattr(ProbeConfig, self.probes)() if self.probes is not None
                    else NETWORK_PROBES if params.is_network else LANDSCAPE_PROBES)
            probes = (base if self.probe_every is None else replace(base, every=self.probe_every)).to_dict()
        return RaceSpec(params, lanes_of(self.lanes), speed=self.speed, x_axis=self.x_axis, probes=probes)


def _preset(name: str, d: dict[str, Any]) -> Preset:
    unknown = set(d) - _KEYS
    if unknown:
        raise ValueError(f"preset {name!r}: unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
    if d.get("probes") not in (None, *PROBE_KINDS):
        raise ValueError(f"preset {name!r}: probes must be one of {PROBE_KINDS}, got {d['probes']!r}")
    lanes = tuple((str(opt), dict(hps)) for opt, hps in d["lanes"])
    start = tuple(float(v) for v in d["start"]) if "start" in d else None
    return Preset(name=name, title=d["title"], explanation=" ".join(d["explanation"].split()),
                  claim=" ".join(d.get("claim", "").split()),
                  problem=d["problem"], lanes=lanes, options=dict(d.get("options", {})), start=start,
                  n_starts=int(d.get("n_starts", 1)), seed=int(d.get("seed", 0)),
                  speed=float(d.get("speed", 60.0)), x_axis=d.get("x_axis", "step"),
                  batch_size=d.get("batch_size"), expression=d.get("expression"),
                  probe_every=d.get("probe_every"), probes=d.get("probes"), tab=d.get("tab"),
                  axes=dict(d.get("axes", {})))


@cache
def presets() -> dict[str, Preset]:
    """Every preset, in the file's order."""
    with PRESETS_FILE.open("rb") as f:
        table = tomllib.load(f)
    return {name: _preset(name, d) for name, d in table.items()}
