r"""Curvature instruments attached to a run: scheduled probes of the Hessian along the way.

Each probe looks at one lane's first start at the point :math:`x_t` where that step's gradient
was taken, with that step's minibatch, and reports (Cohen et al. 2021, 2022):

* :math:`\lambda_{\max}` (Lanczos, with its residual) and, optionally, the top-k, the trace
  (Hutchinson) and the spectral density (stochastic Lanczos quadrature);
* the directional sharpness :math:`u^\top H u / \lVert u\rVert^2` of the update :math:`u` the
  optimizer actually took;
* the stability threshold of the lane's optimizer at its *current* hyperparameters:
  :math:`2/\eta` for gradient descent, :math:`(2 + 2\mu)/\eta` for heavy-ball / Nesterov
  momentum, and for Adam-type methods the preconditioned sharpness
  :math:`\lambda_{\max}(P_t^{-1} H)`, :math:`P_t = (1-\beta_1^t)\,\mathrm{diag}(\sqrt{\hat v_t} + \epsilon)`,
  against :math:`(2 + 2\beta_1)/((1 - \beta_1)\eta)` (= 38/η at β1 = 0.9);
* for problems small enough (``EXACT_MAX_DIM``), the exact eigenvalues of the dense Hessian; there
  the dense Hessian is the probe's one path (every value above from its eigendecomposition, in
  float64, with no Lanczos): exact and cheaper than Lanczos plus the dense check.

Probes also carry the gradient-noise instruments of :mod:`engine.noise` when switched on
(``ProbeConfig.noise``: per-tensor gradient variance and SNR from per-sample gradients, SGD-SaI's
g-SNR, the norm test's statistic; ``ProbeConfig.estimate_cosine``: the cosine between the gradient
estimate the lane's optimizer stepped from and the true gradient), at the same point and on the same
schedule.

Probes draw their random vectors from their own generator, so a run's trajectory is identical
with or without instruments, and they count their HVPs, per-sample and extra gradients and time:
the run reports the fraction of its compute spent in probes (``Run.probe_overhead``). A probe
starts from the previous probe's Ritz vectors (warm), computes in the run's dtype unless
``ProbeConfig.dtype`` says otherwise, and comes as sharpness only (:meth:`ProbeConfig.sharpness`),
cheap (``economy``), richer (``business``) or complete (``full``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from engine.curvature import HVP, dense_hessian, hutchinson_trace, lanczos, spectral_density
from engine.noise import Estimate, NoiseReading, measure
from engine.seeds import probe_noise_seed
from engine.stability import PRECONDITIONED, StabilityRule, Threshold

EXACT_MAX_DIM = 64
"""Probes add the exact Hessian spectrum for problems of at most this many parameters (every
probe); density probes do so up to ``EXACT_DENSITY_MAX_DIM``."""
EXACT_DENSITY_MAX_DIM = 600
SCHEDULES = ("every", "log", "manual")
WARM_GUARD = 0
"""Ritz vectors a top-1 probe keeps beyond lambda_max's for the next probe's start block (each
one row, one product): it resolves the neighbour whose gap the error bound divides by. With one
(before warm starts were extrapolated, :func:`_extrapolated`) a warm probe of the
edge-of-stability run (digits_mlp_mse, GD lr 0.2, tol 1e-3) every 16 steps took 9.5 products
instead of 11.7. From an extrapolated start none is best: on the digits-MLP runs of
benchmarks/hessian.py (tol 1e-3, float64) warm probes every 1 / 16 / 50 steps need 3.60 / 3.92 /
4.74 products at lr 0.1 (digits_mlp) against 4.15 / 4.48 / 5.79 with one, and 2.85 / 5.08 / 8.21
against 3.68 / 5.15 / 7.95 on the edge-of-stability run, every value within its residual of a
reference to 1e-10 either way."""
PROBE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class ProbeConfig:
    """What to measure and when. ``schedule``: "every" ``every`` steps, "log" (steps 0, 1, 2, 3,
    5, 7, 10, ... spaced by a factor ~1.3), or "manual" (only on request). ``tol``: the Lanczos
    tolerance (relative error bound of the top-k). ``dtype``: "float64" or "float32" for the
    Hessian-vector products (``None``: the run's dtype); eigenvalues from float32 products are
    good to ~1e-6 relative, from float64 ones to ~1e-12, at about half the cost on CPU.

    Gradient noise (:mod:`engine.noise`): ``noise`` adds SGD-SaI's g-SNR per tensor and, for
    problems with a data set, the per-sample gradient variance and SNR per tensor and the norm test,
    from at most ``noise_samples`` per-sample gradients of the step's minibatch (in the probe's
    dtype); ``estimate_cosine`` adds the cosine between the lane's gradient estimate and the true
    gradient (of its minibatch, and of the full objective: a network's whole training set).

    ``max_hvps``: a budget of Hessian-vector products per Lanczos run of a probe (``None``: until
    ``tol``). A warm-started probe that spends it stops early and reports what it reached: the
    residual ``lambda_max_residual`` and, in ``notes["lambda_max"]``, its error bound. For probes
    every few steps, where the previous probe's Ritz vector is nearly the answer.

    ``directional``: measure the update's directional sharpness ``u^T H u / |u|^2`` (one product of
    its own every probe: it adds nothing to lambda_max's convergence, measured on the digits-MLP run
    of benchmarks/hessian.py, 3.60 -> 2.59 products a warm probe every step without it). ``False``:
    sharpness only, ``directional`` is nan and ``notes["directional"]`` says why.

    Presets trade detail for cost: :meth:`sharpness` (lambda_max and its threshold alone, the
    cheapest) and three like Cockpit's (Schneider, Dangel & Hennig 2021) economy / business / full:
    :meth:`economy`, :meth:`business`, :meth:`full`.
    """

    schedule: str = "every"
    every: int = 10
    top_k: int = 1
    trace: bool = False
    trace_probes: int = 10
    density: bool = False
    density_probes: int = 5
    density_steps: int = 30
    tol: float = 1e-6
    seed: int = 0
    dtype: str | None = None
    noise: bool = False
    noise_samples: int = 256
    estimate_cosine: bool = False
    max_hvps: int | None = None
    directional: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.dtype is not None and self.dtype not in PROBE_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(PROBE_DTYPES)} or None (the run's), "
                             f"got {self.dtype!r}")
        if not (isinstance(self.tol, (int, float)) and 0 < self.tol < 1):
            raise ValueError(f"tol must be a number in (0, 1), got {self.tol!r}")
        for name in ("every", "top_k", "trace_probes", "density_probes", "density_steps", "noise_samples"):
            value, low = getattr(self, name), 2 if name == "noise_samples" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        cap = self.max_hvps
        if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 3):
            raise ValueError(f"max_hvps must be an integer >= 3 or None (no cap), got {self.max_hvps!r}")
        for name in ("noise", "estimate_cosine", "directional"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")

    def due(self, step: int) -> bool:
        if self.schedule == "every":
            return step % self.every == 0
        if self.schedule == "log":
            return step in _log_steps(step)
        return False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def probe_dtype(self, run_dtype: torch.dtype) -> torch.dtype:
        """The dtype products run in: ``dtype`` if set, else the run's."""
        return PROBE_DTYPES[self.dtype] if self.dtype is not None else run_dtype

    # Overheads below: the share of a run's compute spent in probes (``Run.probe_overhead``) after
    # 100 / 1,000 steps (the first probe, cold, costs most) on the edge-of-stability run of
    # benchmarks/hessian.py section (e): digits MLP, MSE, full-batch gradient descent, two lanes at
    # lr 0.2 and 0.1, float64 run, one CPU thread, every=50; ranges over four runs of (e) (one on
    # main 7334700, the same code) and one of (g), medians of 1-2 rounds each, on a shared 2-core
    # machine at load 2.6-5.2 (2026-12-05). Products a warm probe: exact counts, load-free. Before
    # the presets the app's default took 30% / 15% here (43.6% in the issue, measured in the app).
    # The app's edge-of-stability preset as shipped (lr 0.4 and 0.3, every=10) probes far more:
    # sharpness 35-36% / 35-36% of its compute (9.56 products a warm probe), economy 37-41% /
    # 39-42% (10.11 products).

    PRESETS = ("sharpness", "economy", "business", "full")
    """The presets below, cheapest first."""
    SHOWN = ("every", "schedule", "top_k", "density", "trace", "seed")
    """The fields a person changes on top of a preset (the app's probe widgets)."""

    def preset(self, candidates: Mapping[str, ProbeConfig] | None = None) -> str | None:
        """The name of the preset this config is, up to the :data:`SHOWN` fields: the first of
        ``candidates`` (default: :data:`PRESETS`) that matches, None if none does."""
        if candidates is None:
            candidates = {name: getattr(ProbeConfig, name)() for name in self.PRESETS}
        mine = {f: getattr(self, f) for f in self.SHOWN}
        return next((name for name, c in candidates.items() if replace(c, **mine) == self), None)

    @classmethod
    def sharpness(cls, every: int = 50, **changes: Any) -> ProbeConfig:
        """The cheapest: lambda_max (top-1, error bound 1e-3 relative, float32 products) and the
        stability threshold it is compared with (for Adam-type lanes the preconditioned sharpness),
        nothing else: no directional sharpness of the update (``directional=False``: one product a
        probe fewer, and a warm probe whose extrapolated vector already meets tol stops after one
        product), no estimate cosine, no gradient noise. Overhead every 50 steps (section (e)'s
        edge-of-stability run): 21.4% / 13.8% of the run after 100 / 1,000 steps (7.76 products a
        warm probe; economy 8.76 in the same runs).
        Probing often (section (e)'s second part: one digits_mlp lane, GD lr 0.1, from step 0,
        process time against a plain run stepped alongside, a quiet machine): every step
        3.57-3.65x a plain run, every 16 steps 1.27-1.30x (2.07 / 2.71 products a warm probe;
        4.08-4.09x and 1.30-1.32x, 2.58 / 3.11 products, before warm vectors took a free power
        step, :func:`engine.curvature._power_step`; economy 4.64-4.86x and 1.36-1.39x). The first
        ~40 steps cost most: there the top eigenvalues lie within 1% and their eigenvectors turn
        ~10 degrees a step (4-22 products a probe); past them a warm probe is mostly one product."""
        return cls(**{"every": every, "top_k": 1, "tol": 1e-3, "dtype": "float32", "directional": False,
                      **changes})

    @classmethod
    def economy(cls, every: int = 50, **changes: Any) -> ProbeConfig:
        """Sharpness, its threshold and the update's directional sharpness: lambda_max (top-1, error
        bound 1e-3 relative: invisible on a plot) every ``every`` steps, with float32 products
        (~1e-6 relative), and the estimate cosine (free on a full batch, where the probe's own
        gradient is the full one; one full-set gradient per probe on a minibatch: 9.1% -> 10.1% of a
        digits-MLP race of SGD and ZO-SGD q=4 at batch 64 after 1,000 steps). Overhead: 12-17% /
        9.0-11.3% (8.76 products a warm probe; 21-27% / 17-18% with float64 products). The app's
        default for networks."""
        return cls(**{"every": every, "top_k": 1, "tol": 1e-3, "dtype": "float32", "estimate_cosine": True,
                      **changes})

    @classmethod
    def business(cls, every: int = 50, **changes: Any) -> ProbeConfig:
        """Economy plus the top-3 eigenvalues at tol 1e-4, a Hutchinson trace (10 probes) and the
        gradient noise from 256 per-sample gradients, float32 products. Overhead: 33-37% / 29-30%
        (28.4 products a warm probe; 29% / 23% without the noise, one run)."""
        return cls(**{"every": every, "top_k": 3, "trace": True, "trace_probes": 10, "tol": 1e-4,
                      "dtype": "float32", "estimate_cosine": True, "noise": True, "noise_samples": 256,
                      **changes})

    @classmethod
    def full(cls, every: int = 50, **changes: Any) -> ProbeConfig:
        """Business plus the top-5 at tol 1e-6, a spectral density (SLQ, 5 probes x 30 steps) and
        the gradient noise from 1,024 samples, products in the run's dtype. Overhead: 77-83% /
        80-81% (190 products a warm probe; 77% / 78% without the noise, one run; the density's 150
        products dominate: use a longer ``every``)."""
        return cls(**{"every": every, "top_k": 5, "trace": True, "trace_probes": 10, "density": True,
                      "density_probes": 5, "density_steps": 30, "tol": 1e-6, "dtype": None,
                      "estimate_cosine": True, "noise": True, "noise_samples": 1024, **changes})


