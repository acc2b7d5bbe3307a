r"""The bilevel panel's model (no Panel here): bilevel methods raced on a catalog problem, the penalty
method's bias swept over its penalty parameter, and SSO's two oracle counts beside SGD's.

* :func:`run_method` is :func:`engine.bilevel.trace` under the race's divergence rule: a job reports
  progress between steps, stops at a cancel (the run's own checkpoint), and a diverged method is shown
  as diverged, up to the step it left.
* Cost is counted in the experiments' **oracle units** (:class:`engine.experiments.budget.OracleCosts`:
  one unit = one forward pass; a gradient of f or g with respect to (x, y) is 3 with its forward, a
  Hessian-vector product of g is 4). Closed forms count nothing: the exact method with closed forms is
  the reference, not a competitor on cost.
* :func:`penalty_sweep` is :func:`engine.bilevel.penalty_bias` one penalty parameter at a time;
  :func:`sso_comparison` is :func:`engine.targets.oracle_trace` for SSO and SGD on the same minibatches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.bilevel import BilevelProblem, penalty_bias, trace
from engine.experiments.budget import OracleCosts
from engine.records import RUNNING
from engine.registry import available, get_spec
from engine.targets import OracleTrace, oracle_trace
from landscapes import get_landscape, get_network
from landscapes.catalog import LANDSCAPES

METHODS: tuple[str, ...] = tuple(available(family="bilevel"))
"""The registry's bilevel methods (exact implicit hypergradient, penalty, BO-REP, LV-HBA)."""
PROBLEMS: tuple[str, ...] = tuple(n for n, f in LANDSCAPES.items() if f.__module__ == "landscapes.bilevel")
"""The catalog's bilevel problems."""
SSO_ETA = {"logistic_regression": 4.0, "diabetes_regression": 1.0}
"""Network problems small enough for SSO and SGD to run side by side in a few seconds, with the
largest η at which SSO's surrogate still majorizes the loss (1/η-smooth per sample: 4 for the
logistic loss, 1 for half squared error with one output; engine/targets.py)."""
SSO_PROBLEMS = tuple(SSO_ETA)
EXACT = {"closed_form": False}
"""The panel's exact method solves y* by gradient steps and the linear system by CG with HVPs (to
machine precision) rather than reading the closed forms: its cost then counts, and compares."""
SETTINGS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
    "bilevel_toy": {"implicit_hypergradient": EXACT},
    # The ridge problem's hyperobjective is flat (Phi'' ~ 0.03 near x*, engine/optimizers/bilevel.py):
    # gradient descent on it wants lr ~ 30; inner_lr 0.15 and 200 lower steps solve y* to ~1e-9
    # (tests/engine/test_bilevel.py).
    "ridge_bilevel": {"implicit_hypergradient": {**EXACT, "lr": 30.0, "inner_lr": 0.15, "inner_steps": 200}},
}
"""problem -> method -> hyperparameters the panel starts a method with (over the method's defaults)."""
STEPS = {"bilevel_toy": 200, "ridge_bilevel": 150}
MAX_STEPS = 5_000
"""Upper steps per method in one panel run (a toy step takes ~1-5 ms, a ridge penalty step ~50 ms)."""
COSTS = OracleCosts()
UNIT = ("oracle units: 1 = one forward pass; a gradient of f or g (w.r.t. x and y) costs 3 with its "
        "forward, a Hessian-vector product of g costs 4; closed forms cost nothing")
DIVERGENCE = 1e6
"""A method diverged when |f(x_t, y_t)| > this x max(|f(x_0, y_0)|, 1) or is not finite (the race's rule)."""

Progress = Callable[[float, str], None]


def settings_text(hyperparameters: Mapping[str, Any]) -> str:
    """``lr=0.05 sigma=0.1 ...``: the numbers and switches a run used, for captions."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hyperparameters.items()
                    if k != "seed")


def method_settings(problem: str, method: str) -> dict[str, Any]:
    """The hyperparameters a method starts with on ``problem``: its defaults and the panel's row."""
    return {**get_spec(method).defaults(), **SETTINGS.get(problem, {}).get(method, {})}


def check_sigma(sigma: Any) -> float:
    """The penalty parameter, or a message in the user's terms."""
    number = isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
    if not number or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"the penalty parameter σ must be a number > 0 (it weights f in σ f + g; the "
                         f"method's bias shrinks like σ), got {sigma!r}")
    return float(sigma)


def check_steps(steps: Any, what: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"{what} must be a whole number from 1 to {MAX_STEPS:,}, got {steps!r}")
    return steps


