r"""The one place that bounds every size reaching the engine, before any work starts.

Links, uploaded event logs, widgets and experiment specs all describe a run as data: a problem
name with its options, a :class:`~engine.run.RunConfig` and maybe a log of events. From that data
alone -- nothing is built -- this module estimates what the run would hold and do, and refuses it
with a :class:`LimitError` naming the limit and the figure when it exceeds a stated budget::

    this race needs ~3.4 TB of memory (limit 1 GB per session): quadratic dim=1e9, 1 lane x 1 start;
    most of it: trajectory snapshots 3.2 TB, problem data and setup 80 GB

**The API the app calls** (one call per source, before stopping anything or building anything)::

    from engine.limits import check_run, LimitError, DEFAULT_LIMITS
    estimate = check_run(problem_name, options, config, events=(), ticks=None, what="this race")
    # raises LimitError (a ValueError) with the message to show; else returns the Estimate
    # (what: how messages name the run: "this link's race", "this log's race")

* ``problem_name``/``options``: what :func:`landscapes.get_landscape` / ``get_network`` take (the
  sizes are declared in :mod:`landscapes.sizes`, which registers them when ``landscapes`` is
  imported), or ``"expression"`` with ``{"expression": text}`` for a typed f(x, y), or a
  :class:`ProblemSize` (:func:`measure_problem_size` of a user's own built problem);
* ``config``: a :class:`~engine.run.RunConfig` (a widget's or a preset's);
* ``events``: :class:`~engine.events.LoggedEvent`\ s of a log (their ``add_lane``\ s count
  against the lane cap, their ``set_probes`` against the probe budget, their ticks and number
  against the replay limits); ``ticks``: steps a replay will take (an export), or None;
* untrusted JSON (an uploaded log) goes through :func:`engine.untrusted.read_event_log` (bytes)
  or :func:`engine.untrusted.check_event_log` (decoded), which validate every field and then call
  :func:`check_run`;
* widgets: the caps (``max_lanes``, ``max_starts``, ``max_top_k``, ``upload_bytes``, ...) are
  fields of :data:`DEFAULT_LIMITS`, so a widget's bounds and the page's stated upload limit read
  them from here.

Checks, in this order: counts (lanes alive at once <= ``max_lanes``, starts, events, ticks, probe
fields; every optimizer name, hyperparameter and lane an event names), then the estimated memory
(``memory_bytes``), the operations of the costliest step (``step_ops``), of one lane's curvature
probe (``probe_ops``), of building the problem (``setup_ops``) and of a replay (``replay_ops``),
then each problem option's declared range (:data:`landscapes.sizes.OPTIONS`).

**The model** (float64, ``b = 8`` bytes; ``P`` parameters, ``K`` lanes alive, ``M`` starts,
``R = KM`` rows; per-row figures of the problem from :class:`ProblemSize`)

* memory: problem data and setup + ``R (6 P b + S(P) b)`` (leaves, gradients and the step's working
  copies; optimizer state ``S``) + snapshots ``L_ever * 401 P b`` for ``P > 3`` (the run keeps up
  to ``TRAJECTORY_CAP + 1`` per lane, and a removed lane's stay) + the largest transient of one
  step: the batched pass's saved activations ``R A``, a metrics pass, or one lane's probe (Lanczos
  basis ``2 (L + 1) P b`` with ``L = min(P, 50 + 20 k)``, trace probes ``n P b``, SLQ basis
  ``2 n m P b``, a dense Hessian ``3 P^2 b`` for small P, the HVP graph ``3 A``, gradient noise's
  ``2 S P b`` per-sample gradients of ``S`` samples with their graph ``3 A(S)``);
* operations (flops of matrix products; ``ELEMENTWISE`` = 10 per element of an elementwise
  kernel) of a step: ``R (3 F + 80 P) +`` the optimizers' updates and own evaluations (``E(P) F``
  per row) ``+`` a metrics pass ``+ K * lane_step_ops`` (the fixed Python cost of a lane's step,
  so that tiny races are not free); of a probe, at its worst (no warm start, no early stop):
  ``8 F`` per HVP (measured on the digits MLP) over ``L + 1`` Lanczos products (+ 70
  preconditioned for Adam-type lanes), the trace and SLQ products, and the reorthogonalization
  ``4 L^2 P``, plus gradient noise's ``3 F(S)`` for its per-sample gradients and ``3 F(n_train)``
  for a full-set gradient (``estimate_cosine`` on a minibatch). ``benchmarks/limits.py`` compares
  them with measured times (steps: 0.3-1.9x at ``ops_per_second``; cold probes are over-predicted
  4-6x, being counted at their worst).

Optimizer state ``S(P)`` and evaluations ``E(P)`` are *measured* once per optimizer (and integer /
boolean hyperparameters) on a tiny problem at three sizes and extrapolated (``a + b P + c P^2``);
state that grows over the first steps (M-FAC's window) and evaluations that grow with ``P`` (CG
iterations) are capped by the optimizer's largest integer hyperparameter (its window, its
``cg_max_iter``). This is an estimate, not a bound: ``tests/engine/test_limits.py`` checks it
against measured sizes of small real runs (peak memory within 2x; measured 0.86-1.0x).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from engine.events import AddLane, LoggedEvent, RemoveLane, SetHyperparameter, SetProbes, SwitchOptimizer
from engine.instruments import EXACT_DENSITY_MAX_DIM, EXACT_MAX_DIM, ProbeConfig
from engine.problem import Bounds
from engine.registry import Oracle, get_spec

__all__ = [
    "DEFAULT_LIMITS",
    "Estimate",
    "LimitError",
    "Limits",
    "OptimizerCost",
    "ProblemSize",
    "SizedProblem",
    "check_probes",
    "check_run",
    "estimate_run",
    "measure_problem_size",
    "optimizer_cost",
    "problem_sizer",
    "register_problem_size",
]

BYTES = 8  # float64: what runs, data and probes hold (float32 runs are estimated as float64)
ELEMENTWISE = 10.0
"""Operations counted per element of one elementwise kernel (memory-bound: ~1e9 elements per
second, against ~1e10 flops of a matrix product)."""
RUN_KERNELS_PER_PARAM = 8
"""Elementwise passes of a run's own step over every row's parameters (concatenating the points,
copying the old ones, norms of gradients and updates, the divergence test)."""
ROW_STEP_OPS = 1e6
"""The fixed cost of stepping one row's own optimizer (closure-driven and per-trajectory lanes
step each start separately, in Python: ~0.1 ms)."""
HVP_FORWARDS = 8.0
"""A probe's Hessian-vector product, in forward passes: measured ~12-16 ms per product against ~1.5
ms per forward on the full-batch digits MLP (double backward through tanh and cross-entropy)."""
HVP_OVERHEAD_OPS = 1e6
"""The fixed cost of one Hessian-vector product (dispatch, graph traversal: ~0.1 ms)."""
PROBE_OVERHEAD_OPS = 5e7
"""The fixed cost of one probe (setting up the operator and the eigensolvers: ~5 ms)."""
SNAPSHOTS_KEPT = 401  # engine.run.TRAJECTORY_CAP + 1 (the list is halved when it passes the cap)


class LimitError(ValueError):
    """A requested run exceeds a stated limit; the message names the limit and the figure."""


@dataclass(frozen=True)
class Limits:
    """Budgets for one session of a shared server, and the caps on every countable field.

    The defaults are sized for a classroom sharing one small server (2 cores, ~8-16 GB, ~20
    sessions): a session may hold ~1 GB, and a step must stay well under a second of one core so
    that a worker answers its page and shares the machine fairly.
    """

    memory_bytes: int = 1_000_000_000
    """Estimated memory of one run: parameters, state, data, snapshots and the largest transient."""
    ops_per_second: float = 1e10
    """Operations per second of one core, to turn operations into seconds: an operation is a
    float64 flop of a matrix product (7-15e9 per second on one core of the reference machine);
    elementwise work counts ``ELEMENTWISE`` operations per element and kernel, so that one rate
    fits both (``benchmarks/limits.py`` measures the ratio for the built-in problems)."""
    step_ops: float = 5e9
    """The costliest ordinary step (a metrics step included): ~0.5 s."""
    probe_ops: float = 1e11
    """One lane's curvature probe without a warm start (the worst case): ~10 s. The app's widest
    probe settings (top 10, trace, density) on the full-batch digits MLP cost ~7e10 (measured
    2.7 s cold with Lanczos converging, ~6.5 s when it runs to its cap). Probes stop between
    Hessian-vector products when cancelled and run every ``every`` steps; warm-started ones take
    a few products, not the ``50 + 20 k`` counted here. Lanes probe one after another, each
    within this budget (a step of 8 probing lanes may take 8 of them, at most once per probe)."""
    setup_ops: float = 2e10
    """Building the problem (generating its data, its start points): ~2 s, once."""
    replay_ops: float = 3e12
    """Replaying a logged run ahead of time (an export): ~5 minutes of one core."""
    lane_step_ops: float = 2.5e6
    """The fixed cost of one lane's step (Python and dispatch, ~0.25 ms), counted as operations."""
    max_lanes: int = 8
    """Lanes alive at once, however they came (a link, a widget, ``add_lane`` events of a log)."""
    max_starts: int = 64
    max_events: int = 20_000
    """Events in one log (a long classroom session logs a few thousand)."""
    max_ticks: int = 10_000_000
    """The tick of any logged event, and the length of a replay."""
    upload_bytes: int = 5_000_000
    """The largest event-log file a page accepts (a log of ``max_events`` events is ~2 MB)."""
    max_top_k: int = 20
    max_trace_probes: int = 1_000
    max_density_probes: int = 64
    max_density_steps: int = 200
    max_probe_every: int = 1_000_000
    max_noise_samples: int = 4_096
    """Per-sample gradients one noise probe takes (``ProbeConfig.noise_samples``): they are held at
    once, ``S P`` floats (the memory budget bounds ``S P`` too)."""
    max_ranking: int = 1_024
    """Entries in a logged ranking (a ranking lane shows at most 64 candidates)."""
    max_metrics_every: int = 1_000_000
    expression_length: int = 500
    """Characters of a typed f(x, y)."""
    expression_depth: int = 40
    expression_nodes: int = 200
    """Sub-expressions of a typed f(x, y) (each is one elementwise op per evaluated point)."""
    expression_power_tower: int = 3
    """``**`` operators chained in one exponent tower (``e**(-x**2)`` is 2)."""

    def seconds(self, ops: float) -> float:
        return ops / self.ops_per_second