NETWORK_PROBES = ProbeConfig.economy()
"""The app's default for networks (:meth:`ProbeConfig.economy`): a sharpness point every 50
steps to plot accuracy. Economy rather than :meth:`ProbeConfig.sharpness`: at every=50 the
update's directional sharpness (the curvature view's dotted curve) and the estimate cosine cost one
product a probe, 0.5-3 points of compute (9.0-11.3% against 7.6-8.5% after 1,000 steps, see the
figures above). Build the app's variants with ``dataclasses.replace(NETWORK_PROBES, ...)`` so that
its ``tol``, ``dtype`` and ``estimate_cosine`` carry over."""
LANDSCAPE_PROBES = ProbeConfig(every=5, estimate_cosine=True)
"""The app's default for 2-D landscapes, where a probe is a 2x2 eigenproblem (and the estimate
cosine shows a zeroth-order lane's direction error)."""


def _log_steps(upto: int) -> set[int]:
    steps, s = {0}, 1.0
    while s <= upto + 1:
        steps.add(round(s))
        s = max(s * 1.3, s + 1)
    return steps


class Preconditioned:
    r"""The operator :math:`D H D` with :math:`D = P^{-1/2}` (same spectrum as :math:`P^{-1}H`, but
    symmetric, so Lanczos applies)."""

    def __init__(self, op: HVP, d: torch.Tensor) -> None:
        self.op, self.d = op, d.to(device=op.device, dtype=torch.float64)
        self.dim, self.device, self.dtype = op.dim, op.device, op.dtype

    @property
    def hvps(self) -> int:
        return self.op.hvps

    @property
    def seconds(self) -> float:
        return self.op.seconds

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        d = self.d.to(V.dtype)
        return d * self.op.matmat(V * d)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[None])[0]


