"""PyHessian (Yao et al. 2020, ``pip install pyhessian``) behind one door, for comparisons.

The only module that imports ``pyhessian``. It works on an ``nn.Module`` plus one full batch
``(X, y)`` (PyHessian's own interface), not on the flat closure of :mod:`engine.curvature`, and
repairs what PyHessian 0.1 gets wrong on current torch:

- it calls ``model.eval()`` and never restores the mode: we restore ``model.training``;
- it runs ``loss.backward(create_graph=True)``, leaving graph-attached ``.grad`` tensors (a
  reference cycle that leaks) and adding to any ``.grad`` already there: we stash the caller's
  ``.grad`` before and put it back after, so the graph is freed;
- ``density()`` calls ``torch.eig``, removed from torch: while it runs, the ``torch`` name inside
  ``pyhessian.hessian`` points at a proxy whose ``eig`` is an ``eigh``-based shim (the matrix is a
  symmetric tridiagonal, so ``eigh`` is the right solver anyway). torch itself is never patched;
- it draws its random vectors from torch's global generator: we run it under
  ``torch.random.fork_rng`` seeded by ``seed``, so the caller's global RNG state is untouched.

HVPs are counted by wrapping PyHessian's ``hessian_vector_product`` for the duration of a call.
These patches are module globals: do not call the adapter from two threads at once.
PyHessian's sources are GPL-3.0 (its metadata says MIT); it is used as a dependency, never copied.
"""

from __future__ import annotations

import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyhessian  # noqa: F401  (registers the pyhessian.hessian submodule)
import torch
from torch import nn

from engine.curvature import SpectralDensity, TraceEstimate

# ``import pyhessian.hessian`` yields the *class* (the package re-exports it under the module's
# name), so reach the module itself through sys.modules.
_MODULE = sys.modules["pyhessian.hessian"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["PyHessianEigenvalues", "pyhessian_density", "pyhessian_top_eigenvalues", "pyhessian_trace"]


@dataclass(frozen=True, eq=False)
class PyHessianEigenvalues:
    """PyHessian's top eigenvalues (largest magnitude first, power iteration with deflation)."""

    values: np.ndarray
    hvps: int
    seconds: float


def _eig_shim(T: torch.Tensor, eigenvectors: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The removed ``torch.eig`` for a symmetric matrix: ``([n, 2] real/imag values, vectors)``."""
    w, V = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], dim=1), (V if eigenvectors else T.new_empty(0))


class _TorchWithEig:
    """``torch`` for PyHessian's module namespace, plus the ``eig`` it still calls."""

    eig = staticmethod(_eig_shim)

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


class _Counter:
    def __init__(self) -> None:
        self.hvps = 0


@contextlib.contextmanager
def _session(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor,
             seed: int) -> Iterator[tuple[Any, _Counter]]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    saved_grads = [p.grad for p in params]
    was_training = model.training
    counter = _Counter()
    original_hvp = _MODULE.hessian_vector_product
    original_torch = _MODULE.torch

    def counted_hvp(gradsH: Any, params_: Any, v: Any) -> Any:
        counter.hvps += 1
        return original_hvp(gradsH, params_, v)

    for p in params:
        p.grad = None  # PyHessian reads .grad after its backward: start from nothing
    cuda = params[0].is_cuda
    try:
        with torch.random.fork_rng(devices=[params[0].device] if cuda else []):
            torch.manual_seed(seed)
            _MODULE.hessian_vector_product = counted_hvp
            _MODULE.torch = _TorchWithEig()
            with warnings.catch_warnings():  # its backward(create_graph=True) cycle: broken below
                warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
                h = _MODULE.hessian(model, loss_fn, data=(X, y), cuda=cuda)
            yield h, counter
    finally:
        _MODULE.hessian_vector_product = original_hvp
        _MODULE.torch = original_torch
        for p, g in zip(params, saved_grads, strict=True):
            p.grad = g  # drops PyHessian's graph-attached gradients (and the cycle through them)
        model.train(was_training)


def pyhessian_top_eigenvalues(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor,
                              top_n: int = 1, *, max_iter: int = 100, tol: float = 1e-3,
                              seed: int = 0) -> PyHessianEigenvalues:
    """``hessian(...).eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)`` (PyHessian defaults).

    ``tol`` bounds the relative change between consecutive power-iteration estimates, not the error.
    """
    t0 = time.perf_counter()
    with _session(model, loss_fn, X, y, seed) as (h, counter):
        values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
    return PyHessianEigenvalues(values=np.asarray(values, dtype=np.float64), hvps=counter.hvps,
                                seconds=time.perf_counter() - t0)


def pyhessian_trace(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, *,
                    max_iter: int = 100, tol: float = 1e-3, seed: int = 0) -> TraceEstimate:
    """PyHessian's Hutchinson trace (stops when the running mean changes by < ``tol`` relative).

    The standard error is computed here from its samples; its stopping rule is not an error bound.
    """
    t0 = time.perf_counter()
    with _session(model, loss_fn, X, y, seed) as (h, counter):
        samples = np.asarray(h.trace(maxIter=max_iter, tol=tol), dtype=np.float64)
    stderr = float(samples.std(ddof=1) / np.sqrt(samples.size)) if samples.size > 1 else float("inf")
    return TraceEstimate(value=float(samples.mean()), stderr=stderr, hvps=counter.hvps,
                         seconds=time.perf_counter() - t0)


def pyhessian_density(model: nn.Module, loss_fn: LossFn, X: torch.Tensor, y: torch.Tensor, *,
                      n_probes: int = 1, iterations: int = 100, seed: int = 0) -> SpectralDensity:
    """PyHessian's SLQ ``density(iter=iterations, n_v=n_probes)``, with the ``torch.eig`` shim."""
    t0 = time.perf_counter()
    with _session(model, loss_fn, X, y, seed) as (h, counter):
        nodes, weights = h.density(iter=iterations, n_v=n_probes)
    return SpectralDensity(nodes=np.asarray(nodes, dtype=np.float64),
                           weights=np.asarray(weights, dtype=np.float64), iterations=iterations,
                           hvps=counter.hvps, seconds=time.perf_counter() - t0)
