"""The experiment spec: problems x optimizers (each with a search space) x seeds, on a budget.

Three front doors build the same :class:`ExperimentSpec`: a TOML file (:meth:`ExperimentSpec.from_toml`),
Python (the dataclasses, or :meth:`from_dict`), and a race in the app
(:meth:`ExperimentSpec.from_race`). Everything is checked by :meth:`ExperimentSpec.validate`
before any work starts: unknown problems, optimizers and hyperparameters, empty or enormous
search spaces, a budget of zero, extra lane options the engine does not take.

**Seeds and starts.** ``seeds`` are run seeds: each is a separate :class:`engine.run.Run`
(``RunConfig.seed``), which draws its own minibatches, random starts and optimizer noise.
``starts`` is the number of rows of each run: row 0 starts at the problem's default start (or the
problem's ``start``), rows 1..starts-1 at seeded random starts (uniform in a landscape's bounds, a
fresh initialization of a network). Rows share the run's minibatch sequence (common random
numbers); several ``seeds`` vary it too. A trial is one (configuration, seed, start): the
results have one row per trial.

**Budget.** Each trajectory runs until it has spent ``budget`` oracle units
(:mod:`engine.experiments.budget`) or ``max_steps`` steps; the target is a loss value (per problem
or for all).

**Limits.** Until the project's ``engine/limits.py`` lands, the caps are the constants below,
checked here: ``MAX_TRIALS`` trajectories per experiment, ``MAX_CONFIGURATIONS`` per optimizer,
``MAX_STEPS`` steps per trajectory.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from engine.experiments.budget import OracleCosts
from engine.experiments.problems import ProblemRef, merged, resolve
from engine.experiments.search import Dimension, configurations, search_size
from engine.problem import Problem
from engine.registry import HyperparameterError, get_spec
from engine.run import LaneConfig, RunConfig

MAX_TRIALS = 200_000
"""Trajectories (configurations x seeds x starts, over all problems) one experiment may run."""
MAX_CONFIGURATIONS = 4_096
"""Configurations one optimizer's search may produce."""
MAX_STEPS = 1_000_000
"""Steps one trajectory may take (``max_steps`` may not exceed it)."""


