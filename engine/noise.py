r"""Gradient-noise instruments: what a probe (:mod:`engine.instruments`) measures about the gradient
itself, beside the curvature, at the same point :math:`x_t` and on the same schedule.

**Per-sample noise** (problems with a data set: they offer ``per_sample_grads``, computed with
``torch.func.vmap`` over ``torch.func.grad``). On the step's minibatch (or a random subset of
:math:`S` of its samples, ``ProbeConfig.noise_samples``) with per-sample gradients
:math:`g_i` and their mean :math:`\bar g`, for each parameter tensor :math:`k` (a layer's weight or
bias; the whole vector for a problem with one tensor):

* the gradient variance :math:`V_k = \operatorname{tr}\hat\Sigma_k = \frac1{S-1}\sum_i
  \lVert g_{i,k} - \bar g_k\rVert^2` (unbiased; the variance of one sample's gradient, summed over
  the tensor's entries: a minibatch of :math:`b` has :math:`V_k/b`);
* its signal-to-noise ratio :math:`\mathrm{SNR}_k = \lVert\bar g_k\rVert^2 / V_k`, the GSNR of Liu
  et al. 2020 ("Understanding Why Neural Networks Generalize Well Through GSNR of Parameters",
  :math:`\mathbb E[g]^2/\mathrm{Var}[g]` over the data) taken over the whole tensor;
* over the whole vector, the noise scale :math:`B = \operatorname{tr}\hat\Sigma/\lVert\bar g\rVert^2`
  (McCandlish et al. 2018's "simple noise scale") and the **norm test** statistic
  :math:`B/b` at the step's batch size :math:`b`: the test of Byrd et al. 2012 that AdAdaGrad (Lau,
  Liu & Kolar 2024) uses to grow the batch passes when :math:`B/b \le \vartheta^2`, and otherwise asks
  for :math:`\lceil B/\vartheta^2\rceil` samples (:class:`NormTest`, the one home of that formula:
  :func:`engine.batching.norm_test_size` calls it).

**SGD-SaI's g-SNR** (Xu et al. 2024, "No More Adam: Learning Rate Scaling at Initialization is All
You Need"): per tensor, :math:`\lVert g_k\rVert_2/(\sigma(g_k) + \epsilon)` with :math:`\sigma` the
standard deviation of the *entries* of the minibatch gradient :math:`g_k` (not a spread over
samples: the paper's and its official code's form; :func:`sai_gsnr`). SGD-SaI freezes it at the first
step as each tensor's learning-rate scale; a probe at step 0 reads the same numbers, and later
probes show whether they drift (the paper says they stay stable). It needs no data set.

**Estimate quality**: the cosine between the gradient estimate an optimizer stepped from (a
zeroth-order, sparse, coordinate-wise or ranking estimate; a clipped gradient; a first-order lane's
minibatch gradient) and

* the gradient of the loss that optimizer saw this step (its minibatch), the probe's own gradient:
  the estimator's own error (1 for an unclipped first-order lane);
* the gradient of the full objective (a network's whole training set; the same gradient for a
  deterministic problem, or a full-batch step): estimator error and minibatch noise together. For
  an SGD lane that is the minibatch / full-batch cosine.

For zeroth-order SGD with :math:`q` Gaussian directions in :math:`d` dimensions and an exact
directional derivative, :math:`\cos^2 \sim \mathrm{Beta}(q/2, (d-1)/2)`, so
:math:`\mathbb E[\cos^2] = q/(q+d-1)` (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SAI_EPS = 1e-8
"""SGD-SaI's :math:`\\epsilon` (its default), so that a probe reads the optimizer's own scales."""


@dataclass(frozen=True)
class NormTest:
    r"""The norm test's sufficient statistics from :math:`b` per-sample gradients: the spread
    :math:`\sum_i\lVert g_i - \bar g\rVert^2` and :math:`\lVert\bar g\rVert^2`."""

    spread: float
    mean_sq: float
    samples: int

    @classmethod
    def of(cls, per_sample_grads: torch.Tensor) -> NormTest:
        """From per-sample gradients ``[b, P]`` (b >= 2), in float64."""
        g = per_sample_grads.detach().double()
        b = g.shape[0]
        if b < 2:
            raise ValueError("the norm test needs at least 2 per-sample gradients")
        mean = g.mean(0)
        centered = g - mean
        return cls(float((centered * centered).sum()), float((mean * mean).sum()), b)

    @property
    def noise_scale(self) -> float:
        r""":math:`B = \operatorname{tr}\hat\Sigma / \lVert\bar g\rVert^2` (inf without signal, NaN
        when not finite)."""
        if not (math.isfinite(self.spread) and math.isfinite(self.mean_sq)):
            return math.nan
        if self.mean_sq == 0.0:
            return math.inf if self.spread > 0 else math.nan
        return self.spread / ((self.samples - 1) * self.mean_sq)

    def statistic(self, batch: int | None = None) -> float:
        r""":math:`B/b`: the test passes at batch size :math:`b` (default: the samples) when this is
        at most :math:`\vartheta^2`."""
        return self.noise_scale / (self.samples if batch is None else batch)

    def size(self, theta: float) -> int:
        r"""The batch size the test asks for, :math:`\lceil B/\vartheta^2\rceil` (it passes at the
        current size exactly when this is <= b). No signal, or a non-finite spread: no change (b)."""
        if not (math.isfinite(self.spread) and math.isfinite(self.mean_sq)) or self.mean_sq == 0.0:
            return self.samples
        return math.ceil(self.spread / ((self.samples - 1) * theta**2 * self.mean_sq))


def sai_gsnr(g: torch.Tensor, eps: float = SAI_EPS) -> float:
    r"""SGD-SaI's g-SNR of one tensor's gradient: :math:`\lVert g\rVert_2 / (\sigma(g) + \epsilon)`,
    :math:`\sigma` the unbiased standard deviation of its entries; :math:`\lVert g\rVert_2` where
    :math:`\sigma` is 0 or undefined (one entry), as :class:`engine.optimizers.adaptive.SGDSaI`."""
    g = g.detach()
    norm = g.norm()
    sigma = g.std() if g.numel() > 1 else torch.zeros_like(norm)
    ok = bool(torch.isfinite(sigma)) and float(sigma) > 0
    return float(norm / (sigma + eps)) if ok else float(norm)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """:math:`a^\\top b / (\\lVert a\\rVert\\lVert b\\rVert)` in float64, within [-1, 1] (NaN if either
    is zero or not finite)."""
    a, b = a.detach().reshape(-1).double(), b.detach().reshape(-1).to(a.device).double()
    den = float(a.norm() * b.norm())
    if not (den > 0 and math.isfinite(den)):
        return math.nan
    return min(1.0, max(-1.0, float(a @ b) / den))  # rounding can leave [-1, 1] by an ulp


@dataclass(frozen=True)
class TensorNoise:
    """Per-tensor noise from per-sample gradients (see the module docstring)."""

    variance: np.ndarray  # [K] tr Sigma_k, unbiased over the samples
    snr: np.ndarray  # [K] |mean_k|^2 / variance_k
    norm_test: NormTest  # over the whole vector


def tensor_noise(per_sample_grads: torch.Tensor, sizes: Sequence[int]) -> TensorNoise:
    """:class:`TensorNoise` of per-sample gradients ``[S, P]`` split into tensors of ``sizes``: centred
    in their own dtype (a float32 probe's), summed in float64."""
    g = per_sample_grads.detach()
    s = g.shape[0]
    if s < 2:
        raise ValueError("gradient noise needs at least 2 per-sample gradients")
    mean = g.mean(0, dtype=torch.float64)
    centered = g - mean.to(g.dtype)
    sq = (centered * centered).sum(0, dtype=torch.float64)  # [P]
    spread = np.array([float(part.sum()) for part in sq.split(list(sizes))])
    signal = np.array([float((part * part).sum()) for part in mean.split(list(sizes))])
    variance = spread / (s - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(variance > 0, signal / np.where(variance > 0, variance, 1.0),
                       np.where(signal > 0, np.inf, np.nan))
    return TensorNoise(variance, snr, NormTest(float(spread.sum()), float(signal.sum()), s))


@dataclass(frozen=True)
class NoiseReading:
    """What the noise instruments measured at one probe (``None``: not measured; ``notes`` say why)."""

    tensors: tuple[str, ...] | None = None
    grad_variance: np.ndarray | None = None
    grad_snr: np.ndarray | None = None
    gsnr: np.ndarray | None = None
    noise_scale: float | None = None
    norm_test: float | None = None
    samples: int = 0
    estimate_cosine: float | None = None
    estimate_cosine_full: float | None = None
    gradients: int = 0
    notes: Mapping[str, str] = field(default_factory=dict)


Estimate = torch.Tensor | str | None
"""An optimizer's flat gradient estimate, or why there is none."""


def tensor_layout(problem: Any, dim: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names and sizes of the problem's ``dim`` parameters as tensors (``param_names`` /
    ``param_shapes``; one tensor "x" for a flat problem)."""
    shapes = getattr(problem, "param_shapes", None)
    if not shapes:
        return ("x",), (dim,)
    sizes = tuple(math.prod(s) for s in shapes)
    names = getattr(problem, "param_names", None)
    if names is None or len(names) != len(sizes):
        names = tuple(f"tensor {k}" for k in range(len(sizes)))
    return tuple(names), sizes


def measure(problem: Any, x: torch.Tensor, batch: Any, gradient: torch.Tensor, *, noise: bool,
            samples: int, estimate_cosine: bool, estimate: Estimate, generator: torch.Generator
            ) -> NoiseReading:
    """The noise instruments a probe asked for, at ``x [P]`` (in the probe's dtype) on the step's
    minibatch ``batch``; ``gradient`` is the probe's own gradient there (its HVP operator's).

    ``noise``: SGD-SaI's g-SNR per tensor (from ``gradient``) and, where the problem offers
    per-sample gradients, their variance and SNR per tensor and the norm test, on at most
    ``samples`` samples of the minibatch (a subset drawn with ``generator``).
    ``estimate_cosine``: the cosine of ``estimate`` with ``gradient`` and with the gradient of the
    full objective (``problem.loss(x, None)``: a network's whole training set): one more gradient,
    counted in ``gradients``, when the step saw a minibatch; ``gradient`` itself when it did not."""
    names, sizes = tensor_layout(problem, x.numel())
    notes: dict[str, str] = {}
    out: dict[str, Any] = {}
    name = getattr(problem, "name", type(problem).__name__)
    if noise:
        out["tensors"] = names
        out["gsnr"] = np.array([sai_gsnr(part) for part in gradient.split(list(sizes))])
        reason = _per_sample_reason(problem, name)
        if reason is None:
            picked, b = _subset(problem, batch, samples, generator)
            if len(picked) < 2:
                notes["noise"] = f"the step's minibatch has {len(picked)} sample(s); gradient noise needs 2"
            else:
                grads = problem.per_sample_grads(x, picked)
                found = tensor_noise(grads, sizes)
                out.update(grad_variance=found.variance, grad_snr=found.snr, samples=len(picked),
                           noise_scale=found.norm_test.noise_scale, norm_test=found.norm_test.statistic(b))
        else:
            notes["noise"] = reason
    if estimate_cosine:
        if isinstance(estimate, torch.Tensor):
            out["estimate_cosine"] = cosine(estimate, gradient)
            if batch is None:  # the step's loss was the full objective (full batch, or no data set)
                out["estimate_cosine_full"] = out["estimate_cosine"]
            else:
                out["estimate_cosine_full"] = cosine(estimate, _full_gradient(problem, x))
                out["gradients"] = 1
        else:
            notes["estimate_cosine"] = estimate or "the optimizer kept no gradient estimate at this step"
    return NoiseReading(**out, notes=notes)


def _per_sample_reason(problem: Any, name: str) -> str | None:
    """Why ``problem`` has no per-sample noise (None: it has)."""
    if getattr(problem, "n_train", None) is None:
        return f"{name} has no data set: there are no per-sample gradients to take a variance over"
    if not hasattr(problem, "per_sample_grads"):
        return f"{name} offers no per-sample gradients"
    return None


def _subset(problem: Any, batch: Any, samples: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Indices of at most ``samples`` samples of the step's minibatch (``None``: the training set)
    and the minibatch's size."""
    idx = torch.arange(int(problem.n_train)) if batch is None else torch.as_tensor(batch).reshape(-1)
    b = idx.numel()
    if b > samples:
        idx = idx[torch.randperm(b, generator=generator)[:samples].to(idx.device)]
    return idx, b


def _full_gradient(problem: Any, x: torch.Tensor) -> torch.Tensor:
    """The gradient of the full objective (no minibatch: a network's whole training set) at ``x [P]``."""
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.loss(leaf[None], None)[0], leaf)
    return g
