r"""Search spaces: which hyperparameter configurations an experiment tries for one optimizer.

Each tuned hyperparameter gets a :class:`Dimension`:

* explicit ``values`` (a list in TOML: ``lr = [0.001, 0.01, 0.1]``);
* a ``grid`` of ``n`` points from ``low`` to ``high``, log-spaced when the hyperparameter is
  (``lr = {kind = "grid", n = 16}``);
* ``log-uniform`` or ``uniform`` random draws (``lr = "log-uniform"``), ``samples`` of them per
  optimizer, from a generator seeded by the experiment's ``search_seed`` and the optimizer's name
  (adding an optimizer never changes another's draws; Bergstra & Bengio 2012, "Random Search for
  Hyper-Parameter Optimization", for why random beats grid in more than one dimension).

``low``/``high`` default to the range the optimizer's spec declares
(:class:`engine.registry.Hyperparameter`). Grid dimensions form a Cartesian product; random
dimensions are drawn together, ``samples`` times, and crossed with the grid. An open range end
(``beta1 < 1``) is never produced by a grid. The optimizer's defaults fill every hyperparameter
the search does not name (``fixed`` values override them).
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.registry import Hyperparameter, HyperparameterError, OptimizerSpec

KINDS = ("values", "grid", "log-uniform", "uniform")
RANDOM_KINDS = ("log-uniform", "uniform")


@dataclass(frozen=True)
class Dimension:
    """How one hyperparameter is searched (see the module docstring)."""

    kind: str
    values: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    log: bool | None = None  # grid spacing; None: the hyperparameter's own scale

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"search kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "values":
            if not self.values:
                raise ValueError("an explicit list of values must not be empty")
            object.__setattr__(self, "values", tuple(self.values))
        if self.kind == "grid" and (isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1):
            raise ValueError(f"a grid needs n >= 1 points, got n={self.n!r}")

    @property
    def random(self) -> bool:
        return self.kind in RANDOM_KINDS

    @staticmethod
    def parse(value: Any) -> Dimension:
        """From TOML / dict data: a list (values), a kind name, or a table with ``kind``."""
        if isinstance(value, Dimension):
            return value
        if isinstance(value, str):
            if value not in RANDOM_KINDS:
                raise ValueError(
                    f"a search given by name must be one of {', '.join(RANDOM_KINDS)} "
                    f'(a grid needs n: {{kind = "grid", n = 16}}), got {value!r}'
                )
            return Dimension(value)
        if isinstance(value, Sequence):
            return Dimension("values", values=tuple(value))
        if isinstance(value, Mapping):
            d = dict(value)
            unknown = sorted(set(d) - {"kind", "values", "low", "high", "n", "log"})
            if unknown:
                raise ValueError(
                    f"unknown search key(s) {', '.join(unknown)}; known: kind, values, low, high, n, log"
                )
            kind = d.pop("kind", "values" if "values" in d else None)
            if kind is None:
                raise ValueError(f"a search table needs kind = one of {', '.join(KINDS)}: {value!r}")
            return Dimension(kind, **d)
        raise ValueError(f"cannot read a search dimension from {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in (
                ("kind", self.kind),
                ("values", list(self.values) if self.values else None),
                ("low", self.low),
                ("high", self.high),
                ("n", self.n),
                ("log", self.log),
            )
            if v is not None
        }

    def size(self) -> int:
        """Points this dimension contributes to the grid product (a random one: 1 per sample)."""
        return len(self.values) if self.kind == "values" else (self.n if self.kind == "grid" else 1)

    def bounds(self, hp: Hyperparameter, owner: str) -> tuple[float, float]:
        """``(low, high)``: given, else the spec's range; checked against the spec's range."""
        if hp.kind == "bool":
            raise HyperparameterError(
                f"{owner}: {hp.name} is True/False: list its values instead ({hp.name} = [true, false])"
            )
        low = hp.low if self.low is None else float(self.low)
        high = hp.high if self.high is None else float(self.high)
        if low is None or high is None:
            raise HyperparameterError(
                f"{owner}: {hp.name} has an unbounded range {hp.range_text()}: give low "
                f"and high for its search"
            )
        if not low < high:
            raise HyperparameterError(
                f"{owner}: {hp.name} search range needs low < high, got [{low}, {high}]"
            )
        for v in (low, high):  # the closed ends must be allowed values; open ends are never produced
            if (hp.low is not None and v < hp.low) or (hp.high is not None and v > hp.high):
                raise HyperparameterError(
                    f"{owner}: {hp.name} search range [{low:g}, {high:g}] leaves its "
                    f"allowed range {hp.range_text()}"
                )
        return low, high

    def _log(self, hp: Hyperparameter) -> bool:
        return hp.log if self.log is None else bool(self.log)

    def grid_values(self, hp: Hyperparameter, owner: str) -> list[Any]:
        if self.kind == "values":
            return [hp.check(v, owner) for v in self.values]
        low, high = self.bounds(hp, owner)
        log = self._log(hp)
        if log and low <= 0:
            raise HyperparameterError(f"{owner}: a log-spaced {hp.name} grid needs low > 0, got {low:g}")
        # an open end of the allowed range is left out by spacing n + 1 points and dropping it
        open_low = hp.low is not None and low == hp.low and not hp.include_low
        open_high = hp.high is not None and high == hp.high and not hp.include_high
        m = self.n + int(open_low) + int(open_high)
        pts = np.geomspace(low, high, m) if log else np.linspace(low, high, m)
        if m == 1:
            pts = np.array([math.sqrt(low * high) if log else (low + high) / 2])
        pts = pts[int(open_low) : len(pts) - int(open_high)]
        return [_coerce(hp, float(v), owner) for v in pts]

    def draw(self, hp: Hyperparameter, rng: np.random.Generator, owner: str) -> Any:
        low, high = self.bounds(hp, owner)
        if self.kind == "log-uniform":
            if low <= 0:
                raise HyperparameterError(f"{owner}: log-uniform {hp.name} needs low > 0, got {low:g}")
            v = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            v = rng.uniform(low, high)
        return _coerce(hp, min(max(v, low), high), owner)


def _coerce(hp: Hyperparameter, v: float, owner: str) -> Any:
    if hp.kind == "int":
        v = round(v)
    return hp.check(v, owner)


def search_size(search: Mapping[str, Dimension], samples: int) -> int:
    """Number of configurations a search produces (before any is made)."""
    n = math.prod(d.size() for d in search.values())
    return n * (samples if any(d.random for d in search.values()) else 1)


def configurations(
    spec: OptimizerSpec,
    search: Mapping[str, Dimension],
    *,
    samples: int,
    seed: int,
    fixed: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The search's configurations for ``spec``, each a full hyperparameter dict (defaults, then
    ``fixed``, then the searched values), in a fixed order: the grid product (first dimension
    slowest), crossed with ``samples`` random draws when any dimension is random."""
    base = spec.validate(fixed or {})
    hps = {name: spec.hyperparameter(name) for name in search}
    grid_dims = [(n, d) for n, d in search.items() if not d.random]
    random_dims = [(n, d) for n, d in search.items() if d.random]
    axes = [d.grid_values(hps[n], spec.name) for n, d in grid_dims]
    rng = np.random.default_rng([seed, zlib.crc32(spec.name.encode())])
    draws: list[dict[str, Any]] = [{}]
    if random_dims:
        draws = [{n: d.draw(hps[n], rng, spec.name) for n, d in random_dims} for _ in range(samples)]
    out = []
    for point in itertools.product(*axes):
        for draw in draws:
            out.append({**base, **dict(zip((n for n, _ in grid_dims), point, strict=True)), **draw})
    return out
