"""Sensible hyperparameters per problem x optimizer: what a lane starts with on a problem.

A learning rate is a property of the problem as much as of the optimizer: Rosenbrock's curvature
(~1,900 at its start) caps gradient descent at lr ~1e-3, while the digits MLP needs ~1 to learn in a
few hundred steps (at 1e-3 it reaches 0.72 test accuracy after 900 steps), and Adam at 0.1, right
for Rosenbrock's floor, bounces on digits. The app applies a problem's row when a lane is created,
switched to another optimizer, or the race moves to another problem.

The network rows are MEASURED, not guessed: ``benchmarks/defaults.toml`` (an experiment: each
network x SGD / momentum / Adam over an lr grid, 300 gradient steps, two seeds) and
``benchmarks/defaults.py`` (for each pair, the lr with the lowest median log10 final loss; one that
diverged for any seed never wins) regenerate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

_MEASURED: dict[str, dict[str, dict[str, float]]] = {
    # python -m engine.experiments run benchmarks/defaults.toml; python benchmarks/defaults.py <parquet>
    "diabetes_regression": {"adam": {"lr": 0.1}, "momentum": {"lr": 0.3}, "sgd": {"lr": 0.3}},
    "digits_cnn": {"adam": {"lr": 0.03}, "momentum": {"lr": 0.03}, "sgd": {"lr": 0.3}},
    "digits_mlp": {"adam": {"lr": 0.03}, "momentum": {"lr": 0.3}, "sgd": {"lr": 1.0}},
    "digits_mlp_mse": {"adam": {"lr": 0.03}, "momentum": {"lr": 0.3}, "sgd": {"lr": 0.3}},
    "logistic_regression": {"adam": {"lr": 0.1}, "momentum": {"lr": 0.3}, "sgd": {"lr": 1.0}},
    "matrix_sensing": {"adam": {"lr": 0.1}, "momentum": {"lr": 0.3}, "sgd": {"lr": 0.3}},
    "moons_mlp": {"adam": {"lr": 0.1}, "momentum": {"lr": 0.3}, "sgd": {"lr": 1.0}},
}

_REASONED: dict[str, dict[str, dict[str, float]]] = {
    # Rosenbrock: curvature ~1,900 at the start, so gradient descent above ~1e-3 diverges; Adam's
    # steps are ~lr per coordinate, and 0.1 crosses the 2-wide view in a few seconds of a race.
    "rosenbrock": {"sgd": {"lr": 1e-3}, "momentum": {"lr": 1e-3}, "adam": {"lr": 0.1}},
}

SAME_AS: Mapping[str, str] = MappingProxyType({
    "nesterov": "momentum",  # same step size rule as heavy-ball momentum (Sutskever et al. 2013)
    "adamw": "adam",  # Adam's update; decoupled weight decay does not change the step size
    "amsgrad": "adam",
})
"""Optimizers that take the measured row of another (same update scale), where they have none."""

DEFAULTS: Mapping[str, Mapping[str, Mapping[str, float]]] = MappingProxyType(
    {p: MappingProxyType({o: MappingProxyType(v) for o, v in row.items()})
     for p, row in {**_MEASURED, **_REASONED}.items()})
"""problem -> optimizer -> {hyperparameter: value}: the one home of per-problem defaults."""


def problem_defaults(problem: str, optimizer: str) -> dict[str, Any]:
    """The hyperparameters ``problem`` asks of ``optimizer`` ({} when it asks nothing: the
    optimizer's own defaults then hold)."""
    row = DEFAULTS.get(problem, {})
    values = row.get(optimizer)
    if values is None and optimizer in SAME_AS:
        values = row.get(SAME_AS[optimizer])
    return dict(values or {})


def retune(optimizer: str, values: Mapping[str, Any], old_problem: str | None,
           new_problem: str) -> dict[str, Any]:
    """A lane's ``values`` for a race that moves from ``old_problem`` to ``new_problem``: the new
    problem's defaults replace the lane's; where the new problem asks nothing, values the old problem
    set go back to the optimizer's own defaults (digits' SGD lr = 1 would diverge on Rosenbrock)."""
    from engine.registry import get_spec  # the registry imports the optimizers: only when needed

    new = problem_defaults(new_problem, optimizer)
    if old_problem is not None:
        own = get_spec(optimizer).validate({})
        for name in problem_defaults(old_problem, optimizer):
            new.setdefault(name, own[name])
    return {**values, **new}


__all__ = ["DEFAULTS", "SAME_AS", "problem_defaults", "retune"]
