r"""Curvature of a scalar function at a point, built on one Hessian-vector product.

Everything here takes a closure ``f: Tensor[P] -> scalar`` and a point ``x`` (a 2-D landscape is
``f = lambda t: problem.loss(t[None])[0]``; a network's flat view is
``f = lambda theta: problem.loss(theta[None], batch)[0]``), wraps them in an :class:`HVP` operator
and feeds that operator to the estimators (:meth:`HVP.from_gradient` builds the operator on a
gradient that a training step already took with ``create_graph=True``):

- :func:`lanczos` — extreme eigenvalues with residuals (full reorthogonalization by default),
  warm starts from a previous call's Ritz vectors and thick restarts in bounded memory;
- :func:`power_iteration` — the dominant eigenvalue, the cheap classic;
- :func:`spectral_density` — stochastic Lanczos quadrature (SLQ) nodes and weights, and
  :func:`density_on_grid` to draw them;
- :func:`hutchinson_trace`, :func:`hutchpp_trace`, :func:`hutchinson_diagonal`;
- :func:`directional_curvature` — ``v^T H v / |v|^2``;
- :func:`dense_hessian` — the brute-force truth for problems small enough to form it.

Every estimator returns a frozen dataclass holding its values plus ``hvps`` (Hessian-vector
products it spent) and ``seconds`` (its wall time). Spectra (eigenvalues, residuals, quadrature
nodes/weights) are numpy float64 arrays; vectors that live in parameter space (Ritz vectors, the
Hessian diagonal, the power-iteration vector) stay torch float64 tensors on the operator's device.
The operator computes in its point's dtype (float32 products for a float32 point, ~2x cheaper on
CPU); recurrences and bases stay float64. Randomness only ever comes from an explicit
``torch.Generator``. Long loops pass one product at a time through ``HVP._products``, where a
cancellation checkpoint belongs (marked ``# checkpoint``).

Why the default HVP route is reverse-over-reverse on a cached gradient graph: measured on the
64-64-10 digits MLP (4,810 parameters, full batch, one CPU thread) one product costs ~1.1x a
gradient (float64; ~0.8x float32); ``torch.func`` forward-over-reverse (``jvp`` of ``grad``)
costs ~3.8x (~2.4x under ``vmap``); and ``is_grads_batched=True`` (vmap over the backward pass)
costs 1.1-1.6x a looped product per vector for blocks of 1-20 (benchmarks/hessian.py, section b).
So blocks are looped by default (``batched=True`` is an option, with a fallback to the loop for
ops without a batching rule).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from engine.cancel import checkpoint

Closure = Callable[[torch.Tensor], torch.Tensor]
Which = Literal["top", "bottom", "both"]

__all__ = [
    "HVP",
    "DiagonalEstimate",
    "LanczosResult",
    "PowerResult",
    "SpectralDensity",
    "TraceEstimate",
    "dense_hessian",
    "density_on_grid",
    "directional_curvature",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "power_iteration",
    "spectral_density",
]


# --------------------------------------------------------------------------------------------------
# The operator
# --------------------------------------------------------------------------------------------------


class HVP:
    """The Hessian of ``f`` at ``x`` as a linear operator ``v -> H v``.

    ``route="reverse"`` (default) differentiates ``f`` once with ``create_graph=True`` on a fresh
    leaf copy of ``x`` (``torch.autograd.grad``, never ``.backward``, so nothing is written to any
    ``.grad``) and then differentiates that cached gradient against each ``v``.
    ``route="forward"`` uses ``torch.func.jvp`` of ``torch.func.grad(f)`` (forward-over-reverse,
    no cached graph; ``f`` must be a pure function of its argument). :meth:`from_gradient` builds
    the reverse route on a gradient someone already took with ``create_graph=True`` (a training
    step's own backward pass), skipping the forward and backward pass the setup costs.

    ``batched=True`` evaluates a block ``V [k, P]`` in one call (``is_grads_batched`` /
    ``torch.func.vmap``); it falls back to a loop, with a warning, where an op has no batching
    rule. The operator counts products (a block of ``k`` counts ``k``) in :attr:`hvps` and the time
    spent in them in :attr:`seconds`. The input ``x`` is never modified or attached to a graph.
    Products are computed in ``x``'s dtype (a float32 point gives a float32 operator, ~2x faster
    on CPU and good to ~1e-7 relative) and returned in the caller's.
    """

    def __init__(self, f: Closure, x: torch.Tensor, *, route: Literal["reverse", "forward"] = "reverse",
                 batched: bool = False) -> None:
        if route not in ("reverse", "forward"):
            raise ValueError(f"route must be 'reverse' or 'forward', got {route!r}")
        if x.dim() != 1:
            raise ValueError(f"x must be a flat vector [P], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        self._init(x, route, batched)
        t0 = time.perf_counter()
        with torch.enable_grad():
            if route == "reverse":
                leaf = self.x.clone().requires_grad_(True)
                value = _scalar(f(leaf))
                (g,) = torch.autograd.grad(value, leaf, create_graph=True)
                self._set_graph([leaf], [g])
            else:
                grad_f = torch.func.grad_and_value(f)
                g, value = grad_f(self.x)
                _scalar(value)
                self.gradient = g.detach().clone()
                grad_only = torch.func.grad(f)
                x0 = self.x

                def jvp(v: torch.Tensor) -> torch.Tensor:
                    return torch.func.jvp(grad_only, (x0,), (v,))[1]

                self._jvp = jvp
        self.value = float(value.detach())
        self.setup_seconds = time.perf_counter() - t0

    def _init(self, x: torch.Tensor, route: str, batched: bool) -> None:
        self.route = route
        self.batched = batched
        self.x = x.detach().clone()
        self.dim = self.x.numel()
        self.dtype = self.x.dtype
        self.device = self.x.device
        self.hvps = 0
        self.seconds = 0.0
        self._leaves: list[torch.Tensor] = []
        self._graph: list[torch.Tensor] = []  # the gradient pieces that depend on x (empty: H == 0)
        self._live: list[int] = []  # their indices among the leaves
        self._sizes: list[int] = []

    def _set_graph(self, leaves: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None]) -> None:
        pieces = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)]
        self.gradient = torch.cat([g.detach().reshape(-1) for g in pieces])
        # A piece that does not require grad is constant in x: its rows of H are zero.
        live = [i for i, g in enumerate(pieces) if g.requires_grad]
        self._leaves = list(leaves)
        self._graph = [pieces[i] for i in live]
        self._live = live
        self._sizes = [p.numel() for p in leaves]

    @classmethod
    def from_gradient(cls, grads: Sequence[torch.Tensor | None], leaves: Sequence[torch.Tensor], *,
                      x: torch.Tensor | None = None, value: float | torch.Tensor = float("nan"),
                      batched: bool = False) -> HVP:
        """The operator on gradients ``grads`` already taken with ``create_graph=True`` against the
        leaves ``leaves`` (flattened in order; ``None``: an unused leaf). ``x``: the point the
        gradient was taken at, for :attr:`x` (default: the leaves' current values).

        Costs no forward or backward pass (``HVP(f, x)`` spends ~1.2 gradients on its setup). The
        caller keeps the graph valid: the tensors it saved must not be modified in place before the
        last product (a leaf updated by ``optimizer.step()`` is fine when the loss only saw a copy
        of it, e.g. a ``torch.cat`` of the leaves). A gradient of a sum over rows (a batched run)
        gives the Hessian of the whole sum, block-diagonal over rows: it is the Hessian of one row
        only when the sum has one row."""
        if len(grads) != len(leaves) or not leaves:
            raise ValueError(f"need one gradient per leaf, got {len(grads)} for {len(leaves)} leaves")
        if x is None:
            x = torch.cat([p.detach().reshape(-1) for p in leaves])
        elif x.numel() != sum(p.numel() for p in leaves):
            raise ValueError(f"x has {x.numel()} entries but the leaves {sum(p.numel() for p in leaves)}")
        op = cls.__new__(cls)
        op._init(x.reshape(-1), "reverse", batched)
        op._set_graph(leaves, grads)
        op.value = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
        op.setup_seconds = 0.0
        return op

    @classmethod
    def for_problem(cls, problem: Any, x: torch.Tensor, batch: Any = None, **kwargs: Any) -> HVP:
        """The operator for a :class:`engine.problem.Problem` (``loss([B, d]) -> [B]``) at ``x [d]``."""
        return cls(lambda t: problem.loss(t[None], batch)[0], x, **kwargs)

    # ---------------------------------------------------------------------------------------------

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for one vector ``v [P]``, returned in ``v``'s dtype and device."""
        if v.shape != (self.dim,):
            raise ValueError(f"v must have shape ({self.dim},), got {tuple(v.shape)}")
        return self.matmat(v[None])[0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H V^T`` row by row for a block ``V [k, P]``: returns ``[k, P]`` in ``V``'s dtype/device."""
        if V.dim() != 2 or V.shape[1] != self.dim:
            raise ValueError(f"V must have shape (k, {self.dim}), got {tuple(V.shape)}")
        checkpoint()  # a cancelled probe stops between products (engine/cancel.py)
        t0 = time.perf_counter()
        Vin = V.detach().to(device=self.device, dtype=self.dtype)
        with torch.enable_grad():
            out = self._products(Vin)
        self.hvps += V.shape[0]
        self.seconds += time.perf_counter() - t0
        return out.to(device=V.device, dtype=V.dtype)

    def _products(self, V: torch.Tensor) -> torch.Tensor:
        if self.route == "reverse" and not self._graph:
            return torch.zeros_like(V)
        if self.batched and V.shape[0] > 1:
            try:
                return self._batched(V)
            except RuntimeError as err:  # an op without a batching rule: loop from now on
                warnings.warn(f"batched HVP failed ({err}); falling back to a loop", RuntimeWarning,
                              stacklevel=3)
                self.batched = False
        out = []
        for v in V:
            # checkpoint: every estimator's products pass here (engine.cancel.checkpoint() goes here)
            out.append(self._one(v))
        return torch.stack(out)

    def _pieces(self, V: torch.Tensor) -> list[torch.Tensor]:
        """The live gradient pieces' cotangents: ``V [..., P]`` split like the leaves."""
        parts = V.split(self._sizes, dim=-1)
        lead = V.shape[:-1]
        return [parts[i].reshape(*lead, *self._graph[j].shape)
                for j, i in enumerate(self._live)]

    def _one(self, v: torch.Tensor) -> torch.Tensor:
        checkpoint()
        if self.route == "forward":
            return self._jvp(v).detach()
        hv = torch.autograd.grad(self._graph, self._leaves, self._pieces(v), retain_graph=True,
                                 materialize_grads=True)
        return torch.cat([h.reshape(-1) for h in hv]) if len(hv) > 1 else hv[0].reshape(-1)

    def _batched(self, V: torch.Tensor) -> torch.Tensor:
        if self.route == "forward":
            return torch.func.vmap(self._jvp)(V).detach()
        HV = torch.autograd.grad(self._graph, self._leaves, self._pieces(V), retain_graph=True,
                                 is_grads_batched=True, materialize_grads=True)
        k = V.shape[0]
        # an unused leaf's materialized zeros come without the batch dimension
        return torch.cat([(h if h.dim() > p.dim() else h.expand(k, *p.shape)).reshape(k, -1)
                          for h, p in zip(HV, self._leaves, strict=True)], dim=1)


def _scalar(value: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError("f must return a scalar tensor")
    return value.reshape(())


class _Meter:
    """Records an estimator's HVP count and wall time from an operator's counters."""

    def __init__(self, op: HVP) -> None:
        self.op, self.hvps0, self.t0 = op, op.hvps, time.perf_counter()

    @property
    def hvps(self) -> int:
        return self.op.hvps - self.hvps0

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def _randn(n: int, op: HVP, generator: torch.Generator) -> torch.Tensor:
    """``[n, P]`` standard normals in float64 on the operator's device (drawn on the generator's)."""
    return torch.randn(n, op.dim, generator=generator, dtype=torch.float64,
                       device=generator.device).to(op.device)


def _rademacher(n: int, op: HVP, generator: torch.Generator) -> torch.Tensor:
    """``[n, P]`` random signs (+-1) in float64 on the operator's device."""
    bits = torch.randint(0, 2, (n, op.dim), generator=generator, device=generator.device)
    return (2.0 * bits - 1.0).to(device=op.device, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Lanczos
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Ritz values of a Lanczos run with their residuals and error bounds.

    ``top`` is descending, ``bottom`` ascending (each empty unless requested). For each value:
    ``*_residuals`` is the residual norm ``||H y - theta y||`` of its Ritz pair, read off the
    Krylov decomposition without extra products (exact up to rounding and the operator's own
    error); ``verified_*`` the same norm measured with extra HVPs (``verify=True``);
    ``*_error_bounds`` is ``min(r, r^2 / (gap - r))``, the bound on ``|theta - lambda|`` (gap: the
    distance to the nearest other Ritz value, standing in for the nearest other eigenvalue, and
    used only when that value is itself resolved in a subspace of at least three more Ritz
    values; else ``r``).
    ``ritz_values`` holds the Ritz values of the final basis (ascending) and ``projection`` the
    projected matrix ``V H V^T`` they come from (tridiagonal for a cold start without restarts).
    ``converged`` says the bounds met ``tol`` (or the subspace became invariant, which makes the
    values exact). ``iterations`` counts the products spent by the iteration (``hvps`` adds the
    verifying ones), ``restarts`` the thick restarts, ``start_rayleigh`` the Rayleigh quotients
    ``v^T H v / |v|^2`` of the start vectors (free: their products start the iteration), and
    ``warm_vectors`` (with ``ritz_vectors=True``) the wanted Ritz vectors plus ``guard`` more, to
    warm-start the next call on a nearby operator (with ``which="top"``, each positive one moved a
    power step for free: :func:`_power_step`).
    """

    top: np.ndarray
    bottom: np.ndarray
    top_residuals: np.ndarray
    bottom_residuals: np.ndarray
    top_error_bounds: np.ndarray
    bottom_error_bounds: np.ndarray
    top_vectors: torch.Tensor | None
    bottom_vectors: torch.Tensor | None
    verified_top_residuals: np.ndarray | None
    verified_bottom_residuals: np.ndarray | None
    ritz_values: np.ndarray
    projection: np.ndarray
    iterations: int
    converged: bool
    hvps: int
    seconds: float
    restarts: int = 0
    start_rayleigh: np.ndarray = field(default_factory=lambda: np.zeros(0))
    warm_vectors: torch.Tensor | None = None


def _tridiagonal(alpha: list[float], beta: list[float]) -> np.ndarray:
    T = np.diag(np.asarray(alpha, dtype=np.float64))
    if len(alpha) > 1:
        b = np.asarray(beta[: len(alpha) - 1], dtype=np.float64)
        T += np.diag(b, 1) + np.diag(b, -1)
    return T


def _pick(m: int, k: int, which: Which) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``m`` ascending Ritz values) of the top-k (descending) and bottom-k (ascending)."""
    k = min(k, m)
    top = np.arange(m - 1, m - 1 - k, -1) if which in ("top", "both") else np.arange(0)
    bottom = np.arange(k) if which in ("bottom", "both") else np.arange(0)
    return top, bottom


def _error_bounds(theta: np.ndarray, idx: np.ndarray, res_all: np.ndarray) -> np.ndarray:
    """``min(r, r^2 / (gap - r))`` per selected Ritz value, ``r`` its residual and ``gap`` the distance
    to the nearest other Ritz value (Kato-Temple / Parlett 1998, ch. 11), else ``r`` alone.

    The gap only counts when that neighbour is itself resolved (its residual below half the gap)
    and the subspace holds at least three Ritz values beyond the selected ones: Ritz values of a
    small subspace overstate gaps (by interlacing, the next eigenvalue may lie anywhere above an
    unconverged Ritz value), and in clustered spectra (a network's top eigenvalues ~1% apart)
    trusting such a gap stopped warm-started probes at 10x their tolerance.
    ``res_all``: the residuals of all Ritz values (ascending ``theta`` order). Small numpy arrays:
    a probe evaluates this after every product, where torch's per-call cost would dominate."""
    res = res_all[idx]
    if theta.size < idx.size + 3:  # too few other Ritz values to trust a gap: the residual alone
        return res.copy()
    dist = np.abs(theta[idx, None] - theta[None, :])
    rows = np.arange(idx.size)
    dist[rows, idx] = np.inf
    nearest = dist.argmin(axis=1)
    gap = dist[rows, nearest]
    resolved = res_all[nearest] <= 0.5 * gap
    excess = gap - res
    quadratic = np.minimum(res, res**2 / np.maximum(excess, 1e-300))
    return np.where((excess > 0) & resolved, quadratic, res)


def _check_interval(m: int) -> int:
    # An m x m eigh costs ~1 ms at m = 100 on one CPU thread (an MLP HVP ~3 ms): check less often then.
    return 1 if m <= 48 else 2 if m <= 96 else 4


def _operator_eps(op: Any) -> float:
    """Unit roundoff of the dtype the operator computes in (float32 products are only that good)."""
    dtype = getattr(op, "dtype", torch.float64)
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(torch.finfo(torch.float64).eps)


def lanczos(op: HVP, k: int = 5, *, which: Which = "top", reorthogonalize: bool = True,
            ritz_vectors: bool = False, tol: float = 1e-10, max_iter: int | None = None,
            verify: bool = False, v0: torch.Tensor | None = None, warm: torch.Tensor | None = None,
            guard: int = 0, max_basis: int | None = None, min_basis: int | None = None,
            generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> LanczosResult:
    r"""Extreme eigenvalues of ``H`` by the Lanczos iteration, stopping on its own error bounds.

    Grows an orthonormal basis ``V`` until every requested Ritz value has an error bound
    ``min(r, r^2 / gap) <= tol * max|theta|`` and a residual ``r <= sqrt(tol) * max|theta|``
    (relative to ``||H||`` so that eigenvalues near zero do not stall it; the residual condition
    guards against a gap overstated by Ritz values), the subspace becomes invariant (exact values,
    e.g. after two products in dimension 2), or ``max_iter`` products are spent (default
    ``min(P, 50 + 20 k)``, plus the start block). ``tol=0`` runs exactly ``max_iter`` products.
    Fewer than ``k`` values come back when ``P < k``.

    ``min_basis``: products spent before the first convergence test. Default: for a random start
    (neither ``v0`` nor ``warm``), ARPACK's default subspace ``max(2k + 1, 20)`` (``ncv`` of
    ``scipy.sparse.linalg.eigsh``); else none. A smaller random Krylov space, in a spectrum whose
    top eigenvalues lie within a few percent (a network's), can hold a mixture of the top
    eigenvectors whose Ritz value meets ``tol`` by its bounds while its true error is up to 1,000x
    larger: on dense Hessians (top eigenvalues 0.1-10% apart, tol 1e-2 to 1e-4, k = 1 and 3) in 88
    of 480 cold starts, and in 1 with the minimum (an eigenvalue the Krylov space missed: no
    a-posteriori bound sees that; tests/engine/test_curvature.py). A warm start holds the previous
    answer and needs no minimum (along digits-MLP runs no warm probe erred beyond its residual).

    **Start.** ``v0`` or a Gaussian draw from ``generator`` (default: seed 0): plain Lanczos. To
    start warm from a previous call's ``warm_vectors`` on a nearby Hessian (a probe earlier in the
    same run), pass their sum as ``v0``: Lanczos from it holds each of them after ``k`` steps, and
    measured along digits-MLP runs it needs 1.4-4x fewer products than a cold start at the same
    tolerance, fewer than starting from the vectors as a block (benchmarks/hessian.py). ``warm``
    ``[p, P]`` is such a block: it is orthonormalized, its ``p`` products give a Rayleigh-Ritz
    start (and the start vectors' Rayleigh quotients, ``start_rayleigh``) and the iteration goes on
    from the residuals; ``v0``, if also given, joins it.

    **Iteration** (``reorthogonalize=True``): the Krylov decomposition ``H V^T = V^T T + F^T C``
    is kept with ``T`` the projected matrix and ``F`` an orthonormal block of open residual
    directions orthogonal to ``V`` (one direction for plain Lanczos, at most ``p`` for a warm
    block). A Ritz pair ``(theta, V^T s)`` then has the residual ``||C s||`` exactly, and the basis
    grows by the residual direction of the least converged wanted pair (for a cold start this is
    the next Lanczos vector: the same Krylov space and tridiagonal ``T``; for a warm block it is
    the generalized-Davidson choice). New vectors get two classical Gram-Schmidt passes against
    the basis (held in ``dtype``, float64 by default).

    **Thick restart** (Wu & Simon 2000; Stathopoulos & Saad 1998): with ``max_basis``, a full basis
    is cut down to the wanted Ritz vectors plus about half the rest nearest to them; ``T`` becomes
    their Ritz values and ``C`` their residual coefficients, so a restart costs no product and the
    memory stays ``max_basis x P``.

    ``reorthogonalize=False`` runs the bare three-term recurrence from one start vector (keeping only
    two vectors unless Ritz vectors are wanted): cheaper, but once a Ritz value converges the basis
    loses orthogonality and *ghost* copies of it appear among the Ritz values; ``max_iter`` may
    then exceed ``P``. Warm blocks and restarts need the orthogonal basis.

    Accuracy: the residuals and bounds describe the operator as computed. A float32 operator
    (``HVP`` of a float32 point) differs from the exact Hessian by ~1e-7 ``||H||`` per product,
    so its eigenvalues are good to ~1e-6 relative whatever ``tol`` says; float64 to ~1e-12.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if which not in ("top", "bottom", "both"):
        raise ValueError(f"which must be 'top', 'bottom' or 'both', got {which!r}")
    if guard < 0:
        raise ValueError(f"guard must be >= 0, got {guard}")
    P = op.dim
    max_iter = min(P, 50 + 20 * k) if max_iter is None else max_iter
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    need = min(P, 2 * k if which == "both" else k)  # Ritz values needed before testing convergence
    if min_basis is None:
        min_basis = max(2 * k + 1, 20) if v0 is None and warm is None else 0
    elif min_basis < 0:
        raise ValueError(f"min_basis must be >= 0, got {min_basis}")
    first_test = min(P, min_basis)
    if max_basis is not None and max_basis < need + 2:
        raise ValueError(f"max_basis must be >= {need + 2} (the wanted values plus two), got {max_basis}")
    start = _start_block(op, v0, warm, generator, dtype)
    if not reorthogonalize:
        if start.shape[0] > 1 or max_basis is not None:
            raise ValueError("a warm block and thick restarts need reorthogonalize=True")
        return _plain_lanczos(op, k, which, start[0], ritz_vectors, tol, max_iter, verify, dtype, first_test)
    return _krylov(op, k, which, start, need, ritz_vectors, tol, max_iter, verify, guard, max_basis, dtype,
                   first_test)


def _start_block(op: HVP, v0: torch.Tensor | None, warm: torch.Tensor | None,
                 generator: torch.Generator | None, dtype: torch.dtype) -> torch.Tensor:
    rows = []
    if warm is not None:
        if warm.dim() not in (1, 2) or warm.shape[-1] != op.dim:
            raise ValueError(f"warm must have shape (p, {op.dim}), got {tuple(warm.shape)}")
        rows.append(warm.detach().reshape(-1, op.dim))
    if v0 is not None:
        if v0.numel() != op.dim:
            raise ValueError(f"v0 must have {op.dim} entries, got shape {tuple(v0.shape)}")
        rows.append(v0.detach().reshape(1, -1))
    if not rows:
        rows.append(_randn(1, op, _generator(generator)))
    block = torch.cat([r.to(device=op.device, dtype=dtype) for r in rows])
    if block.shape[0] == 0 or not bool(torch.isfinite(block).all()):
        raise ValueError("start vectors must be finite and at least one")
    return block


def _krylov(op: HVP, k: int, which: Which, raw: torch.Tensor, need: int, ritz_vectors: bool, tol: float,
            max_iter: int, verify: bool, guard: int, max_basis: int | None,
            dtype: torch.dtype, first_test: int = 0) -> LanczosResult:
    """The reorthogonalized iteration of :func:`lanczos` (see its docstring for the algebra).

    ``[*, P]`` vectors (basis ``V``, open directions ``F``) stay torch tensors on the operator's
    device; the small matrices (``T``, ``C``, Ritz values and vectors, bounds) are numpy float64:
    at a probe's 2-10 products torch's per-call overhead on them cost ~0.4 ms per product, as much
    as 20-30% of a digits-MLP probe's products (benchmarks/hessian.py)."""
    meter = _Meter(op)
    P = op.dim
    eps = max(float(torch.finfo(dtype).eps), _operator_eps(op))
    # -- the start block: products, Rayleigh quotients, orthonormal basis with its products --------
    HR = op.matmat(raw)
    norms2 = (raw * raw).sum(1)
    start_rayleigh = ((raw * HR).sum(1) / norms2.clamp_min(1e-300)).cpu().double().numpy()
    if raw.shape[0] == 1:  # one start vector (a cold start, a top-1 warm probe): no SVD needed
        s0 = torch.linalg.vector_norm(raw[0])
        if not bool(s0 > 0):
            raise ValueError("start vectors must not all be zero")
        Y, HY = raw / s0, HR / s0
    else:
        U, S, Vh = _wide_svd(raw)
        # Directions the block hardly spans would amplify the products' rounding by S[0] / S[i]: drop them.
        keep = S > S[0] * math.sqrt(eps)
        Y = Vh[keep]
        HY = (U[:, keep] / S[keep]).T @ HR
    p = Y.shape[0]
    cap = min(P, max_basis if max_basis is not None else p + max_iter)
    V = Y.new_empty(max(cap, p), P)
    V[:p] = Y
    h = HY @ Y.T
    R = HY - h @ Y
    h2 = R @ Y.T
    R -= h2 @ Y
    T = np.zeros((V.shape[0], V.shape[0]))
    hs = (h + h2).cpu().double().numpy()
    T[:p, :p] = 0.5 * (hs + hs.T)
    if p == 1:  # R = |R| (R / |R|): one open direction, the next Lanczos vector
        UR, SR, VhR = R.new_ones(1, 1), torch.linalg.vector_norm(R, dim=1), R / torch.linalg.vector_norm(R)
    else:
        UR, SR, VhR = _wide_svd(R)
    top_t = abs(float(T[0, 0])) if p == 1 else float(np.abs(np.linalg.eigvalsh(T[:p, :p])).max())
    anorm = top_t + float(SR[0])  # ||T|| + ||R||
    tiny = 10.0 * eps * max(anorm, 1e-300)  # a residual below this is rounding: the subspace is invariant
    r = int((SR > tiny).sum())  # R = C^T F, F orthonormal rows spanning R's rows above tiny
    F, C = VhR[:r], (UR[:, :r] * SR[:r]).T.cpu().double().numpy()
    m, products, restarts = p, p, 0
    converged = False
    sqrt_tol = math.sqrt(tol)
    while True:
        theta, Sm = _eigh(T[:m, :m])
        top, bottom = _pick(m, k, which)
        idx = np.concatenate([top, bottom])
        RC_all = C @ Sm  # [r, m]: every Ritz pair's residual coefficients
        res_all = np.sqrt((RC_all * RC_all).sum(0)) if RC_all.shape[0] else np.zeros(m)
        RC, res = RC_all[:, idx], res_all[idx]
        scale = float(np.abs(theta).max())
        invariant = C.shape[0] == 0 or m == P
        testing = (tol > 0 and min(m, P) >= need and products >= first_test
                   and products % _check_interval(m) == 0)
        bounds = _error_bounds(theta, idx, res_all)
        if invariant or testing or products >= max_iter:
            small = bool((bounds <= tol * scale).all()) and bool((res <= sqrt_tol * scale).all())
            if invariant or (testing and small):
                converged = True
                break
            if products >= max_iter:
                break
        if max_basis is not None and m >= max_basis:  # thick restart: no product spent
            want = idx.size
            kept = _nearest(m, min(m - 1, want + max(1, (max_basis - want) // 2)), which)
            Sk = Sm[:, kept]
            V[: kept.size] = torch.from_numpy(Sk.T.copy()).to(V) @ V[:m]
            m = kept.size
            T[:] = 0.0
            T[:m, :m] = np.diag(theta[kept])
            C = C @ Sk
            restarts += 1
            continue
        # Expand by the residual direction of the least converged wanted pair.
        if C.shape[0] == 1:  # one open direction (plain Lanczos): it is the next vector, already
            # orthonormal to V (two Gram-Schmidt passes made it); no choice, no reflector
            t, coupling = F[0], C[0]
            F, C = F[:0], C[:0]
        else:
            t, coupling, F, C = _expand(V[:m], F, C, RC, bounds / max(tol * scale, 1e-300)
                                        + res / max(sqrt_tol * scale, 1e-300))
        V[m] = t
        w = op(t)  # checkpoint
        products += 1
        hh = V[: m + 1] @ w
        w = w - hh @ V[: m + 1]
        hh2 = V[: m + 1] @ w
        w = w - hh2 @ V[: m + 1]
        T[m, :m] = T[:m, m] = coupling
        T[m, m] = float(hh[m] + hh2[m])
        if F.shape[0]:
            o_t = F @ w
            w = w - o_t @ F
            o2 = F @ w
            w = w - o2 @ F
            o = (o_t + o2).cpu().double().numpy()
        else:
            o = np.zeros(0)
        b = float(torch.linalg.vector_norm(w))
        anorm = max(anorm, abs(float(T[m, m])) + b + float(np.abs(coupling).sum()))
        C = np.concatenate([C, o[:, None]], 1)
        if b > 10.0 * eps * max(anorm, 1e-300):  # else: H t stays in the subspace
            F = torch.cat([F, (w / b)[None]])
            last = np.zeros((1, m + 1))
            last[0, m] = b
            C = np.concatenate([C, last])
        m += 1

    bounds_top = _error_bounds(theta, top, res_all)
    bounds_bottom = _error_bounds(theta, bottom, res_all)
    top_vectors = bottom_vectors = warm_vectors = None
    verified_top = verified_bottom = None
    if ritz_vectors or verify:
        S_all = torch.from_numpy(Sm).to(V)
        top_vectors = S_all[:, torch.from_numpy(top)].T @ V[:m]
        bottom_vectors = S_all[:, torch.from_numpy(bottom)].T @ V[:m] if bottom.size else V[:0]
        if verify:
            verified_top = _true_residuals(op, top_vectors, theta[top])
            verified_bottom = _true_residuals(op, bottom_vectors, theta[bottom])
        if ritz_vectors:
            near = _nearest(m, idx.size + guard, which)
            warm_vectors = _power_step(S_all[:, torch.from_numpy(near)].T @ V[:m], theta[near],
                                       C @ Sm[:, near], F, which)
        else:
            top_vectors = bottom_vectors = None
    return LanczosResult(
        top=theta[top], bottom=theta[bottom], top_residuals=res[: top.size],
        bottom_residuals=res[top.size:], top_error_bounds=bounds_top,
        bottom_error_bounds=bounds_bottom, top_vectors=top_vectors, bottom_vectors=bottom_vectors,
        verified_top_residuals=verified_top, verified_bottom_residuals=verified_bottom,
        ritz_values=theta, projection=T[:m, :m].copy(), iterations=products,
        converged=converged, hvps=meter.hvps, seconds=meter.seconds, restarts=restarts,
        start_rayleigh=start_rayleigh, warm_vectors=warm_vectors)


def _power_step(Y: torch.Tensor, theta: np.ndarray, RC: np.ndarray, F: torch.Tensor,
                which: Which) -> torch.Tensor:
    r"""Ritz vectors ``Y [n, P]`` of the top values each moved one power step, :math:`y' = H y /
    \theta = y + r / \theta`, without a product: the residual :math:`r = H y - \theta y = F^\top C s`
    is read off the Krylov decomposition (``RC = C s``). The step scales each eigen-component of
    ``y`` by :math:`\lambda_i / \theta`: it adds the open direction ``F`` that the basis has not
    taken in, damping the rest of the spectrum where it lies well below ``theta`` in magnitude (a
    warm start's error). Along the digits-MLP run of benchmarks/hessian.py (sharpness every step,
    tol 1e-3) warm probes need 2.07 products instead of 2.58, and past the first ~40 steps mostly
    one. Bottom values and values <= 0 keep their Ritz vectors (a step there would grow the top)."""
    if which != "top" or F.shape[0] == 0 or not (theta > 0).any():
        return Y
    scale = torch.from_numpy(np.where(theta > 0, 1.0 / np.where(theta > 0, theta, 1.0), 0.0)).to(Y)
    return Y + scale[:, None] * (torch.from_numpy(RC.T.copy()).to(F) @ F).to(Y)


def _expand(V: torch.Tensor, F: torch.Tensor, C: np.ndarray, RC: np.ndarray,
            lag: np.ndarray) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, np.ndarray]:
    """The next basis vector of a block Krylov decomposition (several open directions ``F``): the
    residual direction of the least converged wanted pair (``lag``: its bounds over their targets),
    its coupling ``T[m, :m]`` and the open directions left (the complement of the chosen one: a
    Householder reflector's columns but the first, which is ``-sign(c_0) c``)."""
    c = RC[:, int(np.argmax(lag))]
    if float(np.linalg.norm(c)) <= 1e-12 * float(np.linalg.norm(C)):
        # the wanted pairs have (numerically) converged: go on along the largest open direction
        c = np.zeros(C.shape[0])
        c[int(np.linalg.norm(C, axis=1).argmax())] = 1.0
    c = c / np.linalg.norm(c)
    t = torch.from_numpy(c).to(F) @ F
    t = t - (V @ t) @ V  # t is orthogonal to V in exact arithmetic; keep it so
    t = t / torch.linalg.vector_norm(t)
    coupling = c @ C  # T[m, :m]: the part of H V^T that t now captures
    hv = c.copy()
    hv[0] += math.copysign(1.0, c[0])
    rest = (np.eye(c.size) - (2.0 / float(hv @ hv)) * np.outer(hv, hv))[:, 1:]
    return t, coupling, torch.from_numpy(rest.T.copy()).to(F) @ F, rest.T @ C


def _wide_svd(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``A = U diag(S) Vh`` of a wide ``[p, P]`` block through the QR of ``A^T`` and the SVD
    of its ``p x p`` factor (Chan's R-SVD): ~25 us against ~130 us for ``torch.linalg.svd`` at
    ``2 x 4,810`` on one CPU thread, twice per probe."""
    Q, Rr = torch.linalg.qr(A.T)
    U, S, W = torch.linalg.svd(Rr.T)
    return U, S, W @ Q.T


def _eigh(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecomposition of a small symmetric matrix: numpy's below 24 x 24 (less call overhead:
    a probe's few products), torch's above (2x faster than numpy's at 100 x 100 on one thread)."""
    if T.shape[0] < 24:
        return np.linalg.eigh(T)
    w, S = torch.linalg.eigh(torch.from_numpy(T))
    return w.numpy(), S.numpy()


def _nearest(m: int, n: int, which: Which) -> np.ndarray:
    """Indices (into ``m`` ascending Ritz values) of the ``n`` nearest the wanted end(s)."""
    n = min(n, m)
    if which == "top":
        return np.arange(m - 1, m - 1 - n, -1)
    if which == "bottom":
        return np.arange(n)
    lo = n // 2
    return np.concatenate([np.arange(m - 1, m - 1 - (n - lo), -1), np.arange(lo)])


def _plain_lanczos(op: HVP, k: int, which: Which, q: torch.Tensor, ritz_vectors: bool, tol: float,
                   max_iter: int, verify: bool, dtype: torch.dtype, first_test: int = 0) -> LanczosResult:
    """The bare three-term recurrence (no reorthogonalization; ghosts appear once values converge)."""
    meter = _Meter(op)
    P = op.dim
    need = min(P, 2 * k if which == "both" else k)
    keep_basis = ritz_vectors or verify
    q = q / torch.linalg.vector_norm(q)
    basis = _Basis(q, capacity=min(max_iter + 1, 64)) if keep_basis else None
    q_prev = torch.zeros_like(q)
    alpha: list[float] = []
    beta: list[float] = []
    eps = max(float(torch.finfo(dtype).eps), _operator_eps(op))
    anorm = 0.0
    converged = False
    start_rayleigh = np.zeros(1)
    for j in range(max_iter):
        w = op(q)  # checkpoint
        a = float(q @ w)
        if j == 0:
            start_rayleigh[0] = a
        w = w - a * q - (beta[-1] * q_prev if beta else 0.0)
        b = float(torch.linalg.vector_norm(w))
        alpha.append(a)
        beta.append(b)
        anorm = max(anorm, abs(a) + b + (beta[-2] if len(beta) > 1 else 0.0))  # >= ||T|| (Gershgorin)
        m = j + 1
        invariant = b <= 10.0 * eps * max(anorm, 1e-300) * math.sqrt(P)
        testing = tol > 0 and m >= max(need, first_test) and m % _check_interval(m) == 0
        if invariant or testing or m == max_iter:
            theta, S = _eigh(_tridiagonal(alpha, beta))
            top, bottom = _pick(m, k, which)
            idx = np.concatenate([top, bottom])
            res_all = b * np.abs(S[-1])
            res = res_all[idx]
            scale = float(np.abs(theta).max())
            small = bool((_error_bounds(theta, idx, res_all) <= tol * scale).all())
            small = small and bool((res <= math.sqrt(tol) * scale).all())
            if invariant or (testing and small):
                converged = True
                break
            if m == max_iter:
                break
        q_prev = q
        q = w / b
        if basis is not None:
            basis.append(q)

    m = len(alpha)
    b = beta[-1]
    res_top, res_bottom = b * np.abs(S[-1, top]), b * np.abs(S[-1, bottom])
    top_vectors = bottom_vectors = None
    verified_top = verified_bottom = None
    if ritz_vectors or verify:
        Q = basis.matrix()[:m]
        top_vectors = torch.from_numpy(S[:, top].T.copy()).to(Q) @ Q
        bottom_vectors = torch.from_numpy(S[:, bottom].T.copy()).to(Q) @ Q
        if verify:
            verified_top = _true_residuals(op, top_vectors, theta[top])
            verified_bottom = _true_residuals(op, bottom_vectors, theta[bottom])
        if not ritz_vectors:
            top_vectors = bottom_vectors = None
    return LanczosResult(
        top=theta[top], bottom=theta[bottom], top_residuals=res_top,
        bottom_residuals=res_bottom, top_error_bounds=_error_bounds(theta, top, res_all),
        bottom_error_bounds=_error_bounds(theta, bottom, res_all), top_vectors=top_vectors,
        bottom_vectors=bottom_vectors, verified_top_residuals=verified_top,
        verified_bottom_residuals=verified_bottom, ritz_values=theta,
        projection=_tridiagonal(alpha, beta), iterations=m, converged=converged, hvps=meter.hvps,
        seconds=meter.seconds, start_rayleigh=start_rayleigh,
        warm_vectors=top_vectors if ritz_vectors else None)


def _true_residuals(op: HVP, Y: torch.Tensor, theta: np.ndarray) -> np.ndarray:
    if Y.shape[0] == 0:
        return np.zeros(0)
    HY = op.matmat(Y)
    values = torch.from_numpy(np.array(theta, dtype=np.float64)).to(Y)
    return torch.linalg.vector_norm(HY - values[:, None] * Y, dim=1).cpu().numpy()


class _Basis:
    """A growing row matrix of orthonormal vectors (doubling capacity; no list re-stacking)."""

    def __init__(self, q: torch.Tensor, capacity: int) -> None:
        self._data = q.new_empty(max(capacity, 1), q.numel())
        self._data[0] = q
        self.n = 1

    def append(self, q: torch.Tensor) -> None:
        if self.n == self._data.shape[0]:
            grown = self._data.new_empty(2 * self.n, self._data.shape[1])
            grown[: self.n] = self._data
            self._data = grown
        self._data[self.n] = q
        self.n += 1

    def matrix(self) -> torch.Tensor:
        return self._data[: self.n]


# --------------------------------------------------------------------------------------------------
# Power iteration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PowerResult:
    """The dominant (largest-magnitude, signed) eigenvalue, its vector and residual ``||Hv - value v||``."""

    value: float
    vector: torch.Tensor
    residual: float
    iterations: int
    converged: bool
    hvps: int
    seconds: float


def power_iteration(op: HVP, *, tol: float = 1e-4, max_iter: int = 1000,
                    generator: torch.Generator | None = None) -> PowerResult:
    """Power iteration for the eigenvalue of largest magnitude (``lambda_max`` when ``H`` is PSD-ish).

    Stops when the residual ``||H v - theta v|| <= tol * |theta|``; the eigenvalue's error is then
    at most ``tol |theta|`` and about ``(tol theta)^2 / gap``. One HVP per iteration.
    """
    meter = _Meter(op)
    v = _randn(1, op, _generator(generator))[0]
    v = v / torch.linalg.vector_norm(v)
    theta, res, converged, iterations = 0.0, math.inf, False, 0
    while iterations < max_iter:
        iterations += 1
        w = op(v)  # checkpoint
        theta = float(v @ w)
        res = float(torch.linalg.vector_norm(w - theta * v))
        if res <= tol * abs(theta):
            converged = True
            break
        norm = torch.linalg.vector_norm(w)
        if norm == 0:  # H v == 0: v is an exact eigenvector with eigenvalue 0
            converged, res = True, 0.0
            break
        v = w / norm
    return PowerResult(value=theta, vector=v, residual=res, iterations=iterations, converged=converged,
                       hvps=meter.hvps, seconds=meter.seconds)


# --------------------------------------------------------------------------------------------------
# Stochastic Lanczos quadrature
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class SpectralDensity:
    r"""SLQ quadrature: per probe ``i``, nodes ``theta_{ij}`` (Ritz values) and weights ``w_{ij}``
    (squared first components of the tridiagonal's eigenvectors, summing to 1).

    ``(1/n) sum_ij w_ij delta(t - theta_ij)`` estimates the spectral density
    ``(1/P) sum_k delta(t - lambda_k)``; ``moment(j)`` estimates ``tr(H^j) / P`` (exactly the
    Hutchinson estimate with normalized Rademacher probes for ``j < 2 m``). Probes that broke down
    early (invariant Krylov space) have trailing zero weights.
    """

    nodes: np.ndarray  # [n_probes, m]
    weights: np.ndarray  # [n_probes, m]
    iterations: int
    hvps: int
    seconds: float

    def moment(self, j: int) -> float:
        return float((self.weights * self.nodes**j).sum(axis=1).mean())

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        return density_on_grid(self.nodes, self.weights, grid, sigma)


def spectral_density(op: HVP, n_probes: int = 10, m: int = 80, *, generator: torch.Generator,
                     reorthogonalize: bool = False) -> SpectralDensity:
    """Stochastic Lanczos quadrature with ``n_probes`` Rademacher probes and ``m`` Lanczos steps each.

    All probes advance together: each step is one block of ``n_probes`` HVPs (looped: on CPU a
    vmapped block costs 1.3-1.5x a loop per vector, measured in ``benchmarks/hessian.py``) and the
    recurrence runs in float64 whatever the operator's dtype. ``m`` is capped at ``P``.

    ``reorthogonalize=False`` (default) runs the bare three-term recurrence: quadrature from Lanczos
    in floating point keeps its moments and density even after orthogonality is lost (Greenbaum
    1989; Ubaru, Chen & Saad 2017): ghost copies of converged extreme eigenvalues appear as nodes
    and share the weight of the eigenvalue they copy. Measured on the digits MLP (10 probes x 100
    steps) the moments agree with full reorthogonalization to 1e-12, while the two Gram-Schmidt
    passes against each probe's growing basis cost ~30% on top of the HVPs. ``True`` keeps that
    basis (``n_probes x m x P`` floats) and removes the ghosts.
    """
    if n_probes < 1 or m < 1:
        raise ValueError(f"n_probes and m must be >= 1, got {n_probes}, {m}")
    meter = _Meter(op)
    P = op.dim
    m = min(m, P)
    n = n_probes
    q = _rademacher(n, op, generator) / math.sqrt(P)
    Q = None
    if reorthogonalize:
        Q = torch.zeros(n, m, P, dtype=torch.float64, device=op.device)
        Q[:, 0] = q
    alpha = torch.zeros(n, m, dtype=torch.float64)
    beta = torch.zeros(n, m, dtype=torch.float64)
    length = torch.full((n,), m, dtype=torch.long)  # Lanczos steps that count, per probe
    active = torch.ones(n, dtype=torch.bool)
    eps = torch.finfo(torch.float64).eps
    q_prev = torch.zeros(n, P, dtype=torch.float64, device=op.device)
    for j in range(m):
        on = active.to(op.device)
        W = torch.zeros_like(q)
        W[on] = op.matmat(q[on])  # finished probes cost nothing  # checkpoint
        if Q is not None:
            basis = Q[:, : j + 1]  # [n, j+1, P]
            h = torch.einsum("njp,np->nj", basis, W)
            W = W - torch.einsum("nj,njp->np", h, basis)
            h2 = torch.einsum("njp,np->nj", basis, W)
            W = W - torch.einsum("nj,njp->np", h2, basis)
            a = h[:, j] + h2[:, j]
        else:
            a = (q * W).sum(1)
            W = W - a[:, None] * q - (beta[:, j - 1, None].to(W) * q_prev if j > 0 else 0.0)
        b = torch.linalg.vector_norm(W, dim=1)
        alpha[:, j] = torch.where(active, a.cpu(), 0.0)
        anorm = alpha[:, : j + 1].abs().amax(1) + beta[:, : j + 1].amax(1) + b.cpu()
        done = active & (b.cpu() <= 10.0 * eps * anorm.clamp_min(1e-300) * math.sqrt(P))
        length[done] = j + 1
        active &= ~done
        beta[:, j] = torch.where(active, b.cpu(), 0.0)
        if not bool(active.any()):
            break
        q_prev, q = q, torch.where(active.to(op.device)[:, None], W / b.clamp_min(1e-300)[:, None], 0.0)
        if Q is not None and j + 1 < m:
            Q[:, j + 1] = q
    nodes = np.zeros((n, m))
    weights = np.zeros((n, m))
    for i in range(n):  # n small eigh's of at most m x m
        L = int(length[i])
        theta, S = _eigh(_tridiagonal(alpha[i, :L].tolist(), beta[i, :L].tolist()))
        nodes[i, :L] = theta
        weights[i, :L] = S[0] ** 2
    return SpectralDensity(nodes=nodes, weights=weights, iterations=int(length.max()), hvps=meter.hvps,
                           seconds=meter.seconds)


def density_on_grid(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-broadened density ``sum w_j N(t; theta_j, sigma^2) / sum w_j`` on ``grid``.

    ``nodes``/``weights`` of any (equal) shape, e.g. ``[n_probes, m]``; normalizing by the total
    weight averages the probes, so the result integrates to 1 over a grid covering the nodes.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    t = np.asarray(nodes, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    x = np.asarray(grid, dtype=np.float64)
    kernel = np.exp(-0.5 * ((x.reshape(-1, 1) - t[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return (kernel @ w / w.sum()).reshape(x.shape)


# --------------------------------------------------------------------------------------------------
# Traces and diagonals
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceEstimate:
    """An unbiased estimate of ``tr(H)`` with its standard error (``hvps`` products spent)."""

    value: float
    stderr: float
    hvps: int
    seconds: float


@dataclass(frozen=True, eq=False)
class DiagonalEstimate:
    """An unbiased estimate of ``diag(H)`` (float64 tensor) with per-entry standard errors."""

    values: torch.Tensor
    stderr: torch.Tensor
    hvps: int
    seconds: float


def _quadratic_samples(op: HVP, Z: torch.Tensor, block: int) -> torch.Tensor:
    """``z_i^T H z_i`` for each row of ``Z``, products in blocks of ``block`` rows."""
    out = []
    for start in range(0, Z.shape[0], block):
        Zb = Z[start: start + block]
        out.append((Zb * op.matmat(Zb)).sum(1))  # checkpoint (one per block)
    return torch.cat(out)


def _mean_stderr(samples: torch.Tensor) -> tuple[float, float]:
    n = samples.numel()
    mean = float(samples.mean())
    return mean, (float(samples.std(correction=1)) / math.sqrt(n) if n > 1 else math.inf)


def hutchinson_trace(op: HVP, n: int, generator: torch.Generator, *, block: int = 32) -> TraceEstimate:
    """Hutchinson's estimator ``mean z^T H z`` over ``n`` Rademacher probes; stderr from their spread."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    meter = _Meter(op)
    samples = _quadratic_samples(op, _rademacher(n, op, generator), block)
    value, stderr = _mean_stderr(samples)
    return TraceEstimate(value=value, stderr=stderr, hvps=meter.hvps, seconds=meter.seconds)


def hutchpp_trace(op: HVP, n_matvecs: int, generator: torch.Generator, *, block: int = 32) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with ``n_matvecs`` products in all.

    A third sketches the range, ``Q = qr(H S)``, and ``tr(Q^T H Q)`` is taken exactly (another
    third); Hutchinson estimates the trace of the deflated ``(I-QQ^T) H (I-QQ^T)`` with the rest.
    The standard error is the Hutchinson part's, conditional on the sketch. For a decaying spectrum
    it needs O(1/eps) products against Hutchinson's O(1/eps^2).
    """
    if n_matvecs < 3:
        raise ValueError(f"n_matvecs must be >= 3, got {n_matvecs}")
    meter = _Meter(op)
    s = n_matvecs // 3
    n_h = n_matvecs - 2 * s
    S = _rademacher(s, op, generator)
    HS = _blocked(op, S, block)
    Q = torch.linalg.qr(HS.T).Q  # [P, s]
    exact = float((Q * _blocked(op, Q.T, block).T).sum())
    G = _rademacher(n_h, op, generator)
    G = G - (G @ Q) @ Q.T
    samples = _quadratic_samples(op, G, block)
    rest, stderr = _mean_stderr(samples)
    return TraceEstimate(value=exact + rest, stderr=stderr, hvps=meter.hvps, seconds=meter.seconds)


def _blocked(op: HVP, V: torch.Tensor, block: int) -> torch.Tensor:
    return torch.cat([op.matmat(V[i: i + block])  # checkpoint (one per block)
                      for i in range(0, V.shape[0], block)])


def hutchinson_diagonal(op: HVP, n: int, generator: torch.Generator, *, block: int = 32) -> DiagonalEstimate:
    """``diag(H) ~ mean z * (H z)`` over ``n`` Rademacher probes (Bekas et al. 2007)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    meter = _Meter(op)
    total = torch.zeros(op.dim, dtype=torch.float64, device=op.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, n, block):
        Z = _rademacher(min(block, n - start), op, generator)
        D = Z * op.matmat(Z)  # checkpoint (one per block)
        total += D.sum(0)
        total_sq += (D**2).sum(0)
    mean = total / n
    if n > 1:
        stderr = ((total_sq - n * mean**2).clamp_min(0) / (n - 1) / n).sqrt()
    else:
        stderr = torch.full_like(mean, math.inf)
    return DiagonalEstimate(values=mean, stderr=stderr, hvps=meter.hvps, seconds=meter.seconds)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def directional_curvature(op: HVP, v: torch.Tensor) -> float | np.ndarray:
    """``v^T H v / |v|^2`` for one direction ``v [P]`` (a float) or each row of ``V [k, P]`` (an array)."""
    V = v.detach().to(device=op.device, dtype=torch.float64)
    single = V.dim() == 1
    V = V.reshape(-1, op.dim)
    curv = ((V * op.matmat(V)).sum(1) / (V * V).sum(1)).cpu().numpy()
    return float(curv[0]) if single else curv


def dense_hessian(f: Closure, x: torch.Tensor, *, max_dim: int = 5000) -> torch.Tensor:
    """The full ``[P, P]`` Hessian of ``f`` at ``x`` in float64 (symmetrized), for tiny problems.

    ``f`` is evaluated at a float64 copy of ``x``, so it must accept float64 input.
    """
    if x.numel() > max_dim:
        raise ValueError(f"dense_hessian is for small problems: P={x.numel()} > max_dim={max_dim}")
    x64 = x.detach().reshape(-1).to(torch.float64)
    H = torch.autograd.functional.hessian(lambda t: _scalar(f(t)), x64)
    return 0.5 * (H + H.T)