@dataclass(frozen=True, eq=False)
class Probe:
    """One curvature probe of one lane (plain floats and numpy arrays).

    What ``lambda_max`` and ``lambda_max_residual`` guarantee (``H`` symmetric, in the products'
    arithmetic): ``lambda_max`` is the largest Ritz value of the probe's Krylov space, so it is a
    lower bound of the true one; ``r = lambda_max_residual`` places SOME eigenvalue of ``H`` within
    ``r`` of it (Weyl / Bauer-Fike). It is lambda_max's error bound when that eigenvalue is the top
    one, i.e. when the Krylov space missed no eigenvalue above ``lambda_max + r``: what no
    a-posteriori bound can see (a warm probe starts from the last probe's answer; a cold one tests
    convergence only after ARPACK's 20 products). The tests hold probes to the dense Hessian's
    eigenvalues."""

    step: int
    lambda_max: float  # a Ritz value: <= the true lambda_max (Rayleigh-Ritz, up to the products' rounding)
    lambda_max_residual: float  # ||H y - lambda_max y||: SOME eigenvalue lies within it of lambda_max
    top_k: np.ndarray  # descending
    directional: float  # u^T H u / |u|^2 of the update u taken from x_t (nan if u = 0)
    threshold: Threshold | None
    preconditioned: float | None  # lambda_max(P^-1 H) for Adam-type lanes
    trace: float | None = None
    trace_stderr: float | None = None
    density_nodes: np.ndarray | None = None  # [probes, m]
    density_weights: np.ndarray | None = None
    exact: np.ndarray | None = None  # exact eigenvalues (ascending) when the problem is small
    hvps: int = 0
    seconds: float = 0.0
    extras: Mapping[str, Any] = field(default_factory=dict)
    dtype: str = "float64"  # the dtype of its Hessian-vector products
    # gradient noise (engine.noise; None where not asked for, or not measurable: ``notes`` say why)
    noise_tensors: tuple[str, ...] | None = None  # the parameter tensors the arrays below follow
    grad_variance: np.ndarray | None = None  # [K] tr Sigma_k: per-sample gradient variance per tensor
    grad_snr: np.ndarray | None = None  # [K] |mean g_k|^2 / tr Sigma_k (Liu et al.'s GSNR, per tensor)
    gsnr: np.ndarray | None = None  # [K] SGD-SaI's g-SNR |g_k| / (std of g_k's entries + eps)
    noise_scale: float | None = None  # tr Sigma / |mean g|^2 over the whole vector
    norm_test: float | None = None  # noise_scale / b: the norm test passes at batch b when <= theta^2
    noise_samples: int = 0  # per-sample gradients taken (work: S one-sample gradients)
    estimate_cosine: float | None = None  # cos(optimizer's estimate, gradient of the step's minibatch)
    estimate_cosine_full: float | None = None  # cos(optimizer's estimate, the full objective's gradient)
    gradients: int = 0  # gradients taken beyond the HVP operator's own (the full-set one)
    notes: Mapping[str, str] = field(default_factory=dict)  # instrument -> why it is None

    def same_values(self, other: Probe | None) -> bool:
        """Equal in every measured value (not in ``seconds``): what a replay must reproduce."""
        if other is None:
            return False
        for name in ("step", "lambda_max", "lambda_max_residual", "top_k", "directional", "threshold",
                     "preconditioned", "trace", "trace_stderr", "density_nodes", "density_weights", "exact",
                     "hvps", "dtype", "noise_tensors", "grad_variance", "grad_snr", "gsnr", "noise_scale",
                     "norm_test", "noise_samples", "estimate_cosine", "estimate_cosine_full", "gradients",
                     "notes"):
            a, b = getattr(self, name), getattr(other, name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if a is None or b is None or not np.array_equal(a, b, equal_nan=True):
                    return False
            elif a != b and not (isinstance(a, float) and isinstance(b, float)
                                 and np.isnan(a) and np.isnan(b)):
                return False
        return True

    @property
    def measures_directional(self) -> bool:
        """Whether the probe was asked for the update's directional sharpness
        (``ProbeConfig.directional``; a lane that did not move has nan there and still says True)."""
        return "directional" not in self.notes

    @property
    def sharpness(self) -> float:
        """The quantity the threshold bounds (preconditioned for Adam-type lanes)."""
        if self.threshold is not None and self.threshold.quantity == PRECONDITIONED:
            return float("nan") if self.preconditioned is None else self.preconditioned
        return self.lambda_max


def second_moment(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], key: str,
                  row: int | None) -> tuple[torch.Tensor, int] | None:
    """Flattened state entry ``key`` (the spec's ``second_moment_key``: an adaptive method's
    :math:`v_t`) of one start (``row`` of ``[M, ...]`` leaves, or ``None`` for per-row leaves) and
    the step count, kept per parameter (torch) or per group (pytorch_optimizer)."""
    parts, step = [], 0
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for p in params:
        state = optimizer.state.get(p, {})
        if key not in state:
            return None
        v = state[key]
        parts.append((v[row] if row is not None else v).reshape(-1))
        step = int(state["step"]) if "step" in state else int(group_of[id(p)].get("step", 0))
    return torch.cat(parts).double(), step