class SpecError(ValueError):
    """An experiment spec that cannot run; the message says what to change."""


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer of an experiment: ``search`` maps hyperparameters to :class:`Dimension`\\ s,
    ``fixed`` holds others at a value, ``samples`` overrides the spec's number of random draws,
    and ``lane`` is extra :class:`engine.run.LaneConfig` keyword data (schedules, clipping, batch
    size: passed through unchanged). ``label`` tells two entries of one optimizer apart."""

    name: str
    search: Mapping[str, Dimension] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    samples: int | None = None
    lane: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "search", MappingProxyType({k: Dimension.parse(v) for k, v in dict(self.search).items()})
        )
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))
        object.__setattr__(self, "lane", MappingProxyType(dict(self.lane)))
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "search": {k: d.to_dict() for k, d in self.search.items()},
            "fixed": dict(self.fixed),
            "samples": self.samples,
            "lane": dict(self.lane),
        }


@dataclass(frozen=True)
class Configuration:
    """One hyperparameter setting of one optimizer entry (``index`` 0 is the defaults when the
    spec includes them)."""

    entry: str  # the entry's label
    optimizer: str
    index: int
    hyperparameters: Mapping[str, Any]
    lane: Mapping[str, Any]
    is_default: bool

    def lane_config(self) -> LaneConfig:
        return LaneConfig(self.optimizer, dict(self.hyperparameters), **dict(self.lane))


@dataclass(frozen=True)
class ExperimentSpec:
    """See the module docstring. ``budget`` is oracle units per trajectory."""

    problems: tuple[ProblemRef, ...]
    optimizers: tuple[OptimizerEntry, ...]
    budget: float
    target: float | None = None
    seeds: tuple[int, ...] = (0,)
    starts: int = 1
    samples: int = 16
    search_seed: int = 0
    include_default: bool = True
    costs: OracleCosts = field(default_factory=OracleCosts)
    max_steps: int = 100_000
    dtype: str = "float64"
    device: str = "auto"
    name: str = "experiment"

    def __post_init__(self) -> None:
        probs = [
            p if isinstance(p, ProblemRef) else (ProblemRef.of(p) if hasattr(p, "loss") else ProblemRef(**p))
            for p in self.problems
        ]
        object.__setattr__(self, "problems", tuple(probs))
        opts = [
            o
            if isinstance(o, OptimizerEntry)
            else (OptimizerEntry(o) if isinstance(o, str) else OptimizerEntry(**o))
            for o in self.optimizers
        ]
        object.__setattr__(self, "optimizers", tuple(opts))
        if isinstance(self.costs, Mapping):
            object.__setattr__(self, "costs", OracleCosts.from_dict(self.costs))
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            raise SpecError(f"seeds is a list of run seeds (e.g. [0, 1, 2]), got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(self.seeds))

    # -- checks ---------------------------------------------------------------------------------
    def validate(self, catalogs: Sequence[Any] | None = None) -> dict[str, Problem]:
        """Check everything that can be checked without running; return the live problems by name.
        Raises :class:`SpecError` with a message in the user's terms."""
        try:
            return self._validate(catalogs)
        except SpecError:
            raise
        except (HyperparameterError, ValueError, TypeError) as exc:
            raise SpecError(str(exc)) from None

    def _validate(self, catalogs: Sequence[Any] | None) -> dict[str, Problem]:
        if not self.problems:
            raise SpecError("the experiment names no problems")
        if not self.optimizers:
            raise SpecError("the experiment names no optimizers")
        b = self.budget
        if isinstance(b, bool) or not isinstance(b, int | float) or not math.isfinite(b) or b <= 0:
            raise SpecError(f"budget must be a positive number of oracle units per trajectory, got {b!r}")
        if self.target is not None and not math.isfinite(float(self.target)):
            raise SpecError(f"target must be a finite loss value, got {self.target!r}")
        if not self.seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds
        ):
            raise SpecError(f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise SpecError(f"seeds repeat: {list(self.seeds)!r}")
        for name, value, cap in (
            ("starts", self.starts, MAX_TRIALS),
            ("samples", self.samples, MAX_CONFIGURATIONS),
            ("max_steps", self.max_steps, MAX_STEPS),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cap:
                raise SpecError(f"{name} must be an integer from 1 to {cap:,}, got {value!r}")
        RunConfig(lanes=(), dtype=self.dtype)  # dtype check, with the engine's message
        labels = [o.label for o in self.optimizers]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise SpecError(
                f"optimizer entries must have distinct labels; repeated: {', '.join(dup)} (give each a label)"
            )
        names = [p.name for p in self.problems]
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise SpecError(f"problems repeat: {', '.join(dup)}")
        table = merged(catalogs) if any(p.problem is None for p in self.problems) else {}
        problems = {ref.name: resolve(ref, table) for ref in self.problems}
        n_configs = 0
        for entry in self.optimizers:
            configs = self.configurations(entry)  # checks names, ranges and sizes
            n_configs += len(configs)
            if any(c.hyperparameters.get("human") for c in configs):
                raise SpecError(
                    f"{entry.label}: human = true waits for a person's rankings; an experiment "
                    f"runs unattended"
                )
            try:
                configs[0].lane_config()
            except TypeError as exc:
                raise SpecError(
                    f"{entry.label}: lane options {sorted(entry.lane)} are not taken by this engine's "
                    f"LaneConfig ({exc})"
                ) from None
            spec = get_spec(entry.name)
            for problem in problems.values():
                spec.check_problem(problem)
        for ref, problem in zip(self.problems, problems.values(), strict=True):
            if ref.start is not None and len(ref.start) != problem.dim:
                raise SpecError(
                    f"{ref.name}: start has {len(ref.start)} coordinates but the problem has "
                    f"dim {problem.dim}"
                )
            if self.starts > 1 and problem.bounds is None and not hasattr(problem, "random_starts"):
                raise SpecError(
                    f"{ref.name} has no bounds or random initializer to draw {self.starts - 1} "
                    f"random starts from: use starts = 1"
                )
        trials = n_configs * len(self.seeds) * self.starts * len(self.problems)
        if trials > MAX_TRIALS:
            raise SpecError(
                f"the experiment has {trials:,} trials ({n_configs} configurations x "
                f"{len(self.seeds)} seeds x {self.starts} starts x {len(self.problems)} problems), "
                f"over the limit of {MAX_TRIALS:,}: shrink the search, seeds or starts"
            )
        return problems

    # -- configurations -------------------------------------------------------------------------
    def configurations(self, entry: OptimizerEntry) -> list[Configuration]:
        """The configurations of ``entry``: its defaults first (when ``include_default``), then the
        search's (:func:`engine.experiments.search.configurations`)."""
        spec = get_spec(entry.name)
        for name in (*entry.search, *entry.fixed):
            spec.hyperparameter(name)  # an unknown one raises with the list of known ones
        both = sorted(set(entry.search) & set(entry.fixed))
        if both:
            raise SpecError(f"{entry.label}: {', '.join(both)} is both searched and fixed")
        samples = self.samples if entry.samples is None else entry.samples
        size = search_size(entry.search, samples) if entry.search else 0
        if size > MAX_CONFIGURATIONS:
            raise SpecError(
                f"{entry.label}: the search space has {size:,} configurations, over the limit of "
                f"{MAX_CONFIGURATIONS:,} per optimizer"
            )
        if size == 0 and not self.include_default:
            raise SpecError(
                f"{entry.label}: the search space is empty (no hyperparameter is searched and "
                f"include_default is false)"
            )
        hps = []
        if self.include_default:
            hps.append(spec.validate(entry.fixed))
        if entry.search:
            hps += configurations(
                spec, entry.search, samples=samples, seed=self.search_seed, fixed=entry.fixed
            )
        return [
            Configuration(
                entry.label, entry.name, i, MappingProxyType(h), entry.lane, self.include_default and i == 0
            )
            for i, h in enumerate(hps)
        ]

    def target_for(self, ref: ProblemRef) -> float | None:
        return ref.target if ref.target is not None else (None if self.target is None else float(self.target))

    # -- data -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["problems"] = [p.to_dict() for p in self.problems]
        d["optimizers"] = [o.to_dict() for o in self.optimizers]
        d["costs"] = self.costs.to_dict()
        d["seeds"] = list(self.seeds)
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> ExperimentSpec:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(ExperimentSpec)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(
                f"unknown experiment key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        for key in ("problems", "optimizers", "budget"):
            if key not in d:
                raise SpecError(f"the experiment needs {key!r}")
        try:
            d["problems"] = tuple(_problem(p) for p in d["problems"])
            d["optimizers"] = tuple(_entry(o) for o in d["optimizers"])
            return ExperimentSpec(**d)
        except SpecError:
            raise
        except (TypeError, ValueError) as exc:
            raise SpecError(str(exc)) from None

    @staticmethod
    def from_toml(path: str | Path) -> ExperimentSpec:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(f"no experiment spec at {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{path} is not valid TOML: {exc}") from None
        return ExperimentSpec.from_dict(data)

    @staticmethod
    def from_race(
        problem_name: str,
        options: Mapping[str, Any],
        run_config: RunConfig,
        *,
        budget: float = 3000.0,
        target: float | None = None,
        search: Mapping[str, Any] | Callable[[LaneConfig], Mapping[str, Any]] | None = None,
        seeds: Sequence[int] | None = None,
        samples: int = 16,
    ) -> ExperimentSpec:
        """An experiment around a race: each lane's optimizer with its current hyperparameters
        held fixed except the searched ones; by default ``lr`` over 17 values from 1/100 to 100x the
        lane's own (which is one of them), four per decade, inside the spec's range. The race's seed,
        starts, start point, dtype and device carry over; extra lane options (schedules, clipping) too."""
        entries = []
        for i, lane in enumerate(run_config.lanes):
            spec = get_spec(lane.optimizer)
            hps = spec.validate(lane.hyperparameters)
            chosen = search(lane) if callable(search) else search
            if chosen is None:
                hp = spec.hyperparameter("lr")  # the race's lr times 10^(k/4), k = -8..8, inside the range
                values = [hps["lr"] * 10 ** (k / 4) if k else hps["lr"] for k in range(-8, 9)]
                chosen = {
                    "lr": [
                        v
                        for v in values
                        if (hp.low is None or v >= hp.low) and (hp.high is None or v <= hp.high)
                    ]
                }
            fixed = {k: v for k, v in hps.items() if k not in chosen and v != spec.hyperparameter(k).default}
            extra = {
                f.name: getattr(lane, f.name)
                for f in dataclasses.fields(lane)
                if f.name not in ("optimizer", "hyperparameters")
            }
            extra = {k: v for k, v in extra.items() if v not in (None, {}, ())}
            label = (
                lane.optimizer
                if sum(ln.optimizer == lane.optimizer for ln in run_config.lanes) == 1
                else f"{lane.optimizer}#{i}"
            )
            entries.append(OptimizerEntry(lane.optimizer, chosen, fixed, lane=extra, label=label))
        ref = ProblemRef(problem_name, options, start=run_config.start)
        return ExperimentSpec(
            problems=(ref,),
            optimizers=tuple(entries),
            budget=budget,
            target=target,
            seeds=tuple(seeds) if seeds is not None else (run_config.seed,),
            starts=run_config.n_starts,
            samples=samples,
            dtype=run_config.dtype,
            device=run_config.device,
            name=f"around a race on {problem_name}",
        )


def _problem(p: Any) -> ProblemRef:
    if isinstance(p, ProblemRef):
        return p
    if isinstance(p, str):
        return ProblemRef(p)
    if hasattr(p, "loss"):
        return ProblemRef.of(p)
    p = dict(p)
    p.pop("live", None)
    unknown = sorted(set(p) - {"name", "options", "target", "start"})
    if unknown:
        raise SpecError(f"unknown problem key(s) {', '.join(unknown)}; known: name, options, target, start")
    return ProblemRef(**p)


def _entry(o: Any) -> OptimizerEntry:
    if isinstance(o, OptimizerEntry):
        return o
    if isinstance(o, str):
        return OptimizerEntry(o)
    o = dict(o)
    unknown = sorted(set(o) - {f.name for f in dataclasses.fields(OptimizerEntry)})
    if unknown:
        raise SpecError(
            f"unknown optimizer key(s) {', '.join(unknown)}; known: name, label, search, fixed, samples, lane"
        )
    return OptimizerEntry(**o)