@dataclass(frozen=True)
class MethodRun:
    r"""One method's run (row 0 of a one-lane run): the arrays of :class:`engine.bilevel.BilevelTrace`
    over the states it reached, plus the lower-level gap and its cost in oracle units.

    States ``[S]`` (S = steps taken + 1): ``upper``, ``lower``, ``hyperobjective`` :math:`\Phi(x_t)`,
    ``lower_gap`` :math:`g(x_t, y_t) - \min_y g(x_t, y)`, ``units`` spent to reach each state. Steps
    ``[S-1]``: ``hypergradient_error``, cumulative ``inner_steps``, ``inner_oracles``, ``gradients``,
    ``hvps``, ``function_values``. ``status`` is "running" for a run that took all its steps, else the
    race's "diverged at step N: ..." (the states then stop before step N)."""

    optimizer: str
    hyperparameters: Mapping[str, Any]
    upper: np.ndarray
    lower: np.ndarray
    hyperobjective: np.ndarray
    lower_gap: np.ndarray
    units: np.ndarray
    hypergradient_error: np.ndarray
    inner_steps: np.ndarray
    inner_oracles: np.ndarray
    gradients: np.ndarray
    hvps: np.ndarray
    function_values: np.ndarray
    status: str = RUNNING

    @property
    def diverged(self) -> bool:
        return self.status != RUNNING

    @property
    def steps(self) -> int:
        return len(self.hypergradient_error)


def run_method(problem: Any, optimizer: str, hyperparameters: Mapping[str, Any], steps: int,
               progress: Callable[[int], None] | None = None) -> MethodRun:
    """Step ``optimizer`` on ``problem`` (:func:`engine.bilevel.trace` under the race's divergence rule);
    ``progress(t)`` after each step."""
    tr = trace(problem, optimizer, hyperparameters, steps, divergence_factor=DIVERGENCE, on_step=progress)
    theta = np.concatenate([tr.upper, tr.lower], axis=1)
    with torch.no_grad():
        gap = problem.metrics(torch.as_tensor(theta)).get("lower_gap") if len(theta) else None
    units = np.array([0.0, *(COSTS.units(c) for c in tr.counts)])[:len(theta)]
    return MethodRun(optimizer, tr.hyperparameters, tr.upper, tr.lower, tr.hyperobjective,
                     np.full(len(theta), math.nan) if gap is None else gap.numpy().astype(np.float64),
                     units, tr.hypergradient_error, tr.inner_steps, tr.inner_oracles, tr.gradients, tr.hvps,
                     np.array([c.function_values for c in tr.counts], dtype=np.int64), tr.status)


@dataclass
class BilevelResult:
    """What one panel run produced: the problem and each method's :class:`MethodRun`."""

    problem: str
    steps: int
    methods: list[MethodRun] = field(default_factory=list)
    seconds: float = 0.0
    landscape: Any = None
    """The problem itself (built in the job, so that drawing never builds it on the page's loop)."""


def build_problem(name: str) -> Any:
    if name not in PROBLEMS:
        raise ValueError(f"unknown bilevel problem {name!r}; known: {', '.join(PROBLEMS)}")
    problem = get_landscape(name)
    assert isinstance(problem, BilevelProblem)
    return problem