DEFAULT_LIMITS = Limits()


# ------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class ProblemSize:
    """What one problem holds and costs, per parameter row, estimated without building it.

    A loss evaluation of one row on a batch of ``batch`` samples costs ``forward_flops_per_sample
    * batch + forward_flops_per_row`` and saves ``activation_bytes_per_sample * batch +
    activation_bytes_per_row`` for backward; ``n_train`` is the largest batch (the full set).
    """

    label: str
    params: int
    batch: int = 1
    n_train: int = 1
    forward_flops_per_sample: float = 0.0
    forward_flops_per_row: float = 0.0
    activation_bytes_per_sample: float = 0.0
    activation_bytes_per_row: float = 0.0
    fixed_bytes: float = 0.0
    """Data and everything the built problem holds (Python objects included), once."""
    setup_flops: float = 0.0
    """Building it: generating data, searching for known minima."""
    metrics_flops_per_row: float = 0.0
    """One row's metrics (a network's full train and test forward), on a metrics step."""
    metrics_bytes_per_row: float = 0.0
    start_flops_per_row: float = 0.0
    """Drawing one random start (a network's fresh initialization)."""

    def forward_flops(self, batch: int | None = None) -> float:
        b = self.batch if batch is None else batch
        return self.forward_flops_per_sample * b + self.forward_flops_per_row

    def activation_bytes(self, batch: int | None = None) -> float:
        b = self.batch if batch is None else batch
        return self.activation_bytes_per_sample * b + self.activation_bytes_per_row