def probe(f: Any, x: torch.Tensor, update: torch.Tensor, *, stability: StabilityRule | None,
          hyperparameters: Mapping[str, Any], config: ProbeConfig, generator: torch.Generator,
          step: int, dim: int,
          moment: tuple[torch.Tensor, int] | None = None, warm: Mapping[str, torch.Tensor] | None = None,
          op: HVP | None = None, problem: Any = None, batch: Any = None,
          estimate: Estimate = None) -> tuple[Probe, dict[str, torch.Tensor]]:
    """Measure the Hessian of the scalar closure ``f`` at ``x [P]`` (see the module docstring).

    Products run in ``config.dtype`` or, by default, ``x``'s dtype (the run's): a float32 run
    probes in float32 (eigenvalues good to ~1e-6 relative), a float64 one to ~1e-12. ``op``: an
    operator for this point built by the caller (e.g. :meth:`HVP.from_gradient` on the training
    step's own graph), in place of building one from ``f`` (which costs ~1.2 gradients).

    ``warm`` holds the previous probe's Ritz vectors (``"top"`` ``[k, P]``, plus ``WARM_GUARD`` for
    top-1; ``"preconditioned"``; ``"before"``: the top-k the previous probe started from): Lanczos
    starts from a block of the top-k's sum (each extrapolated along its drift from ``"before"``,
    see :func:`_extrapolated`), the guard and the update ``u`` (its product gives the directional
    sharpness; ``config.directional=False`` leaves it out: one product fewer, and a start of one vector
    runs plain Lanczos: the Rayleigh quotient and residual of the extrapolated vector after one
    product, more only while the residual is above ``tol``), so a slowly drifting Hessian costs a
    few HVPs instead of dozens (measured in ``benchmarks/hessian.py``: 2-8x fewer along a
    digits-MLP run, more the more often it probes). Without it the block is a random vector from
    ``generator`` and ``u``, and Lanczos tests convergence only after 20 products (see
    :func:`engine.curvature.lanczos`'s ``min_basis``). The new vectors come back with the probe.

    Gradient noise (``config.noise`` / ``config.estimate_cosine``, :func:`engine.noise.measure`)
    needs ``problem`` and the step's minibatch ``batch``; ``estimate`` is the lane's flat gradient
    estimate (or why it has none). Its subset of samples comes from a generator of its own, seeded by
    ``config.seed`` and ``step``, so switching it on leaves every curvature value as it was."""
    t0 = time.perf_counter()
    warm = warm or {}
    dense = dim <= EXACT_MAX_DIM
    if op is None and (not dense or config.noise or config.estimate_cosine):
        op = HVP(f, x.detach().to(config.probe_dtype(x.dtype)))
    reading = NoiseReading()
    if config.noise or config.estimate_cosine:
        assert op is not None
        reading = measure(problem, op.x, batch, op.gradient, noise=config.noise, samples=config.noise_samples,
                          estimate_cosine=config.estimate_cosine, estimate=estimate,
                          generator=torch.Generator().manual_seed(probe_noise_seed(config.seed, step)))
    threshold = stability(hyperparameters) if stability is not None else None
    diagonal = None
    if (threshold is not None and threshold.quantity == PRECONDITIONED and threshold.diagonal is not None
            and moment is not None and moment[1] > 0):
        diagonal = threshold.diagonal(moment[0], moment[1], hyperparameters)
    if dense:
        values, vectors = _dense(f, x, update, config, diagonal)
        values["seconds"] = time.perf_counter() - t0
        notes = None if config.directional else {"directional": DIRECTIONAL_OFF}
        return Probe(step=step, threshold=threshold, **values, **_noise_fields(reading, notes)), vectors
    assert op is not None
    u = update.detach().reshape(-1).to(device=op.device, dtype=torch.float64)
    moves = config.directional and bool(torch.isfinite(u).all()) and float(u @ u) > 0
    guard = WARM_GUARD if config.top_k == 1 else 0
    k = config.top_k
    if "top" in warm:  # the previous top-k as one vector, and its next Ritz vector (see WARM_GUARD)
        start = [_extrapolated(warm["top"][:k], warm.get("before")).sum(0), *warm["top"][k:k + guard]]
    else:
        start = [_random_start(op, generator)]
    if moves:
        start.append(u)
    cold = None if "top" in warm else max(2 * config.top_k + 1, 20)  # a random start (see lanczos)
    top = lanczos(op, config.top_k, warm=torch.stack(start), generator=generator, tol=config.tol,
                  ritz_vectors=True, max_basis=_max_basis(config.top_k, dim),
                  max_iter=config.max_hvps, min_basis=cold, guard=guard)
    notes = {} if config.directional else {"directional": DIRECTIONAL_OFF}
    if not top.converged and config.max_hvps is not None:
        notes["lambda_max"] = (f"stopped at the budget of {config.max_hvps} products before tol "
                               f"{config.tol:g}: error bound {float(top.top_error_bounds[0]):.3g}")
    vectors = {"top": top.warm_vectors}
    if "top" in warm:  # where this probe started from: the next one extrapolates along the drift
        vectors["before"] = warm["top"][:k]
    directional = float(top.start_rayleigh[-1]) if moves else float("nan")
    pre = None
    if diagonal is not None:
        res = lanczos(Preconditioned(op, diagonal.rsqrt()), 1, generator=generator, tol=config.tol,
                      ritz_vectors=True, v0=warm["preconditioned"].sum(0) if "preconditioned" in warm
                      else None, max_basis=_max_basis(1, dim), max_iter=config.max_hvps)
        pre = float(res.top[0])
        vectors["preconditioned"] = res.warm_vectors
    trace = stderr = None
    if config.trace:
        est = hutchinson_trace(op, config.trace_probes, generator)
        trace, stderr = est.value, est.stderr
    nodes = weights = None
    if config.density:
        dens = spectral_density(op, config.density_probes, min(config.density_steps, dim),
                                generator=generator)
        nodes, weights = dens.nodes, dens.weights
    exact = None
    if config.density and dim <= EXACT_DENSITY_MAX_DIM:
        exact = torch.linalg.eigvalsh(dense_hessian(f, x)).cpu().numpy()
    result = Probe(step=step, lambda_max=float(top.top[0]), lambda_max_residual=float(top.top_residuals[0]),
                   top_k=np.asarray(top.top), directional=directional, threshold=threshold,
                   preconditioned=pre, trace=trace, trace_stderr=stderr, density_nodes=nodes,
                   density_weights=weights, exact=exact, hvps=op.hvps, seconds=time.perf_counter() - t0,
                   dtype=str(op.dtype).removeprefix("torch."),
                   **_noise_fields(reading, notes))
    return result, vectors


