r"""Curvature of a scalar function at a point, built on one Hessian-vector product.

Everything here takes a closure ``f: Tensor[P] -> scalar`` and a point ``x`` (a 2-D landscape is
``f = lambda t: problem.loss(t[None])[0]``; a network's flat view is
``f = lambda theta: problem.loss(theta[None], batch)[0]``), wraps them in an :class:`HVP` operator
and feeds that operator to the estimators:

- :func:`lanczos` — extreme eigenvalues with residuals (full reorthogonalization by default);
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
Randomness only ever comes from an explicit ``torch.Generator``.

Why the default HVP route is reverse-over-reverse on a cached gradient graph: measured on the
64-64-10 digits MLP (4,810 parameters, full batch, one CPU thread) one product costs ~1.1x a
gradient (float64; ~0.8x float32); ``torch.func`` forward-over-reverse (``jvp`` of ``grad``)
costs ~3.8x (~2.4x under ``vmap``); and ``is_grads_batched=True`` (vmap over the backward pass)
costs ~2x a looped product per vector. So blocks are looped by default (``batched=True`` is an
option, with a fallback to the loop for ops without a batching rule).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
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
    no cached graph; ``f`` must be a pure function of its argument).

    ``batched=True`` evaluates a block ``V [k, P]`` in one call (``is_grads_batched`` /
    ``torch.func.vmap``); it falls back to a loop, with a warning, where an op has no batching
    rule. The operator counts products (a block of ``k`` counts ``k``) in :attr:`hvps` and the time
    spent in them in :attr:`seconds`. The input ``x`` is never modified or attached to a graph.
    """

    def __init__(self, f: Closure, x: torch.Tensor, *, route: Literal["reverse", "forward"] = "reverse",
                 batched: bool = False) -> None:
        if route not in ("reverse", "forward"):
            raise ValueError(f"route must be 'reverse' or 'forward', got {route!r}")
        if x.dim() != 1:
            raise ValueError(f"x must be a flat vector [P], got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        self.route = route
        self.batched = batched
        self.x = x.detach().clone()
        self.dim = self.x.numel()
        self.dtype = self.x.dtype
        self.device = self.x.device
        self.hvps = 0
        self.seconds = 0.0
        t0 = time.perf_counter()
        with torch.enable_grad():
            if route == "reverse":
                leaf = self.x.clone().requires_grad_(True)
                value = _scalar(f(leaf))
                (g,) = torch.autograd.grad(value, leaf, create_graph=True)
                self._leaf: torch.Tensor | None = leaf
                # A gradient that does not require grad means H == 0 (f is affine in x).
                self._graph: torch.Tensor | None = g if g.requires_grad else None
                self.gradient = g.detach().clone()
            else:
                self._leaf = self._graph = None
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
        if self.route == "reverse" and self._graph is None:
            return torch.zeros_like(V)
        if self.batched and V.shape[0] > 1:
            try:
                return self._batched(V)
            except RuntimeError as err:  # an op without a batching rule: loop from now on
                warnings.warn(f"batched HVP failed ({err}); falling back to a loop", RuntimeWarning,
                              stacklevel=3)
                self.batched = False
        return torch.stack([self._one(v) for v in V])

    def _one(self, v: torch.Tensor) -> torch.Tensor:
        checkpoint()
        if self.route == "forward":
            return self._jvp(v).detach()
        (hv,) = torch.autograd.grad(self._graph, self._leaf, v, retain_graph=True, materialize_grads=True)
        return hv

    def _batched(self, V: torch.Tensor) -> torch.Tensor:
        if self.route == "forward":
            return torch.func.vmap(self._jvp)(V).detach()
        (HV,) = torch.autograd.grad(self._graph, self._leaf, V, retain_graph=True, is_grads_batched=True,
                                    materialize_grads=True)
        return HV


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
    ``*_residuals`` is the residual norm ``||H y - theta y||`` of its Ritz pair, estimated for free
    as ``|beta_m s_{m,i}|``; ``verified_*`` the same norm measured with extra HVPs (``verify=True``);
    ``*_error_bounds`` is ``min(r, r^2 / (gap - r))``, the bound on ``|theta - lambda|`` (gap: the
    distance to the nearest other Ritz value, standing in for the nearest other eigenvalue).
    ``ritz_values`` holds all ``iterations`` Ritz values (ascending), ``alpha``/``beta`` the
    tridiagonal matrix. ``converged`` says the bounds met ``tol`` (or the Krylov space became
    invariant, which makes the values exact).
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
    alpha: np.ndarray
    beta: np.ndarray
    iterations: int
    converged: bool
    hvps: int
    seconds: float


def _tridiagonal(alpha: list[float], beta: list[float]) -> torch.Tensor:
    a = torch.tensor(alpha, dtype=torch.float64)
    T = torch.diag(a)
    if len(alpha) > 1:
        b = torch.tensor(beta[: len(alpha) - 1], dtype=torch.float64)
        T += torch.diag(b, 1) + torch.diag(b, -1)
    return T


def _pick(theta: torch.Tensor, k: int, which: Which) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into ascending ``theta``) of the top-k (descending) and bottom-k (ascending) values."""
    m = theta.numel()
    k = min(k, m)
    top = torch.arange(m - 1, m - 1 - k, -1) if which in ("top", "both") else torch.arange(0)
    bottom = torch.arange(k) if which in ("bottom", "both") else torch.arange(0)
    return top, bottom


def _error_bounds(theta: torch.Tensor, idx: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """``min(r, r^2 / (gap - r))`` per selected Ritz value (the residual alone where gap <= r)."""
    if theta.numel() == 1:  # no other Ritz value, no gap estimate: only the residual bounds the error
        return res.clone()
    dist = (theta[idx, None] - theta[None, :]).abs()
    dist[torch.arange(idx.numel()), idx] = math.inf
    gap = dist.min(dim=1).values
    excess = gap - res
    return torch.where(excess > 0, torch.minimum(res, res**2 / excess.clamp_min(1e-300)), res)


def _check_interval(m: int) -> int:
    # An m x m eigh costs ~1 ms at m = 100 on one CPU thread (an MLP HVP ~3 ms): check less often then.
    return 1 if m <= 48 else 2 if m <= 96 else 4


def lanczos(op: HVP, k: int = 5, *, which: Which = "top", reorthogonalize: bool = True,
            ritz_vectors: bool = False, tol: float = 1e-10, max_iter: int | None = None,
            verify: bool = False, v0: torch.Tensor | None = None, generator: torch.Generator | None = None,
            dtype: torch.dtype = torch.float64) -> LanczosResult:
    r"""Extreme eigenvalues of ``H`` by the Lanczos iteration, stopping on its own error bounds.

    Iterates ``m = 1, 2, ...`` until every requested Ritz value has an error bound
    ``min(r, r^2 / gap) <= tol * max|theta|`` and a residual ``r <= sqrt(tol) * max|theta|``
    (relative to ``||H||`` so that eigenvalues near zero do not stall it; the residual condition
    guards against a gap overstated by Ritz values), the Krylov space becomes invariant (``beta`` ~ 0:
    exact, e.g. ``m = P`` in dimension 2), or ``m`` reaches ``max_iter`` (default
    ``min(P, 50 + 20 k)``). ``tol=0`` runs exactly ``max_iter`` steps. Fewer than ``k`` values come
    back when ``P < k``.

    ``reorthogonalize=True`` keeps the basis orthogonal to working precision (two classical
    Gram-Schmidt passes against all previous vectors, basis held in ``dtype``, float64 by default).
    ``False`` runs the bare three-term recurrence (keeping only two vectors unless Ritz vectors are
    wanted): cheaper, but once a Ritz value converges the basis loses orthogonality and *ghost*
    copies of it appear among the Ritz values; ``max_iter`` may then exceed ``P``.

    The start vector is ``v0`` or a Gaussian draw from ``generator`` (default: seed 0).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if which not in ("top", "bottom", "both"):
        raise ValueError(f"which must be 'top', 'bottom' or 'both', got {which!r}")
    meter = _Meter(op)
    P = op.dim
    max_iter = min(P, 50 + 20 * k) if max_iter is None else max_iter
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if reorthogonalize:
        max_iter = min(max_iter, P)  # a full orthonormal basis has at most P vectors
    need = min(P, 2 * k if which == "both" else k)  # Ritz values needed before testing convergence
    keep_basis = reorthogonalize or ritz_vectors or verify
    q = v0.detach().reshape(-1) if v0 is not None else _randn(1, op, _generator(generator))[0]
    q = q.to(device=op.device, dtype=dtype)
    q = q / torch.linalg.vector_norm(q)
    basis = _Basis(q, capacity=min(max_iter + 1, 64)) if keep_basis else None
    q_prev = torch.zeros_like(q)
    alpha: list[float] = []
    beta: list[float] = []
    eps = torch.finfo(dtype).eps
    anorm = 0.0
    converged = False
    for j in range(max_iter):
        w = op(q)
        if reorthogonalize:
            Q = basis.matrix()
            h = Q @ w
            w = w - Q.T @ h
            h2 = Q @ w
            w = w - Q.T @ h2
            a = float(h[j] + h2[j])
        else:
            a = float(q @ w)
            w = w - a * q - (beta[-1] * q_prev if beta else 0.0)
        b = float(torch.linalg.vector_norm(w))
        alpha.append(a)
        beta.append(b)
        anorm = max(anorm, abs(a) + b + (beta[-2] if len(beta) > 1 else 0.0))  # >= ||T|| (Gershgorin)
        m = j + 1
        # An invariant Krylov space (always so at m == P with a full basis): the Ritz values are exact.
        invariant = b <= 10.0 * eps * max(anorm, 1e-300) * math.sqrt(P) or (reorthogonalize and m == P)
        testing = tol > 0 and m >= need and m % _check_interval(m) == 0
        if invariant or testing or m == max_iter:
            theta, S = torch.linalg.eigh(_tridiagonal(alpha, beta))
            top, bottom = _pick(theta, k, which)
            idx = torch.cat([top, bottom])
            res = b * S[-1, idx].abs()
            scale = float(theta.abs().max())
            small = bool((_error_bounds(theta, idx, res) <= tol * scale).all())
            # The gap is estimated from Ritz values, which can overstate it while r is still large
            # (unfound eigenvalues nearby): also demand r <= sqrt(tol) ||H||.
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
    res_top, res_bottom = b * S[-1, top].abs(), b * S[-1, bottom].abs()
    top_vectors = bottom_vectors = None
    verified_top = verified_bottom = None
    if ritz_vectors or verify:
        Q = basis.matrix()[:m]
        top_vectors = S[:, top].T.to(Q) @ Q
        bottom_vectors = S[:, bottom].T.to(Q) @ Q
        if verify:
            verified_top = _true_residuals(op, top_vectors, theta[top])
            verified_bottom = _true_residuals(op, bottom_vectors, theta[bottom])
        if not ritz_vectors:
            top_vectors = bottom_vectors = None
    return LanczosResult(
        top=theta[top].numpy(), bottom=theta[bottom].numpy(), top_residuals=res_top.numpy(),
        bottom_residuals=res_bottom.numpy(), top_error_bounds=_error_bounds(theta, top, res_top).numpy(),
        bottom_error_bounds=_error_bounds(theta, bottom, res_bottom).numpy(), top_vectors=top_vectors,
        bottom_vectors=bottom_vectors, verified_top_residuals=verified_top,
        verified_bottom_residuals=verified_bottom, ritz_values=theta.numpy(), alpha=np.array(alpha),
        beta=np.array(beta), iterations=m, converged=converged, hvps=meter.hvps, seconds=meter.seconds)