class SizedProblem(Protocol):
    """What a problem family declares so that a run on it can be checked before it is built."""

    def validate(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Options with known names and usable types (else ValueError); ranges not checked yet."""
        ...

    def size(self, options: Mapping[str, Any]) -> ProblemSize:
        """The estimate for validated options (cheap: no tensors built)."""
        ...

    def check_bounds(self, options: Mapping[str, Any]) -> None:
        """Raise LimitError for an option above its declared range (ValueError below it)."""
        ...


_SIZERS: dict[str, SizedProblem] = {}


def register_problem_size(name: str, sizer: SizedProblem) -> None:
    """Declare how to size the problem ``name`` (:mod:`landscapes.sizes` does this for every
    built-in problem when ``landscapes`` is imported)."""
    _SIZERS[name] = sizer


def problem_sizer(name: str) -> SizedProblem:
    try:
        return _SIZERS[name]
    except KeyError:
        known = ", ".join(_SIZERS) or "none (import landscapes to declare the built-in problems)"
        raise ValueError(f"unknown problem {name!r}; known: {known}") from None


def measure_problem_size(problem: Any, batch: Any = None) -> ProblemSize:
    """The size of an already built problem (a user's own module), measured from one forward and
    backward pass at its start: parameters, tensors it holds, flops (torch's flop counter) and
    saved activations."""
    from torch.utils.flop_counter import FlopCounterMode

    from engine.memory import SavedActivations, tensor_bytes

    held = [v for v in vars(problem).values() if isinstance(v, torch.Tensor)]
    x = problem.x0().to(torch.float64)[None].requires_grad_(True)
    counter = FlopCounterMode(display=False)
    with counter, SavedActivations(exclude=[x]) as saved:
        value = problem.loss(x, batch).sum()
    (g,) = torch.autograd.grad(value, x)
    del g
    n_train = len(getattr(problem, "X_train", ())) or 1
    b = getattr(problem, "batch_size", None) or n_train
    flops = float(counter.get_total_flops()) + 10.0 * problem.dim
    return ProblemSize(label=getattr(problem, "name", "problem"), params=int(problem.dim), batch=b,
                       n_train=n_train, forward_flops_per_row=flops,
                       activation_bytes_per_row=float(saved.bytes), fixed_bytes=float(tensor_bytes(held)))


# ----------------------------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class OptimizerCost:
    """Per row (start): state floats ``S(P) = s0 + s1 P + s2 P^2`` and loss evaluations per step
    beyond the run's own gradient, in forward-pass equivalents, ``E(P) = e0 + e1 P`` (at most
    ``cap`` when it grows with P)."""

    name: str
    state: tuple[float, float, float]
    evaluations: tuple[float, float]
    cap: float | None = None

    def state_floats(self, params: int) -> float:
        s0, s1, s2 = self.state
        return max(0.0, s0 + s1 * params + s2 * params * params)

    def update_ops(self, params: int) -> float:
        """An elementwise update: a couple of kernels, and a few more per state entry."""
        per_param = self.state_floats(params) / max(params, 1)
        return ELEMENTWISE * (2.0 + 4.0 * per_param) * params

    def forward_evaluations(self, params: int) -> float:
        e0, e1 = self.evaluations
        e = max(0.0, e0 + e1 * params)
        return min(e, self.cap) if self.cap is not None and e1 > 0 else e


# Forward-pass equivalents of each oracle (a gradient ~3 forwards, an HVP without a cached graph
# ~2.7 gradients: STACK.md; a JVP ~3 forwards).
_ORACLE_COST = {"function_values": 1.0, "gradients": 3.0, "hvps": 8.0, "jvps": 3.0, "rankings": 0.0,
                "surrogate_gradients": 3.0}
_CALIBRATION_DIMS = (4, 8, 16)
_CALIBRATION_STEPS = 3


class _Calibration:
    """A tiny non-quadratic problem (so that CG-type inner loops do not finish in one step) on
    which an optimizer's state and evaluations per step are measured."""

    latex = ""
    minima = ()

    def __init__(self, dim: int) -> None:
        self.name = "calibration"
        self.dim = dim
        self.bounds = Bounds((-2.0,) * dim, (2.0,) * dim)
        self._c = torch.linspace(1.0, 10.0, dim, dtype=torch.float64)

    def x0(self) -> torch.Tensor:
        return torch.linspace(-1.5, 1.2, self.dim, dtype=torch.float64)

    def loss(self, x: torch.Tensor, batch: Any = None) -> torch.Tensor:
        c = self._c.to(x)
        return (c * x * x + 0.1 * x**4).sum(-1) + 0.5 * (x[..., :-1] * x[..., 1:]).sum(-1)

    def sample_batch(self, generator: torch.Generator) -> None:
        return None

    def sampled_losses(self, theta: torch.Tensor, batch: Any, generator: torch.Generator) -> torch.Tensor:
        noise = torch.rand(4, generator=generator, dtype=torch.float64).to(theta)
        return self.loss(theta[None])[0] * (1.0 + 0.1 * noise)


_RATE_NAMES = frozenset({"lr"})
"""Hyperparameters that never change a step's sizes (left out of the calibration key, so that a
log of many learning-rate changes costs no new measurement)."""
_costs: dict[tuple[Any, ...], OptimizerCost] = {}


def _size_key(name: str, values: Mapping[str, Any]) -> tuple[Any, ...]:
    """The hyperparameters that can change sizes, floats to two significant digits."""
    return (name, *((k, float(f"{v:.2g}") if isinstance(v, float) else v)
                    for k, v in sorted(values.items()) if k not in _RATE_NAMES))


def optimizer_cost(name: str, hyperparameters: Mapping[str, Any] | None = None) -> OptimizerCost:
    """Measured (and cached) :class:`OptimizerCost` of one optimizer at these hyperparameters.

    Raises ValueError (a registry message) for an unknown optimizer or an invalid value."""
    values = get_spec(name).validate(hyperparameters or {})
    key = _size_key(name, values)
    cost = _costs.get(key)
    if cost is None:
        cost = _costs[key] = _calibrate(name, values)
    return cost


def _calibrate(name: str, hp: Mapping[str, Any]) -> OptimizerCost:
    from engine.memory import state_bytes
    from engine.run import LaneConfig, Run, RunConfig

    spec = get_spec(name)
    states, evals, growth = [], [], []
    for dim in _CALIBRATION_DIMS:
        try:
            run = Run(_Calibration(dim), RunConfig(lanes=(LaneConfig(name, hp),), device="cpu"))
            lane = run.lanes[0]
            held = []
            for _ in range(_CALIBRATION_STEPS):
                run.step(record=False)
                held.append(sum(state_bytes(o) for o in lane.optimizers) / BYTES)
        except Exception:  # an optimizer that cannot run on the calibration problem: assume the worst
            return OptimizerCost(name, state=(0.0, 4.0, 0.0), evaluations=(4.0, 0.0))
        steps = max(lane.step, 1)
        counts = lane.counts.as_dict()
        total = sum(_ORACLE_COST[k] * v for k, v in counts.items()) / steps
        if counts["rankings"]:  # ranked by value: one evaluation per candidate (its largest count)
            total += counts["rankings"] / steps * max([2, *_ints(hp)])
        given = 4.0 if spec.oracle in (Oracle.GRADIENTS, Oracle.HVPS) else 0.0  # the run's own pass
        states.append(held[-1])
        evals.append(max(0.0, total - given))
        growth.append(held[-1] - held[-2])
    ints = _ints(hp)
    cap = float(max(ints)) if ints else None
    p = torch.tensor(_CALIBRATION_DIMS, dtype=torch.float64)
    design = torch.stack([torch.ones_like(p), p, p * p], dim=1)
    s = torch.linalg.solve(design, torch.tensor(states, dtype=torch.float64)).tolist()
    if growth[-1] > 0 and cap is not None:
        # state still growing after a few steps (a window of past gradients): it keeps growing
        # for up to `cap` steps (the window), by what one step adds per parameter
        s[1] = max(s[1], growth[-1] / _CALIBRATION_DIMS[-1] * cap)
    e1 = (evals[-1] - evals[0]) / (_CALIBRATION_DIMS[-1] - _CALIBRATION_DIMS[0])
    e0 = evals[0] - e1 * _CALIBRATION_DIMS[0]
    if e1 > 0 and cap is not None:
        cap = max(cap * _unit_cost(spec.oracle), evals[-1])
    return OptimizerCost(name, state=(s[0], s[1], s[2]), evaluations=(e0, max(e1, 0.0)),
                         cap=cap if e1 > 0 else None)


def _ints(values: Mapping[str, Any]) -> list[int]:
    return [v for v in values.values() if isinstance(v, int) and not isinstance(v, bool)]


def _unit_cost(oracle: Oracle) -> float:
    return {Oracle.VALUES: 1.0, Oracle.GRADIENTS: 3.0, Oracle.HVPS: 8.0, Oracle.JVPS: 3.0,
            Oracle.RANKINGS: 1.0}[oracle]


# ----------------------------------------------------------------------------------------- probes

_PROBE_CAPS = {"top_k": "max_top_k", "trace_probes": "max_trace_probes",
               "density_probes": "max_density_probes",
               "density_steps": "max_density_steps", "every": "max_probe_every",
               "noise_samples": "max_noise_samples"}


def check_probes(config: ProbeConfig | Mapping[str, Any] | None, limits: Limits = DEFAULT_LIMITS,
                 *, where: str = "probes") -> ProbeConfig | None:
    """A :class:`ProbeConfig` whose counts are within ``limits`` (a mapping is validated field by
    field first: untrusted input). Raises LimitError above a cap, ValueError for a bad value."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        known = {f.name: f for f in dataclasses.fields(ProbeConfig)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown setting {unknown[0]!r}; settings: {', '.join(known)}")
        for name, value in config.items():
            _check_probe_field(name, value, known[name].type, where)
        values = dict(config)
    elif isinstance(config, ProbeConfig):
        values = config.to_dict()
    else:
        raise ValueError(f"{where} must be a mapping of probe settings, got {type(config).__name__}")
    for name, cap_name in _PROBE_CAPS.items():
        value, cap = values.get(name), getattr(limits, cap_name)
        if isinstance(value, int) and value > cap:
            raise LimitError(f"{where}: {name}={_count(value)} is over the limit of {_count(cap)}")
    if isinstance(config, ProbeConfig):
        return config
    try:
        return ProbeConfig(**values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _check_probe_field(name: str, value: Any, annotation: Any, where: str) -> None:
    text = str(annotation)
    if value is None and text.endswith("| None"):  # an optional setting left to its default
        return
    text = text.removesuffix(" | None")
    if text == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "an integer"
    elif text == "bool":
        ok, kind = isinstance(value, bool), "true or false"
    elif text == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        kind = "a finite number"
    else:
        ok, kind = isinstance(value, str), "a string"
    if not ok:
        raise ValueError(f"{where}: {name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class _ProbeCost:
    ops: float
    transient_bytes: float
    hvps: float


def _probe_cost(probes: ProbeConfig, size: ProblemSize, preconditioned: bool, batch: int) -> _ProbeCost:
    """One probe of one lane (see the module docstring)."""
    P = size.params
    F = size.forward_flops(batch)
    A = size.activation_bytes(batch)
    lanczos = min(P, 50 + 20 * probes.top_k)
    products = lanczos + 1 + (min(P, 70) if preconditioned else 0)
    reorth = 4.0 * lanczos * lanczos * P + (4.0 * 70 * 70 * P if preconditioned else 0.0)
    memory = [2.0 * (lanczos + 1) * P * BYTES + 3.0 * A + 4.0 * P * BYTES]
    if probes.trace:
        products += probes.trace_probes
        memory.append((probes.trace_probes + 64) * P * BYTES + 3.0 * A)
    if probes.density:
        m = min(probes.density_steps, P)
        products += probes.density_probes * m
        reorth += 4.0 * probes.density_probes * m * m * P
        memory.append(2.0 * probes.density_probes * m * P * BYTES + 3.0 * A)
    if P <= EXACT_MAX_DIM or (probes.density and P <= EXACT_DENSITY_MAX_DIM):
        products += P
        reorth += 10.0 * P**3
        memory.append(3.0 * P * P * BYTES + 3.0 * A)
    extra = 0.0  # gradient noise (engine.noise): per-sample gradients of S samples, a full-set gradient
    if probes.noise and size.n_train > 1:
        s = min(probes.noise_samples, batch)
        extra += 3.0 * size.forward_flops(s) + 4.0 * ELEMENTWISE * s * P
        memory.append(2.0 * s * P * BYTES + 3.0 * size.activation_bytes(s))
    if probes.estimate_cosine and batch < size.n_train:
        extra += 3.0 * size.forward_flops(size.n_train)
        memory.append(3.0 * size.activation_bytes(size.n_train) + 4.0 * P * BYTES)
    ops = PROBE_OVERHEAD_OPS + 3.0 * F + (HVP_FORWARDS * F + HVP_OVERHEAD_OPS) * products + reorth + extra
    return _ProbeCost(ops=ops, transient_bytes=max(memory), hvps=products)


# --------------------------------------------------------------------------------------- timeline


@dataclass
class _Lane:
    optimizer: str
    hyperparameters: dict[str, Any]
    batch_size: Any = None


def _lanes_of(config: Any) -> list[_Lane]:
    return [_Lane(ln.optimizer, dict(ln.hyperparameters), getattr(ln, "batch_size", None))
            for ln in config.lanes]


@dataclass
class _Moment:
    """The run at one point of its log: its lanes and probe settings."""

    lanes: dict[int, _Lane]
    probes: ProbeConfig | None
    created: int  # lanes ever created (their snapshots are kept)


def _timeline(config: Any, events: Sequence[LoggedEvent], limits: Limits) -> list[_Moment]:
    """The run's lanes and probe settings after the config and after each event that changes
    them (events in tick order, as :meth:`engine.run.Run.schedule` applies them). Lane ids follow
    the run's numbering, so an event naming a lane that does not exist then is refused here."""
    lanes = dict(enumerate(_lanes_of(config)))
    created = len(lanes)
    probes = config.probes
    moments = [_Moment(dict(lanes), probes, created)]
    for i, logged in sorted(enumerate(events), key=lambda item: item[1].tick):  # i: its place in the log
        event = logged.event
        where = f"event {i} ({event.kind} at tick {logged.tick})"
        try:
            changed, probes, created = _apply(event, lanes, probes, created, limits)
        except ValueError as exc:  # LimitError stays a LimitError
            raise type(exc)(f"{where}: {exc}") from None
        if changed:
            moments.append(_Moment(dict(lanes), probes, created))
    return moments


def _apply(event: Any, lanes: dict[int, _Lane], probes: ProbeConfig | None, created: int,
           limits: Limits) -> tuple[bool, ProbeConfig | None, int]:
    """One event on the simulated run (validated as :meth:`engine.run.Run.apply` would)."""
    lane_id = getattr(event, "lane", None)
    if lane_id is not None and lane_id not in lanes:
        alive = ", ".join(map(str, sorted(lanes))) or "none"
        raise ValueError(f"there is no lane {lane_id} (the race then has lanes {alive})")
    if isinstance(event, AddLane):
        get_spec(event.optimizer).validate(event.hyperparameters)
        lanes[created] = _Lane(event.optimizer, dict(event.hyperparameters))
        if len(lanes) > limits.max_lanes:
            raise LimitError(f"it makes {len(lanes)} lanes; a race holds at most {limits.max_lanes}")
        return True, probes, created + 1
    if isinstance(event, RemoveLane):
        del lanes[event.lane]
    elif isinstance(event, SwitchOptimizer):
        get_spec(event.optimizer).validate(event.hyperparameters)
        lanes[event.lane] = _Lane(event.optimizer, dict(event.hyperparameters), lanes[event.lane].batch_size)
    elif isinstance(event, SetHyperparameter):
        lane = lanes[event.lane]
        get_spec(lane.optimizer).hyperparameter(event.name).check(event.value, lane.optimizer)
        if event.name in _RATE_NAMES:
            return False, probes, created
        lanes[event.lane] = _Lane(lane.optimizer, {**lane.hyperparameters, event.name: event.value},
                                  lane.batch_size)
    elif isinstance(event, SetProbes):
        probes = check_probes(event.config, limits, where="probes")
    else:
        return False, probes, created
    return True, probes, created


# --------------------------------------------------------------------------------------- estimate


@dataclass(frozen=True)
class Estimate:
    """What a requested run would hold and do (see the module docstring for the model)."""

    label: str
    params: int
    lanes: int
    starts: int
    memory: tuple[tuple[str, float], ...]
    """Bytes by item, at the costliest moment of the run."""
    step: tuple[tuple[str, float], ...]
    """Operations of the costliest ordinary step, by item."""
    probe_ops: float = 0.0
    """One lane's probe at its worst (no warm start), the costliest lane."""
    setup_ops: float = 0.0
    replay_ops: float | None = None
    events: int = 0
    ticks: int | None = None

    @property
    def memory_bytes(self) -> float:
        return sum(v for _, v in self.memory)

    @property
    def step_ops(self) -> float:
        return sum(v for _, v in self.step)

    def describe(self, limits: Limits = DEFAULT_LIMITS) -> str:
        """One line a person can read: the run, its memory and its time per step."""
        return (f"{self.label}: ~{_bytes(self.memory_bytes)}, ~{_seconds(limits.seconds(self.step_ops))} "
                f"per step" + (f", ~{_seconds(limits.seconds(self.probe_ops))} per lane probe"
                               if self.probe_ops else ""))


def _lane_batch(lane: _Lane, size: ProblemSize) -> int:
    """A lane with its own batch-size rule (engine12's BatchSize) may grow to the full set."""
    if lane.batch_size is None:
        return size.batch
    cap = getattr(lane.batch_size, "max_size", None)
    return int(min(cap, size.n_train)) if isinstance(cap, int) else size.n_train


def estimate_run(problem: str | ProblemSize, options: Mapping[str, Any] | None, config: Any,
                 events: Iterable[LoggedEvent] = (), *, ticks: int | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> Estimate:
    """Estimate a run without building anything (see the module docstring).

    Raises ValueError for what cannot be estimated (an unknown problem, option or optimizer, an
    event for a lane that does not exist) and LimitError for counts over their caps (lanes alive
    at once, probe settings); the budgets themselves are checked by :func:`check_run`."""
    events = list(events)
    if isinstance(problem, ProblemSize):
        size = problem
    else:
        sizer = problem_sizer(problem)
        size = sizer.size(sizer.validate(dict(options or {})))
    _check_counts(config, events, ticks, limits)
    check_probes(config.probes, limits)
    for i, lane in enumerate(config.lanes):
        try:
            get_spec(lane.optimizer).validate(lane.hyperparameters)
        except ValueError as exc:
            raise type(exc)(f"lane {i}: {exc}") from None
    moments = _timeline(config, events, limits)
    P, M = size.params, config.n_starts
    worst_memory: dict[str, float] = {}
    worst_step: dict[str, float] = {}
    probe_ops = 0.0
    mean_step = 0.0
    seen: set[Any] = set()
    for moment in moments:
        signature = (moment.created, moment.probes, tuple(
            (ln.optimizer, repr(ln.batch_size), _size_key(ln.optimizer, ln.hyperparameters))
            for ln in moment.lanes.values()))
        if signature in seen:  # a log revisits the same state often (sliders moved back and forth)
            continue
        seen.add(signature)
        memory, step, probe = _moment_cost(moment, size, M, limits)
        if sum(memory.values()) > sum(worst_memory.values()):
            worst_memory = memory
        if sum(step.values()) > sum(worst_step.values()):
            worst_step = step
        probe_ops = max(probe_ops, probe)
        mean_step = max(mean_step, sum(step.values()) - step.get("metrics pass", 0.0)
                        + step.get("metrics pass", 0.0) / max(config.metrics_every, 1))
    setup = size.setup_flops + M * size.start_flops_per_row
    lanes_probing = max((len(m.lanes) for m in moments if m.probes is not None), default=0)
    replay = None
    if ticks is not None:
        every = min((m.probes.every for m in moments
                     if m.probes is not None and m.probes.schedule == "every"),
                    default=None)
        replay = ticks * (mean_step + (probe_ops * lanes_probing / every if every else 0.0))
    lanes = max(len(m.lanes) for m in moments)
    label = f"{size.label}, {_plural(lanes, 'lane')} x {_plural(M, 'start')}"
    return Estimate(label=label, params=P, lanes=lanes, starts=M,
                    memory=tuple(sorted(worst_memory.items(), key=lambda kv: -kv[1])),
                    step=tuple(sorted(worst_step.items(), key=lambda kv: -kv[1])),
                    probe_ops=probe_ops, setup_ops=setup, replay_ops=replay, events=len(events), ticks=ticks)


def _moment_cost(moment: _Moment, size: ProblemSize, M: int,
                 limits: Limits) -> tuple[dict[str, float], dict[str, float], float]:
    P = size.params
    lanes = list(moment.lanes.values())
    rows = M * len(lanes)
    costs = [optimizer_cost(ln.optimizer, ln.hyperparameters) for ln in lanes]
    batches = [_lane_batch(ln, size) for ln in lanes]
    activations = sum(M * size.activation_bytes(b) for b in batches)
    memory = {
        "problem data and setup": size.fixed_bytes,
        "parameters, gradients and working copies": (6 * rows + M) * P * BYTES,
        "optimizer state": sum(M * c.state_floats(P) for c in costs) * BYTES,
    }
    if P > 3:
        memory["trajectory snapshots"] = moment.created * SNAPSHOTS_KEPT * P * BYTES
    probe_ops, probe_bytes = 0.0, 0.0
    if moment.probes is not None:
        # each lane keeps its top-k Ritz vectors (and a guard), the k it started from (the drift the
        # next probe extrapolates along) and the preconditioned probe's (at most 2): 2 P undercounted
        memory["probe warm starts"] = moment.created * (2 * moment.probes.top_k + 3) * P * BYTES
        for ln, b in zip(lanes, batches, strict=True):
            pc = _probe_cost(moment.probes, size, get_spec(ln.optimizer).second_moment_key is not None, b)
            probe_ops = max(probe_ops, pc.ops)
            probe_bytes = max(probe_bytes, pc.transient_bytes)
    transients = {"saved activations of the batched pass": activations,
                  "a metrics pass": rows * size.metrics_bytes_per_row,
                  "a curvature probe": probe_bytes}
    name, value = max(transients.items(), key=lambda kv: kv[1])
    if value > 0:
        memory[name] = value
    step = {
        "forward and backward passes": sum(3.0 * M * size.forward_flops(b) for b in batches),
        "optimizer updates": sum(M * c.update_ops(P) for c in costs),
        "the run's bookkeeping": rows * RUN_KERNELS_PER_PARAM * ELEMENTWISE * P,
        "optimizers' own evaluations": sum(M * c.forward_evaluations(P) * size.forward_flops(b)
                                           for c, b in zip(costs, batches, strict=True)),
        "metrics pass": rows * size.metrics_flops_per_row,
        "per-lane overhead": len(lanes) * limits.lane_step_ops
        + sum(M * ROW_STEP_OPS for ln in lanes if _per_row(ln.optimizer)),
    }
    return memory, {k: v for k, v in step.items() if v > 0}, probe_ops


def _per_row(optimizer: str) -> bool:
    spec = get_spec(optimizer)
    return spec.closure_driven or spec.per_trajectory or not spec.row_separable


def _check_counts(config: Any, events: Sequence[LoggedEvent], ticks: int | None, limits: Limits) -> None:
    n = len(config.lanes)
    if n > limits.max_lanes:
        raise LimitError(f"a race holds at most {limits.max_lanes} optimizers, got {n}")
    if config.n_starts > limits.max_starts:
        raise LimitError(f"a race has at most {limits.max_starts} starts, got {_count(config.n_starts)}")
    if config.metrics_every > limits.max_metrics_every:
        raise LimitError(f"metrics_every={_count(config.metrics_every)} is over the limit of "
                         f"{_count(limits.max_metrics_every)}")
    if len(events) > limits.max_events:
        raise LimitError(f"the log has {_count(len(events))} events (limit {_count(limits.max_events)})")
    last = max((e.tick for e in events), default=0)
    if last > limits.max_ticks:
        raise LimitError(f"the log has an event at tick {_count(last)} (limit {_count(limits.max_ticks)})")
    if ticks is not None and ticks > limits.max_ticks:
        raise LimitError(f"a replay of {_count(ticks)} steps is over the limit of {_count(limits.max_ticks)}")


def check_run(problem: str | ProblemSize, options: Mapping[str, Any] | None, config: Any,
              events: Iterable[LoggedEvent] = (), *, ticks: int | None = None,
              limits: Limits = DEFAULT_LIMITS, what: str = "this race") -> Estimate:
    """:func:`estimate_run`, then refuse with a :class:`LimitError` whatever exceeds ``limits``:
    memory, operations per step, per probe step, of building the problem, of a replay; then each
    option's declared range. Returns the estimate when everything fits."""
    est = estimate_run(problem, options, config, events, ticks=ticks, limits=limits)
    if est.memory_bytes > limits.memory_bytes:
        raise LimitError(f"{what} needs ~{_bytes(est.memory_bytes)} of memory (limit "
                         f"{_bytes(limits.memory_bytes)} per session): {est.label}; most of it: "
                         f"{_items(est.memory, _bytes)}")
    budgets = (("one step of", est.step_ops, limits.step_ops, _items(est.step, _ops)),
               ("one curvature probe of", est.probe_ops, limits.probe_ops, ""),
               ("building the problem of", est.setup_ops, limits.setup_ops, ""),
               ("replaying", est.replay_ops or 0.0, limits.replay_ops, f"{_count(ticks or 0)} steps"))
    for doing, ops, limit, detail in budgets:
        if ops > limit:
            raise LimitError(f"{doing} {what} needs ~{_ops(ops)} operations, "
                             f"~{_seconds(limits.seconds(ops))} "
                             f"on this server (limit ~{_seconds(limits.seconds(limit))}): {est.label}"
                             + (f"; most of it: {detail}" if detail else ""))
    if not isinstance(problem, ProblemSize):
        problem_sizer(problem).check_bounds(problem_sizer(problem).validate(dict(options or {})))
    return est


# ------------------------------------------------------------------------------------- formatting


def _bytes(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.2g} {unit}" if v < 10 else f"{v:,.0f} {unit}"
    return f"{n:.0f} bytes"


def _ops(n: float) -> str:
    return f"{n:.2g}".replace("e+0", "e").replace("e+", "e")


def _count(n: int) -> str:
    return f"{n:,}"


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.2g} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:,.0f} h"


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _items(items: Sequence[tuple[str, float]], fmt: Any, n: int = 2) -> str:
    return ", ".join(f"{name} {fmt(v)}" for name, v in items[:n])


def format_option(value: Any) -> str:
    """An option value for a message: ``1e9`` rather than ``1000000000``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 100_000:
        return _ops(float(value))
    return repr(value) if isinstance(value, str) else str(value)
