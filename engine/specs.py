r"""Optimizer specs as data: what the engine, the UI and the tests know about one optimizer.

A spec says how to build a ``torch.optim.Optimizer``, its hyperparameters (default, range, log
scale), the update rule in LaTeX, the paper, which oracle it consumes, and what instruments need
(its stability threshold, its second-moment state key, the diagnostics it reports). The families in
:mod:`engine.optimizers` declare their specs with these types; :mod:`engine.registry` maps names to
them. This module imports no optimizer.

The hyperparameter vocabulary every family shares (:func:`lr`, :func:`beta`, :func:`eps`,
:func:`weight_decay`, :data:`MOMENTUM`, :data:`ADAM_BETAS`) lives here too.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.stability import StabilityRule

CLIPPED_FRACTION = "clipped_fraction"
"""The diagnostic of a lane whose gradient (or gradient estimate) is clipped (:mod:`engine.clipping`).
A closure-driven spec that declares it clips what it steps from when the run hands it the lane's clip
(``optimizer.clip``, :class:`engine.optimizers.base.GradientEstimator`); the run clips ``p.grad``
itself for the lanes it steps with ``optimizer.step()``."""


class Oracle(enum.StrEnum):
    """What an optimizer asks of the problem at each step."""

    VALUES = "values"  # zeroth order: function values only
    GRADIENTS = "gradients"  # first order
    HVPS = "hvps"  # second order: gradients and Hessian-vector products
    JVPS = "jvps"  # forward mode: directional derivatives
    RANKINGS = "rankings"  # only the order of candidate points (possibly from a person)


KINDS = ("float", "int", "bool", "choice")
"""What a hyperparameter's value is: a real number (a slider, maybe log-scaled), an integer, a flag,
or one of a few named options (``choices``, e.g. Sophia's Hessian-diagonal estimator)."""


class HyperparameterError(ValueError):
    """A hyperparameter is unknown or outside its allowed range; the message says which."""


@dataclass(frozen=True)
class Hyperparameter:
    """One tunable hyperparameter, as data.

    ``target`` names the ``param_group`` entry it lives in; ``index`` picks an element of a tuple
    entry (``beta1`` is ``betas[0]``). ``include_low``/``include_high`` say whether the range
    ends are allowed (``beta1 in [0, 1)``).
    """

    name: str
    default: float | int | bool | str
    low: float | None = None
    high: float | None = None
    log: bool = False
    kind: str = "float"  # one of KINDS
    include_low: bool = True
    include_high: bool = True
    doc: str = ""
    target: str | None = None
    index: int | None = None
    choices: tuple[str, ...] = ()
    """The allowed values of a ``kind="choice"`` hyperparameter (strings: a log, a link and a widget
    carry them as they are); empty for every other kind."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Hyperparameter {self.name}: kind must be one of {', '.join(KINDS)}")
        if self.log and (self.low is None or self.low <= 0):
            raise ValueError(f"Hyperparameter {self.name}: a log-scale range needs low > 0")
        if (self.kind == "choice") != bool(self.choices):
            raise ValueError(f"Hyperparameter {self.name}: choices are given exactly for kind='choice'")
        if self.kind == "choice" and (len(set(self.choices)) != len(self.choices)
                                      or not all(isinstance(c, str) and c for c in self.choices)):
            raise ValueError(f"Hyperparameter {self.name}: choices must be distinct non-empty strings")
        if self.kind != "bool":
            self.check(self.default)  # a spec whose default is out of range is a bug

    @property
    def key(self) -> str:
        return self.target or self.name

    def range_text(self) -> str:
        if self.kind == "bool":
            return "True or False"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "[" if self.include_low and self.low is not None else "("
        right = "]" if self.include_high and self.high is not None else ")"
        return f"{left}{lo}, {hi}{right}"

    def check(self, value: Any, owner: str = "") -> float | int | bool | str:
        """Return ``value`` coerced to this hyperparameter's kind, or raise a clear error."""
        where = f"{owner}: " if owner else ""
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise HyperparameterError(f"{where}{self.name} must be True or False, got {value!r}")
        if self.kind == "choice":
            if isinstance(value, str) and value in self.choices:
                return value
            raise HyperparameterError(f"{where}{self.name} must be {self.range_text()}, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HyperparameterError(f"{where}{self.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise HyperparameterError(f"{where}{self.name} must be finite, got {value!r}")
        if self.kind == "int":
            if int(value) != value:
                raise HyperparameterError(f"{where}{self.name} must be an integer, got {value!r}")
            value = int(value)
        else:
            value = float(value)
        too_low = self.low is not None and (value < self.low or (value == self.low and not self.include_low))
        too_high = self.high is not None and (
            value > self.high or (value == self.high and not self.include_high))
        if too_low or too_high:
            raise HyperparameterError(
                f"{where}{self.name}={value!r} is outside its allowed range {self.range_text()}"
            )
        return value


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    url: str = ""

    def cite(self) -> str:
        return f"{self.authors} ({self.year}). {self.title}."


@dataclass(frozen=True)
class OptimizerSpec:
    """Everything the engine, the UI and the tests know about one optimizer."""

    name: str
    factory: Callable[..., torch.optim.Optimizer]
    hyperparameters: tuple[Hyperparameter, ...]
    update_rule: str = ""
    paper: Paper | None = None
    oracle: Oracle = Oracle.GRADIENTS
    family: str = "first-order"
    label: str = ""
    row_separable: bool = False
    """True when the update of each coordinate depends only on that coordinate's history, so the
    rows of one ``[M, d]`` tensor are M independent runs (Adam yes; AdamP, SGD-SaI and anything
    with a tensor-wide norm no). Non-separable optimizers get one parameter tensor per row."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Constructor arguments that are part of the algorithm, not tunable (``nesterov=True``)."""
    requires: Mapping[str, str] = field(default_factory=dict)
    """Problem attributes the optimizer needs, each with what it means (Sophia-G: a
    ``sampled_losses`` hook, i.e. a network with a likelihood); a run refuses it elsewhere."""
    lookahead: bool = False
    """A first-order method that also evaluates gradients at other points (extragradient / mirror
    prox): it gets this step's gradient in ``.grad`` and an :class:`engine.oracles.Oracles` closure
    for ``gradient_at``."""
    uses_model: bool = False
    """The optimizer reads the network behind the loss at this step's minibatch (TrAct's first-layer
    inputs, Gauss-Newton and Fisher products): it is closure-driven and its
    :class:`engine.oracles.Oracles` carries the problem's :class:`engine.oracles.ModelView` (None on
    a problem without one)."""
    problem_check: Callable[[Any], str | None] | None = None
    """A check of the problem beyond ``requires``: the reason the optimizer cannot run on it, or None
    (TrAct: a network whose first layer is linear)."""
    per_trajectory: bool = False
    """The optimizer's state couples all the tensors it holds (M-FAC's Fisher window, L-BFGS's
    history), so a race gives each start its own optimizer (closure-driven optimizers always get
    one) rather than one optimizer over every start's tensors."""
    seeded: bool = False
    """The optimizer draws random numbers and takes a ``seed`` constructor argument; a run passes
    one per trajectory, derived from its own seed, so a run replays exactly."""
    stability: StabilityRule | None = None
    """Its stability threshold at live hyperparameters (:mod:`engine.stability`), if a classical
    one exists; curvature probes plot the sharpness against it."""
    second_moment_key: str | None = None
    """The state entry holding an Adam-type method's second moment :math:`v_t` (its
    preconditioner), for the preconditioned sharpness; None for other methods."""
    diagnostics: Mapping[str, str] = field(default_factory=dict)
    """What the optimizer reports about its own last step, name -> meaning (Sophia's clipped
    fraction, AdamP's projected fraction, FRUGAL's state density, ...). The optimizer object
    implements ``diagnostics() -> Mapping[str, float]`` with these keys; runs put the values in
    their records (:meth:`read_diagnostics`). A closure-driven spec that declares
    :data:`CLIPPED_FRACTION` clips its own gradient estimate (see :attr:`clips_estimate`)."""

    @property
    def clips_estimate(self) -> bool:
        """A closure-driven optimizer that clips what it steps from (its estimate, or a copy of the
        run's gradient) when the run sets its ``clip``: every one but the population method."""
        return self.closure_driven and CLIPPED_FRACTION in self.diagnostics

    @property
    def closure_driven(self) -> bool:
        """Stepped as ``optimizer.step(Oracles(...))`` (see :mod:`engine.oracles`), one optimizer per
        trajectory, rather than only from the gradient the run put in ``.grad``."""
        return self.oracle is not Oracle.GRADIENTS or self.lookahead or self.uses_model

    @property
    def display_name(self) -> str:
        return self.label or self.name

    def hyperparameter(self, name: str) -> Hyperparameter:
        for hp in self.hyperparameters:
            if hp.name == name:
                return hp
        known = ", ".join(hp.name for hp in self.hyperparameters) or "none"
        raise HyperparameterError(f"{self.name} has no hyperparameter {name!r} (known: {known})")

    def check_problem(self, problem: Any) -> None:
        """Raise a clear ValueError if ``problem`` lacks something this optimizer needs."""
        for attr, meaning in self.requires.items():
            if not hasattr(problem, attr):
                raise ValueError(f"{self.display_name} cannot run on {getattr(problem, 'name', problem)}: "
                                 f"it needs {meaning}")
        reason = self.problem_check(problem) if self.problem_check is not None else None
        if reason:
            where = getattr(problem, "name", problem)
            raise ValueError(f"{self.display_name} cannot run on {where}: {reason}")

    def defaults(self) -> dict[str, Any]:
        return {hp.name: hp.default for hp in self.hyperparameters}

    def validate(self, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Defaults overridden by ``values``; every value checked against its range."""
        out = self.defaults()
        for name, value in (values or {}).items():
            out[name] = self.hyperparameter(name).check(value, self.name)
        return out

    def _torch_kwargs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.fixed)
        tuples: dict[str, dict[int, Any]] = {}
        for hp in self.hyperparameters:
            if hp.index is None:
                kwargs[hp.key] = values[hp.name]
            else:
                tuples.setdefault(hp.key, {})[hp.index] = values[hp.name]
        for key, parts in tuples.items():
            kwargs[key] = tuple(parts[i] for i in sorted(parts))
        return kwargs

    def build(self, params: Iterable[torch.Tensor], values: Mapping[str, Any] | None = None,
              seed: int = 0) -> torch.optim.Optimizer:
        """A ready ``torch.optim.Optimizer`` over ``params`` with validated hyperparameters
        (and ``seed`` when the optimizer is ``seeded``)."""
        kwargs = self._torch_kwargs(self.validate(values))
        if self.seeded:
            kwargs["seed"] = seed
        return self.factory(list(params), **kwargs)

    def apply(self, optimizer: torch.optim.Optimizer, name: str, value: Any) -> Any:
        """Set one hyperparameter on a live optimizer (takes effect at its next step), range-checked."""
        value = self.hyperparameter(name).check(value, self.name)
        self.write(optimizer, name, value)
        return value

    def write(self, optimizer: torch.optim.Optimizer, name: str, value: Any) -> None:
        """Set one hyperparameter on a live optimizer as given, without the range check (a schedule
        may take a checked base below its range, down to 0)."""
        hp = self.hyperparameter(name)
        for group in optimizer.param_groups:
            if hp.index is None:
                group[hp.key] = value
            else:
                parts = list(group[hp.key])
                parts[hp.index] = value
                group[hp.key] = tuple(parts)

    def read_diagnostics(self, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """The declared diagnostics of ``optimizer``'s last step (empty before its first step)."""
        if not self.diagnostics:
            return {}
        values = optimizer.diagnostics()  # type: ignore[attr-defined]
        return {k: float(values[k]) for k in self.diagnostics if k in values}

    def read(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The hyperparameters a live optimizer is using now."""
        group = optimizer.param_groups[0]
        return {
            hp.name: group[hp.key] if hp.index is None else group[hp.key][hp.index]
            for hp in self.hyperparameters
        }


# -- the hyperparameters every family shares ----------------------------------------------------

def lr(default: float, low: float = 1e-6, high: float = 10.0) -> Hyperparameter:
    """The learning rate every optimizer has: log-scaled, strictly positive."""
    return Hyperparameter("lr", default, low, high, log=True, doc="learning rate \\eta")


def beta(name: str, default: float, index: int | None = None, target: str = "betas",
         doc: str = "") -> Hyperparameter:
    """An exponential-moving-average coefficient in [0, 1) (``index``: an element of ``betas``)."""
    return Hyperparameter(name, default, 0.0, 1.0, include_high=False, doc=doc,
                          target=target if index is not None else None, index=index)


def eps(default: float) -> Hyperparameter:
    return Hyperparameter("eps", default, 1e-16, 1.0, log=True, doc="numerical stabiliser \\epsilon")


def weight_decay(default: float = 0.0) -> Hyperparameter:
    return Hyperparameter("weight_decay", default, 0.0, 1.0, doc="weight decay \\lambda")


def choice(name: str, default: str, choices: Iterable[str], doc: str = "") -> Hyperparameter:
    """A hyperparameter that names one of a few options (a widget's drop-down), e.g. an estimator."""
    return Hyperparameter(name, default, kind="choice", choices=tuple(choices), doc=doc)


MOMENTUM = Hyperparameter("momentum", 0.9, 0.0, 1.0, include_high=False, doc="momentum \\mu")
ADAM_BETAS = (beta("beta1", 0.9, 0, doc="first-moment decay"),
              beta("beta2", 0.999, 1, doc="second-moment decay"))
