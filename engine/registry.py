r"""Optimizer registry: a name maps to an :class:`OptimizerSpec`.

A spec is data: how to build a ``torch.optim.Optimizer``, its hyperparameters (default,
range, log scale), the update rule in LaTeX, the paper, and which oracle it consumes. The UI
builds its controls from specs and the tests iterate over them, so adding an optimizer is one
:func:`register_optimizer` call and nothing else.
"""

from __future__ import annotations

import enum
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.stability import StabilityRule


class Oracle(enum.StrEnum):
    """What an optimizer asks of the problem at each step."""

    VALUES = "values"  # zeroth order: function values only
    GRADIENTS = "gradients"  # first order
    HVPS = "hvps"  # second order: gradients and Hessian-vector products
    JVPS = "jvps"  # forward mode: directional derivatives
    RANKINGS = "rankings"  # only the order of candidate points (possibly from a person)



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
    default: float | int | bool
    low: float | None = None
    high: float | None = None
    log: bool = False
    kind: str = "float"  # "float" | "int" | "bool"
    include_low: bool = True
    include_high: bool = True
    doc: str = ""
    target: str | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("float", "int", "bool"):
            raise ValueError(f"Hyperparameter {self.name}: kind must be float, int or bool")
        if self.log and (self.low is None or self.low <= 0):
            raise ValueError(f"Hyperparameter {self.name}: a log-scale range needs low > 0")
        if self.kind != "bool":
            self.check(self.default)  # a spec whose default is out of range is a bug

    @property
    def key(self) -> str:
        return self.target or self.name

    def range_text(self) -> str:
        if self.kind == "bool":
            return "True or False"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "[" if self.include_low and self.low is not None else "("
        right = "]" if self.include_high and self.high is not None else ")"
        return f"{left}{lo}, {hi}{right}"

    def check(self, value: Any, owner: str = "") -> float | int | bool:
        """Return ``value`` coerced to this hyperparameter's kind, or raise a clear error."""
        where = f"{owner}: " if owner else ""
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            raise HyperparameterError(f"{where}{self.name} must be True or False, got {value!r}")
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
    their records (:meth:`read_diagnostics`)."""

    @property
    def closure_driven(self) -> bool:
        """Stepped as ``optimizer.step(Oracles(...))`` (see :mod:`engine.oracles`), one optimizer per
        trajectory, rather than only from the gradient the run put in ``.grad``."""
        return self.oracle is not Oracle.GRADIENTS or self.lookahead

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
        """Set one hyperparameter on a live optimizer (takes effect at its next step)."""
        hp = self.hyperparameter(name)
        value = hp.check(value, self.name)
        for group in optimizer.param_groups:
            if hp.index is None:
                group[hp.key] = value
            else:
                parts = list(group[hp.key])
                parts[hp.index] = value
                group[hp.key] = tuple(parts)
        return value

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


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
    """Add a spec to the registry (``replace=True`` to overwrite an existing name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered (pass replace=True)")
    _REGISTRY[spec.name] = spec
    return spec


def _builtins() -> None:
    """Register the built-in optimizers on first use (they import this module, so not at import)."""
    import engine.optimizers  # noqa: F401


def get_spec(name: str) -> OptimizerSpec:
    _builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise HyperparameterError(
            f"unknown optimizer {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available(*, oracle: Oracle | None = None, family: str | None = None) -> list[str]:
    """Registered names, in registration order, optionally filtered."""
    _builtins()
    return [
        s.name for s in _REGISTRY.values()
        if (oracle is None or s.oracle == oracle) and (family is None or s.family == family)
    ]


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


# -- one-call registration of a user's own optimizer -------------------------------------------

def _guess_range(name: str, default: float) -> Hyperparameter:
    """A sensible range for a float constructor argument, from its name and default."""
    lname = name.lower()
    if lname in ("lr", "learning_rate"):
        lo = min(1e-6, default / 10) if default > 0 else 1e-6
        return Hyperparameter(name, default, lo, max(10.0, default * 10), log=True, include_low=True)
    if lname.startswith(("beta", "momentum", "rho", "alpha", "dampening", "gamma")):
        return Hyperparameter(name, default, 0.0, 1.0, include_high=False)
    if lname.startswith("eps"):
        return Hyperparameter(name, default, min(1e-16, default), max(1.0, default), log=default > 0)
    if "decay" in lname:
        return Hyperparameter(name, default, 0.0, max(1.0, default * 10))
    high = max(1.0, abs(default) * 10)
    return Hyperparameter(name, default, min(0.0, -high), high)


def infer_hyperparameters(cls: Callable[..., Any]) -> tuple[Hyperparameter, ...]:
    """Hyperparameters read off a constructor's signature: float, int, bool and tuple-of-float
    defaults become sliders (``betas=(0.9, 0.999)`` becomes ``beta1``, ``beta2``)."""
    hps: list[Hyperparameter] = []
    for p in list(inspect.signature(cls).parameters.values())[1:]:  # skip params
        d = p.default
        if isinstance(d, bool):
            hps.append(Hyperparameter(p.name, d, kind="bool"))
        elif isinstance(d, (int, float)):
            hp = _guess_range(p.name, float(d))
            if isinstance(d, int) and p.name.lower() not in ("lr",):
                hp = Hyperparameter(p.name, d, hp.low, hp.high, kind="int")
            hps.append(hp)
        elif isinstance(d, tuple) and d and all(isinstance(v, float) for v in d):
            stem = p.name[:-1] if p.name.endswith("s") else p.name
            for i, v in enumerate(d):
                base = _guess_range(f"{stem}{i + 1}", v)
                hps.append(Hyperparameter(f"{stem}{i + 1}", v, base.low, base.high, base.log,
                                          include_high=base.include_high, target=p.name, index=i))
    return tuple(hps)


def register_optimizer(
    cls: Callable[..., torch.optim.Optimizer],
    *,
    name: str | None = None,
    hyperparameters: Iterable[Hyperparameter] | None = None,
    update_rule: str = "",
    paper: Paper | None = None,
    oracle: Oracle = Oracle.GRADIENTS,
    family: str = "user",
    row_separable: bool = False,
    per_trajectory: bool = False,
    seeded: bool = False,
    replace: bool = False,
    **fixed: Any,
) -> OptimizerSpec:
    """Register a ``torch.optim.Optimizer`` subclass (or factory) in one call.

    Hyperparameters are read from the constructor's signature unless given explicitly.
    ``row_separable`` defaults to False, the safe choice: the race then gives each start its own
    parameter tensor.
    """
    hps = tuple(hyperparameters) if hyperparameters is not None else infer_hyperparameters(cls)
    if not any(hp.name == "lr" for hp in hps):
        raise ValueError(f"{getattr(cls, '__name__', cls)}: an optimizer needs an 'lr' hyperparameter")
    spec = OptimizerSpec(
        name=name or getattr(cls, "__name__", "optimizer").lower(),
        factory=cls,
        hyperparameters=hps,
        update_rule=update_rule,
        paper=paper,
        oracle=oracle,
        family=family,
        row_separable=row_separable,
        fixed=dict(fixed),
        seeded=seeded,
        per_trajectory=per_trajectory,
    )
    return register(spec, replace=replace)