def _noise_fields(reading: NoiseReading, notes: Mapping[str, str] | None = None) -> dict[str, Any]:
    return dict(noise_tensors=reading.tensors, grad_variance=reading.grad_variance, grad_snr=reading.grad_snr,
                gsnr=reading.gsnr, noise_scale=reading.noise_scale, norm_test=reading.norm_test,
                noise_samples=reading.samples, estimate_cosine=reading.estimate_cosine,
                estimate_cosine_full=reading.estimate_cosine_full, gradients=reading.gradients,
                notes={**reading.notes, **(notes or {})})


def _dense(f: Any, x: torch.Tensor, update: torch.Tensor, config: ProbeConfig,
           diagonal: torch.Tensor | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    r"""A probe's values from the dense float64 Hessian ``H = V diag(w) V^T`` (``P`` products):
    the top-k and their residuals :math:`\lVert H v - \lambda v\rVert`, :math:`u^\top H u/u^\top u`,
    :math:`\lambda_{\max}(D H D)` with :math:`D = P^{-1/2}`, :math:`\operatorname{tr} H` (stderr 0)
    and the density as the eigenvalues with weight ``1/P`` each."""
    H = dense_hessian(f, x)
    dim = H.shape[0]
    w, V = torch.linalg.eigh(H)
    k = min(config.top_k, dim)
    top, top_vecs = w.flip(0)[:k], V.flip(1)[:, :k]
    residual = torch.linalg.vector_norm(H @ top_vecs[:, 0] - top[0] * top_vecs[:, 0])
    u = update.detach().reshape(-1).to(H)
    uu = float(u @ u) if config.directional and bool(torch.isfinite(u).all()) else 0.0
    vectors = {"top": top_vecs.T.contiguous()}
    pre = None
    if diagonal is not None:
        d = diagonal.to(H).rsqrt()
        pw, pv = torch.linalg.eigh(d[:, None] * H * d[None, :])
        pre = float(pw[-1])
        vectors["preconditioned"] = pv[:, -1:].T.contiguous()
    exact = w.cpu().numpy()
    values = dict(lambda_max=float(top[0]), lambda_max_residual=float(residual), top_k=top.cpu().numpy(),
                  directional=float(u @ (H @ u)) / uu if uu > 0 else float("nan"), preconditioned=pre,
                  trace=float(w.sum()) if config.trace else None, trace_stderr=0.0 if config.trace else None,
                  density_nodes=exact[None] if config.density else None,
                  density_weights=np.full((1, dim), 1.0 / dim) if config.density else None,
                  exact=exact, hvps=dim, dtype="float64")
    return values, vectors


DIRECTIONAL_OFF = "not asked for (ProbeConfig.directional=False): it costs one product a probe"


EXTRAPOLATE_MIN_COSINE = 0.5
"""A previous Ritz vector extrapolates only when it still points along the one after it: below
this |cosine| its eigenvalue has crossed another (the order of the Ritz vectors changed)."""


def _extrapolated(now: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
    r"""The next probe's guess of the top Ritz vectors ``[k, P]``: each extrapolated linearly from
    the last two probes', :math:`2 v_t - v_{t-1}` (signs aligned; a vector whose cosine with its
    predecessor is below ``EXTRAPOLATE_MIN_COSINE`` stays as it is). Eigenvectors of a Hessian along
    a training run drift smoothly, so the guess is off by the drift's change rather than the drift:
    on the digits-MLP runs of benchmarks/hessian.py (sections c and d; a guard vector in the block,
    as then) warm probes need 18-24% fewer products every step and every 16 steps (5.08 -> 4.15
    and 5.37 -> 4.48 at lr 0.1; 4.84 -> 3.73 and 6.74 -> 5.13 on the edge-of-stability run), and
    without the guard fewer still (``WARM_GUARD``), every value within its residual of a
    reference to 1e-10. A guess costs no product: it only starts Lanczos elsewhere."""
    if before is None or before.shape != now.shape:
        return now
    norms = torch.linalg.vector_norm(now, dim=1) * torch.linalg.vector_norm(before, dim=1)
    cos = (now * before).sum(1) / norms.clamp_min(1e-300)
    step = torch.where(cos.abs()[:, None] >= EXTRAPOLATE_MIN_COSINE, now - cos.sign()[:, None] * before, 0.0)
    return now + step


def _random_start(op: HVP, generator: torch.Generator) -> torch.Tensor:
    """A Gaussian start vector: with probability one it has a component along every eigenvector
    (a start made of the update alone would miss ``lambda_max`` where ``u`` is another eigenvector)."""
    z = torch.randn(op.dim, generator=generator, dtype=torch.float64, device=generator.device)
    return z.to(op.device)


def _max_basis(k: int, dim: int) -> int | None:
    """Basis vectors a probe keeps before a thick restart: bounds its memory to ``(40 + 4k) P``
    floats (a cold top-5 on the digits MLP needs ~30 vectors, so restarts are rare there)."""
    size = 40 + 4 * k
    return size if size < dim else None