def plan(problem: str, methods: Sequence[str], steps: int, sigma: Any,
         overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Each method with its checked hyperparameters (the penalty method's σ set), or a ValueError in
    the user's terms before anything runs."""
    if problem not in PROBLEMS:
        raise ValueError(f"unknown bilevel problem {problem!r}; known: {', '.join(PROBLEMS)}")
    if not methods:
        raise ValueError("pick at least one bilevel method")
    check_steps(steps)
    sigma = check_sigma(sigma)
    out = []
    for name in methods:
        if name not in METHODS:
            raise ValueError(f"{name!r} is not a bilevel method; known: {', '.join(METHODS)}")
        hp = {**method_settings(problem, name), **dict((overrides or {}).get(name, {}))}
        if "sigma" in hp:
            hp["sigma"] = sigma
        out.append((name, get_spec(name).validate(hp)))
    return out


def run_methods(problem: str, methods: Sequence[tuple[str, Mapping[str, Any]]], steps: int,
                progress: Progress | None = None) -> BilevelResult:
    """Run each planned method for ``steps`` steps; ``progress(fraction, message)`` between steps."""
    import time

    t0 = time.perf_counter()
    p = build_problem(problem)
    result = BilevelResult(problem, steps, landscape=p)
    total = len(methods) * steps
    for k, (name, hp) in enumerate(methods):
        def tick(t: int, k: int = k, name: str = name) -> None:
            if progress is not None and (t % 10 == 0 or t == steps):
                progress((k * steps + t) / total, f"{name}: step {t} of {steps}")
        result.methods.append(run_method(p, name, hp, steps, tick))
    result.seconds = time.perf_counter() - t0
    return result


@dataclass(frozen=True)
class Sweep:
    """The penalty method's bias for each σ (:class:`engine.bilevel.PenaltyBias` fields) after ``steps``."""

    problem: str
    sigmas: np.ndarray
    bias: np.ndarray
    gradients: np.ndarray
    steps: int
    seconds: float


SWEEP_PROBLEMS = ("bilevel_toy",)
"""Where the sweep's runs stop within a panel's patience: on the ridge problem the penalty method's x
moves ~0.01 per 100 steps at ~0.3 s a step (measured), so "where it stops" would be where it was cut off."""
SWEEP_LR = 0.5
SWEEP_STEPS = 150
"""The sweep measures where the penalty method stops, which its upper step does not change: at step
0.5 (10x the method's default; psi_sigma's curvature is ~1 on the toy) 100 steps reach the stationary
point of psi_sigma to ~1e-13 for sigma in [0.03, 1] (measured), where the default step needs ~800."""


def check_sweep_problem(problem: str) -> None:
    if problem not in SWEEP_PROBLEMS:
        raise ValueError(f"the bias sweep runs on {', '.join(SWEEP_PROBLEMS)}: on {problem} the penalty "
                         f"method does not stop within a few thousand steps, so its bias cannot be read off")


def sweep_sigmas(sigma: float, points: int = 4) -> list[float]:
    """σ and ``points - 1`` smaller values, half a decade apart (largest first), each in the penalty
    method's range."""
    sigmas = [check_sigma(sigma) * 10.0 ** (-k / 2) for k in range(points)]
    hp = get_spec("penalty_bilevel").hyperparameter("sigma")
    if hp.low is not None and sigmas[-1] < hp.low:
        span = 10 ** ((points - 1) / 2)
        raise ValueError(f"the sweep goes down to σ/{span:.3g} = {sigmas[-1]:.3g}, below the penalty "
                         f"method's smallest σ ({hp.low:g}): start it from σ >= {hp.low * span:.3g}")
    return sigmas


def penalty_sweep(problem: str, sigmas: Sequence[float], steps: int, hyperparameters: Mapping[str, Any],
                  progress: Progress | None = None) -> Sweep:
    """:func:`engine.bilevel.penalty_bias` over ``sigmas``, one σ at a time (progress and cancel between)."""
    import time

    from engine.cancel import checkpoint

    t0 = time.perf_counter()
    check_sweep_problem(problem)
    p = build_problem(problem)
    check_steps(steps, "sweep steps")
    hp = {k: v for k, v in hyperparameters.items() if k != "sigma"}
    hp["lr"] = SWEEP_LR
    bias, grads = [], []
    for k, s in enumerate(sigmas):
        checkpoint()
        if progress is not None:
            progress(k / len(sigmas), f"σ = {check_sigma(s):.3g} ({k + 1} of {len(sigmas)})")
        pb = penalty_bias(p, [s], steps=steps, hyperparameters=hp)
        bias.append(float(pb.bias[0]))
        grads.append(int(pb.gradients[0]))
    return Sweep(problem, np.array(sigmas, dtype=np.float64), np.array(bias), np.array(grads, dtype=np.int64),
                 steps, time.perf_counter() - t0)


@dataclass(frozen=True)
class SSOCounts:
    """One optimizer's calls after its run, the two kinds SSO spends apart: ``loss_gradients``
    (gradients of the loss) and ``model_steps`` (surrogate gradients: a backward pass through the
    model on the target-space surrogate, never the loss), and ``function_values`` (forward passes)."""

    optimizer: str
    loss_gradients: int
    model_steps: int
    function_values: int
    final_loss: float

    @staticmethod
    def of(trace: OracleTrace) -> SSOCounts:
        grads = int(trace.loss_gradients[-1])
        return SSOCounts(trace.optimizer, grads, int(trace.model_passes[-1]) - grads,
                         int(trace.function_values[-1]), float(trace.loss[-1]))


def sso_comparison(problem: str, steps: int, sso: Mapping[str, Any], sgd_lr: float,
                   progress: Progress | None = None) -> tuple[OracleTrace, OracleTrace]:
    """SSO and SGD on the network ``problem``, full batch, for ``steps`` steps each."""
    if problem not in SSO_PROBLEMS:
        raise ValueError(f"SSO runs here on {', '.join(SSO_PROBLEMS)}; got {problem!r}")
    check_steps(steps)
    hp_sso = get_spec("sso").validate(dict(sso))
    hp_sgd = get_spec("sgd").validate({"lr": sgd_lr})
    net = get_network(problem, batch_size=None)  # full batch: the surrogate majorizes the loss itself
    if progress is not None:
        progress(0.0, "SSO")
    a = oracle_trace(net, "sso", hp_sso, steps=steps)
    if progress is not None:
        progress(0.5, "SGD")
    b = oracle_trace(net, "sgd", hp_sgd, steps=steps)  # a run copies the start: one problem serves both
    return a, b
