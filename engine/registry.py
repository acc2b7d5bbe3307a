r"""Optimizer registry: a name maps to an :class:`~engine.specs.OptimizerSpec`.

The built-ins are the one explicit list :data:`engine.optimizers.BUILTINS` (each family module
declares its ``SPECS``; nothing registers itself on import). A user's own ``torch.optim.Optimizer``
joins them in one :func:`register_optimizer` call; the UI builds its controls from the specs and
the tests iterate over them.

The spec types live in :mod:`engine.specs` and are re-exported here, so
``from engine.registry import OptimizerSpec, Hyperparameter, ...`` keeps working.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from engine.optimizers import BUILTINS
from engine.specs import (
    CLIPPED_FRACTION,
    Hyperparameter,
    HyperparameterError,
    OptimizerSpec,
    Oracle,
    Paper,
)

__all__ = [
    "CLIPPED_FRACTION", "Hyperparameter", "HyperparameterError", "OptimizerSpec", "Oracle", "Paper",
    "available", "get_spec", "infer_hyperparameters", "register", "register_optimizer", "unregister",
]

_REGISTRY: dict[str, OptimizerSpec] = {spec.name: spec for spec in BUILTINS}
"""Every name -> spec: the built-ins first, in the order of :data:`engine.optimizers.BUILTINS`,
then registrations, in their order."""
if len(_REGISTRY) != len(BUILTINS):
    raise RuntimeError("two built-in optimizers share a name")


def register(spec: OptimizerSpec, *, replace: bool = False) -> OptimizerSpec:
    """Add a spec to the registry (``replace=True`` to overwrite an existing name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"an optimizer named {spec.name!r} is already registered (pass replace=True)")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> OptimizerSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise HyperparameterError(
            f"unknown optimizer {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available(*, oracle: Oracle | None = None, family: str | None = None) -> list[str]:
    """Registered names, in registration order, optionally filtered."""
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
