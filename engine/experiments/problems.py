"""Problems an experiment names, and where their names come from.

The engine never imports the problem packages (``landscapes`` depends on ``engine``, not the
reverse). Named problems are found through the ``optiscope.problems`` entry-point group: each
entry point is a mapping ``name -> factory(**options) -> Problem``; this project declares
``landscapes.catalog:LANDSCAPES`` and ``landscapes.networks:NETWORKS`` in ``pyproject.toml``, so
they are there once the project is installed (``pip install -e .``). A caller can pass other
catalogs (``--problems module:MAPPING`` on the command line, ``catalogs=`` in Python), and a
Python user can put a live problem object (e.g. ``problem_from_module(my_module, ...)``) in a
spec directly.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from engine.problem import Problem

GROUP = "optiscope.problems"
Catalog = Mapping[str, Callable[..., Problem]]


@dataclass(frozen=True)
class ProblemRef:
    """A problem by name and factory options (``ProblemRef("rosenbrock", {"dim": 5})``), with an
    optional per-problem ``target`` loss and ``start`` (row 0's start; the problem's default if
    None); or a live ``problem`` object (Python only: it cannot be written to TOML, and
    ``row_to_race`` can name it but not rebuild it)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    target: float | None = None
    start: tuple[float, ...] | None = None
    problem: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a problem needs a name, got {self.name!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if self.target is not None:
            object.__setattr__(self, "target", float(self.target))
        if self.start is not None:
            object.__setattr__(self, "start", tuple(float(v) for v in self.start))

    @staticmethod
    def of(problem: Problem, target: float | None = None) -> ProblemRef:
        params = dict(getattr(problem, "params", ()) or ())
        return ProblemRef(problem.name, params, target, problem=problem)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "options": dict(self.options)}
        if self.target is not None:
            d["target"] = self.target
        if self.start is not None:
            d["start"] = list(self.start)
        if self.problem is not None:
            d["live"] = True  # built from a Python object: not rebuildable from this data alone
        return d


def load_catalog(spec: str) -> Catalog:
    """``"package.module:NAME"`` -> the mapping it names."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(
            f"a problem catalog is given as module:MAPPING (e.g. landscapes.catalog:LANDSCAPES), got {spec!r}"
        )
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load problem catalog {spec!r}: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"problem catalog {spec!r} is a {type(obj).__name__}, not a mapping name -> factory")
    return obj


def installed_catalogs() -> list[Catalog]:
    """The catalogs declared under the ``optiscope.problems`` entry-point group."""
    out = []
    for ep in entry_points(group=GROUP):
        obj = ep.load()
        if isinstance(obj, Mapping):
            out.append(obj)
    return out


def merged(catalogs: Sequence[Catalog | str] | None = None) -> dict[str, Callable[..., Problem]]:
    """One name -> factory table from ``catalogs`` (mappings or ``module:NAME`` strings), or from
    the installed ones when none are given."""
    found = (
        [load_catalog(c) if isinstance(c, str) else c for c in catalogs] if catalogs else installed_catalogs()
    )
    table: dict[str, Callable[..., Problem]] = {}
    for cat in found:
        for name, factory in cat.items():
            table.setdefault(name, factory)
    return table


def check_options(name: str, factory: Callable[..., Problem], options: Mapping[str, Any]) -> None:
    """Raise a clear ValueError if ``factory`` does not take every key of ``options``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if unknown:
        takes = ", ".join(params) or "no options"
        raise ValueError(f"problem {name!r} does not take {', '.join(map(repr, unknown))}; it takes: {takes}")


def resolve(ref: ProblemRef, table: Mapping[str, Callable[..., Problem]]) -> Problem:
    """The live problem of ``ref`` (its own object, or built from ``table``), with clear errors."""
    if ref.problem is not None:
        return ref.problem
    if ref.name not in table:
        if not table:
            raise ValueError(
                f"no problem catalog is installed, so {ref.name!r} cannot be found: install the "
                f"project (pip install -e .), or name a catalog (--problems "
                f"landscapes.catalog:LANDSCAPES)"
            )
        raise ValueError(f"unknown problem {ref.name!r}; known: {', '.join(sorted(table))}")
    factory = table[ref.name]
    check_options(ref.name, factory, ref.options)
    try:
        return factory(**ref.options)
    except TypeError as exc:
        raise ValueError(f"problem {ref.name!r}: {exc}") from None