def _true_residuals(op: HVP, Y: torch.Tensor, theta: torch.Tensor) -> np.ndarray:
    if Y.shape[0] == 0:
        return np.zeros(0)
    HY = op.matmat(Y)
    return torch.linalg.vector_norm(HY - theta.to(Y)[:, None] * Y, dim=1).cpu().numpy()


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
        w = op(v)
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
                     reorthogonalize: bool = True) -> SpectralDensity:
    """Stochastic Lanczos quadrature with ``n_probes`` Rademacher probes and ``m`` Lanczos steps each.

    All probes advance together: each step is one block of ``n_probes`` HVPs and batched
    (two-pass) Gram-Schmidt against each probe's own float64 basis. ``m`` is capped at ``P``.
    """
    if n_probes < 1 or m < 1:
        raise ValueError(f"n_probes and m must be >= 1, got {n_probes}, {m}")
    meter = _Meter(op)
    P = op.dim
    m = min(m, P)
    n = n_probes
    Q = torch.zeros(n, m, P, dtype=torch.float64, device=op.device)
    Q[:, 0] = _rademacher(n, op, generator) / math.sqrt(P)
    alpha = torch.zeros(n, m, dtype=torch.float64)
    beta = torch.zeros(n, m, dtype=torch.float64)
    length = torch.full((n,), m, dtype=torch.long)  # Lanczos steps that count, per probe
    active = torch.ones(n, dtype=torch.bool)
    eps = torch.finfo(torch.float64).eps
    q_prev = torch.zeros(n, P, dtype=torch.float64, device=op.device)
    for j in range(m):
        q = Q[:, j]
        W = torch.zeros_like(q)
        W[active.to(op.device)] = op.matmat(q[active.to(op.device)])  # finished probes cost nothing
        if reorthogonalize:
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
        if j + 1 < m:
            Q[:, j + 1] = torch.where(active.to(op.device)[:, None], W / b.clamp_min(1e-300)[:, None], 0.0)
        q_prev = q
        if not bool(active.any()):
            break
    nodes = np.zeros((n, m))
    weights = np.zeros((n, m))
    for i in range(n):  # n small eigh's of at most m x m
        L = int(length[i])
        theta, S = torch.linalg.eigh(_tridiagonal(alpha[i, :L].tolist(), beta[i, :L].tolist()))
        nodes[i, :L] = theta.numpy()
        weights[i, :L] = (S[0] ** 2).numpy()
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
        out.append((Zb * op.matmat(Zb)).sum(1))
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
    return torch.cat([op.matmat(V[i: i + block]) for i in range(0, V.shape[0], block)])


def hutchinson_diagonal(op: HVP, n: int, generator: torch.Generator, *, block: int = 32) -> DiagonalEstimate:
    """``diag(H) ~ mean z * (H z)`` over ``n`` Rademacher probes (Bekas et al. 2007)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    meter = _Meter(op)
    total = torch.zeros(op.dim, dtype=torch.float64, device=op.device)
    total_sq = torch.zeros_like(total)
    for start in range(0, n, block):
        Z = _rademacher(min(block, n - start), op, generator)
        D = Z * op.matmat(Z)
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
