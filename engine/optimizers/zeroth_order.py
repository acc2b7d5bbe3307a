r"""Zeroth-order, forward-gradient and ranking-oracle optimizers (closure-driven).

Every optimizer here is stepped as ``optimizer.step(oracles)`` with an
:class:`engine.oracles.Oracles` built over exactly its parameters, in order, and asks only for
what its paper allows: function values (MeZO / ZO-SGD and the ZO-Bench variants, Sparse MeZO,
DeepZero's coordinate-wise estimate), one forward-mode directional derivative (forward gradient),
or the *order* of some candidate points (ZO-RankSGD).

Randomness is a documented function of ``(seed, step, query)`` (:func:`engine.seeds.step_seed`,
with ``step`` the number of steps completed), never a stateful generator, so

* a test (or a reader) can regenerate every direction an optimizer used with
  :func:`engine.oracles.seeded_direction`;
* a ranking step that has to wait for a person (``AwaitingRanking``) draws the *same* candidates
  when it is called again, and nothing is mutated before the ranking arrives;
* a run replays bit for bit.

The SPSA family never stores :math:`z`: each perturbation is evaluated through
``oracles.perturbed_value(seed, ±ε)`` (which never writes :math:`\theta`, so parameters stay
bit-exact during evaluation) and the update regenerates :math:`z` chunk by chunk
(:func:`engine.oracles.seeded_normal`), so the extra memory of ZO-SGD is one chunk, as in MeZO.
The honest exceptions: momentum and Adam states are parameter-sized tensors (ZO-SGD-MMT,
ZO-Adam); the forward gradient needs its tangent :math:`u` in full for the JVP; the coordinate
estimate and the ranking step build their candidate points explicitly.

On a min-max game (the run's ``ascent`` mask) the estimates of :math:`\nabla f` are negated on
the maximizing coordinates, so ZO-SGD and its momentum, sign and Adam variants, Sparse MeZO, the
forward gradient and the coordinate estimate follow the descent field :math:`(\nabla_x f,
-\nabla_y f)` like first-order lanes. ZO-SGD-Cons and ZO-RankSGD compare values of :math:`f`
itself (keep the lower, rank by :math:`f`): they have no game analogue and minimize :math:`f`.

Estimate hyperparameters (``eps``, ``q``, ``sparsity``, ``mu``, ``density``, ``m``, ``k``) are
read from the first param group, because one estimate serves all parameters; update
hyperparameters (``lr``, ``weight_decay``, ``momentum``, ``betas``) are read per group. All are
read at every step, so ``OptimizerSpec.apply`` takes effect at the next step.

Every optimizer here clips its own estimate :math:`\hat g` when the run sets its ``clip``
(:class:`engine.optimizers.base.GradientEstimator`; ZO-RankSGD's paper clips ZO-SGD's estimate) and
reports the clipped fraction. Where :math:`\hat g` is materialised anyway (forward gradient,
coordinate estimate, ZO-RankSGD) :func:`engine.clipping.clip_` acts on it; the SPSA family clips
without storing it where the rule allows (see :class:`_SPSA` and :class:`ZOSGDConservative`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from engine.optimizers.base import GradientEstimator, Params, writable_flat
from engine.oracles import HUMAN, Oracles, flatten, seeded_direction, seeded_normal
from engine.seeds import step_seed
from engine.specs import (
    ADAM_BETAS,
    CLIPPED_FRACTION,
    MOMENTUM,
    Hyperparameter,
    OptimizerSpec,
    Oracle,
    Paper,
    choice,
    lr,
    weight_decay,
)


def magnitude_thresholds(params: Sequence[torch.Tensor], sparsity: float) -> list[float]:
    r"""Sparse MeZO's per-tensor thresholds :math:`\tau_l`: the :math:`k`-th smallest
    :math:`|\theta_l|` with :math:`k = \max(1, \lceil (1-s)\, n_l \rceil)`, so the mask
    :math:`1[|\theta_l| \le \tau_l]` keeps the fraction :math:`1-s` of each tensor's
    smallest-magnitude weights (more only on ties). ``sparsity`` :math:`s = 0` keeps everything."""
    out = []
    for p in params:
        a = p.detach().abs().reshape(-1)
        # - 1e-9: (1 - 0.7) * 10 is 3.0000000000000004, whose ceiling would keep a 4th weight
        k = max(1, math.ceil((1.0 - sparsity) * a.numel() - 1e-9))
        out.append(float(a.kthvalue(min(k, a.numel())).values))
    return out


class _ZerothOrder(GradientEstimator):
    """The closure-driven base with this family's label."""

    label = "zeroth-order optimizer"


# ---------------------------------------------------------------------------------- SPSA family

class _SPSA(_ZerothOrder):
    r"""The two-point randomized estimate, :math:`q` queries averaged:

    .. math:: \hat g = \frac1q \sum_{i<q} \frac{f(\theta + \epsilon z_i) - f(\theta - \epsilon z_i)}
              {2\epsilon}\, z_i, \qquad z_i = z(s_{t,i}) \sim N(0, I)

    (with a magnitude mask :math:`z_i \odot m` for Sparse MeZO), then a subclass's rule, applied
    chunk by chunk with :math:`z_i` regenerated from its seed. ``weight_decay`` :math:`\lambda`
    adds :math:`\lambda\theta` to :math:`\hat g` (coupled L2, as MeZO and ``torch.optim.SGD``).

    Clipping (:attr:`clip`, set by the run) acts on :math:`\hat g` before the decay and the rule,
    without storing :math:`\hat g` where the rule allows it:

    * ``"norm"``: one more pass regenerates :math:`\hat g` chunk by chunk for :math:`\lVert\hat
      g\rVert`, then the projected-gradient coefficients are scaled by
      :math:`\min(1, c/\lVert\hat g\rVert)`: no parameter-sized tensor, twice the draws;
    * ``"value"``: each chunk is clamped as it is regenerated for the update: nothing extra;
    * ``"coordinate"``: the threshold is the :math:`(k+1)`-th largest :math:`|\hat g_i|` over all
      :math:`P` coordinates, which needs every :math:`|\hat g_i|` at once: one extra pass
      materialises :math:`|\hat g|` (:math:`P` values, freed before the update), then each chunk is
      clamped to it. This one is not memory-lean."""

    def _thresholds(self, group: dict[str, Any]) -> list[float] | None:
        return None

    def _estimate(self, oracles: Oracles, t: int, eps: float, q: int,
                  thresholds: list[float] | None) -> tuple[list[int], list[float], torch.Tensor]:
        """Seeds, coefficients :math:`\\hat g_{\\mathrm{proj},i}/q` and the mean of the 2q values."""
        seeds, coeffs, total = [], [], None
        for i in range(q):
            s = self._seed(t, i)
            plus = oracles.perturbed_value(s, eps, thresholds)
            minus = oracles.perturbed_value(s, -eps, thresholds)
            seeds.append(s)
            coeffs.append(float(plus - minus) / (2 * eps) / q)
            total = plus + minus if total is None else total + plus + minus
        assert total is not None
        return seeds, coeffs, total / (2 * q)

    @staticmethod
    def _chunks(seeds: Sequence[int], coeffs: Sequence[float], index: int, p: torch.Tensor
                ) -> Iterator[tuple[slice, torch.Tensor]]:
        r""":math:`\sum_i c_i z_i` restricted to parameter ``index``, one chunk at a time."""
        streams = [seeded_normal(s, index, p) for s in seeds]
        for parts in zip(*streams, strict=True):
            sl = parts[0][0]
            acc = parts[0][1] * coeffs[0]
            for (_, z), c in zip(parts[1:], coeffs[1:], strict=True):
                acc.add_(z * c)
            yield sl, acc

    def _estimates(self, seeds: Sequence[int], coeffs: Sequence[float], thresholds: list[float] | None
                   ) -> Iterator[torch.Tensor]:
        r"""The chunks of :math:`\hat g = \sum_i c_i z_i \odot m` over every parameter, in order
        (for the clipping passes; the mask is fixed by :math:`\theta` before this step writes it)."""
        for j, _, p in self._indexed():
            tau = thresholds[j] if thresholds is not None else None
            flat = p.detach().reshape(-1)
            for sl, g in self._chunks(seeds, coeffs, j, p):
                yield g if tau is None else g * (flat[sl].abs() <= tau).to(g.dtype)

    def _clip_plan(self, seeds: Sequence[int], coeffs: list[float], thresholds: list[float] | None
                   ) -> tuple[list[float], float | None]:
        """:attr:`clip` as the update applies it: the coefficients (rescaled by a norm clip, whose
        clipped fraction is set here) and the bound each chunk is clamped to (None: no clamp)."""
        clip = self.clip
        if clip is None or clip.kind == "value":
            return coeffs, None if clip is None else clip.threshold
        if clip.kind == "norm":
            norm = math.sqrt(sum(float(g.square().sum()) for g in self._estimates(seeds, coeffs, thresholds)))
            scale = min(1.0, clip.threshold / norm) if 0 < norm < math.inf else 1.0
            self._clipped = float(scale < 1.0)
            return [c * scale for c in coeffs], None
        magnitudes = torch.cat([g.abs() for g in self._estimates(seeds, coeffs, thresholds)])  # [P]
        k = math.floor(clip.fraction * magnitudes.numel())
        return coeffs, float(magnitudes.topk(k + 1).values[-1]) if k else math.inf

    def _rule(self, group: dict[str, Any], state: dict[str, Any], p: torch.Tensor, sl: slice,
              theta: torch.Tensor, g: torch.Tensor, t: int) -> None:
        """Update the chunk ``theta`` (a view of ``p``) in place from the estimate chunk ``g``."""
        theta.sub_(group["lr"] * g)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> torch.Tensor:
        oracles = self._oracles(closure)
        t = self.steps
        first = self.param_groups[0]
        thresholds = self._thresholds(first)
        seeds, coeffs, loss = self._estimate(oracles, t, float(first["eps"]), int(first["q"]), thresholds)
        coeffs, bound = self._clip_plan(seeds, coeffs, thresholds)
        self._keep(lambda: [g if bound is None else g.clamp(-bound, bound)  # only for an instrument
                            for g in self._estimates(seeds, coeffs, thresholds)])
        offset = changed = 0
        for j, group, p in self._indexed():
            state = self.state[p]
            tau = thresholds[j] if thresholds is not None else None
            wd = float(group.get("weight_decay", 0.0))
            with writable_flat(p) as flat:
                for sl, g in self._chunks(seeds, coeffs, j, p):
                    theta = flat[sl]  # a view: the rule writes through it
                    mask = None if tau is None else (theta.abs() <= tau).to(theta.dtype)  # before the write
                    if mask is not None:
                        g = g * mask
                    if bound is not None:  # value or coordinate clipping of this chunk of the estimate
                        changed += int((g.abs() > bound).sum())
                        g = g.clamp(-bound, bound)
                    g = self._field(g, oracles, offset + sl.start)
                    if wd:
                        g = g + wd * theta
                    if mask is not None:  # masked-out weights never move, decay included
                        g = g * mask
                    self._rule(group, state, p, sl, theta, g, t + 1)
            offset += p.numel()
        if bound is not None:
            self._clipped = changed / offset
        self._advance()
        return loss


class ZOSGD(_SPSA):
    r"""MeZO / ZO-SGD (Malladi et al. 2023):
    :math:`\theta \leftarrow \theta - \eta\,(\hat g_{\mathrm{proj}}\, z + \lambda\theta)`, the
    SPSA estimate of :class:`_SPSA` (:math:`q` queries averaged, ``z`` regenerated, never stored)."""

    label = "zo_sgd"

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = 1e-3, q: int = 1,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, q=q, weight_decay=weight_decay), seed)


class SparseMeZO(_SPSA):
    r"""Sparse MeZO (Liu et al. 2024): MeZO restricted to each tensor's small-magnitude weights,

    .. math:: m_l = 1[|\theta_l| \le \tau_l],\quad
              \hat g = \tfrac1q\textstyle\sum_i \hat g_{\mathrm{proj},i}\,(z_i \odot m),\quad
              \theta \leftarrow \theta - \eta\,(\hat g + \lambda\theta) \odot m

    with :math:`\tau_l` from :func:`magnitude_thresholds` at ``sparsity`` (the fraction masked
    out), recomputed from :math:`\theta` at every step (no mask is stored). Masked-out weights
    never move, weight decay included."""

    label = "sparse_mezo"

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = 1e-3, q: int = 1,
                 sparsity: float = 0.75, weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, q=q, sparsity=sparsity,
                                      weight_decay=weight_decay), seed)

    def _thresholds(self, group: dict[str, Any]) -> list[float] | None:
        return magnitude_thresholds(self._params(), float(group["sparsity"]))


class ZOSGDMomentum(_SPSA):
    r"""ZO-SGD-MMT (ZO-Bench, Zhang et al. 2024): heavy-ball momentum on the ZO estimate, in
    ``torch.optim.SGD``'s convention (the benchmark's code steps ``torch.optim.SGD(momentum=μ)``
    with :math:`\hat g` in ``.grad``): :math:`b_1 = \hat g_1`,
    :math:`b_t = \mu b_{t-1} + \hat g_t`, :math:`\theta \leftarrow \theta - \eta b_t`.
    The buffer is a parameter-sized tensor: the memory ZO-SGD saves, spent again."""

    label = "zo_sgd_mmt"

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = 1e-3, q: int = 1,
                 momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, q=q, momentum=momentum,
                                      weight_decay=weight_decay), seed)

    def _rule(self, group: dict[str, Any], state: dict[str, Any], p: torch.Tensor, sl: slice,
              theta: torch.Tensor, g: torch.Tensor, t: int) -> None:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        b = state["momentum_buffer"].view(-1)[sl]
        if t == 1:
            b.copy_(g)
        else:
            b.mul_(group["momentum"]).add_(g)
        theta.sub_(group["lr"] * b)


class ZOSGDSign(_SPSA):
    r"""ZO-SGD-Sign (ZO-Bench, Zhang et al. 2024; ZO-signSGD, Liu et al. 2019):
    :math:`\theta \leftarrow \theta - \eta\, \mathrm{sign}(\hat g)`, elementwise. (The benchmark's
    code steps with :math:`\mathrm{sign}(\hat g_{\mathrm{proj}})\, z` instead; its elementwise
    form, which the paper states, is the one kept here.)"""

    label = "zo_sgd_sign"

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = 1e-3, q: int = 1,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, q=q, weight_decay=weight_decay), seed)

    def _rule(self, group: dict[str, Any], state: dict[str, Any], p: torch.Tensor, sl: slice,
              theta: torch.Tensor, g: torch.Tensor, t: int) -> None:
        theta.sub_(group["lr"] * torch.sign(g))


class ZOAdam(_SPSA):
    r"""ZO-Adam (ZO-Bench, Zhang et al. 2024): Adam's moments on the ZO estimate, in
    ``torch.optim.Adam``'s form (the benchmark's code steps ``torch.optim.Adam`` with
    :math:`\hat g` in ``.grad``):

    .. math:: m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat g_t,\;
              v_t = \beta_2 v_{t-1} + (1-\beta_2)\hat g_t^2,\;
              \theta \leftarrow \theta - \frac{\eta}{1-\beta_1^t}\,
              \frac{m_t}{\sqrt{v_t/(1-\beta_2^t)} + \delta}

    ``eps`` is the perturbation :math:`\epsilon` (as everywhere in this family); Adam's
    denominator constant is ``adam_eps`` (:math:`\delta`). Two parameter-sized moment tensors."""

    label = "zo_adam"

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = 1e-3, q: int = 1,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, q=q, betas=betas, adam_eps=adam_eps,
                                      weight_decay=weight_decay), seed)

    def _rule(self, group: dict[str, Any], state: dict[str, Any], p: torch.Tensor, sl: slice,
              theta: torch.Tensor, g: torch.Tensor, t: int) -> None:
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        beta1, beta2 = group["betas"]
        m = state["exp_avg"].view(-1)[sl]
        v = state["exp_avg_sq"].view(-1)[sl]
        m.mul_(beta1).add_(g * (1 - beta1))
        v.mul_(beta2).add_(g * g * (1 - beta2))
        denom = v.sqrt() / math.sqrt(1 - beta2**t) + group["adam_eps"]
        theta.sub_(group["lr"] / (1 - beta1**t) * m / denom)


class ZOSGDConservative(_ZerothOrder):
    r"""ZO-SGD-Cons (ZO-Bench, Zhang et al. 2024): one SPSA query, then the best of three points,
    after the benchmark's code (``zo_conserv_step``), its tie-breaking included:

    .. math:: f_0 = f(\theta),\; f_- = f(\theta - \eta\hat g),\; f_+ = f(\theta + \eta\hat g);\quad
              \theta \leftarrow \begin{cases}
              \theta & f_- > f_0,\ f_0 < f_+\\
              \theta + \eta\hat g & f_- > f_0,\ f_0 \ge f_+ \ \text{ or }\ f_- \le f_0,\ f_- \ge f_+\\
              \theta - \eta\hat g & f_- \le f_0,\ f_- < f_+ \end{cases}

    Five function values per step. :math:`\theta \pm \eta\hat g = \theta \pm \eta\hat
    g_{\mathrm{proj}} z` are evaluated through ``perturbed_value`` with the same seed, so the
    point that wins the comparison is exactly the point taken. A ``"norm"`` :attr:`clip` scales
    :math:`\hat g_{\mathrm{proj}}` (one more pass over :math:`z` for :math:`\lVert z\rVert`);
    ``"value"`` and ``"coordinate"`` clipping make :math:`\hat g` a different vector from a
    multiple of :math:`z`: it is materialised and the two candidates are evaluated as explicit
    points (``oracles.values``, the same two function values)."""

    label = "zo_sgd_cons"

    def __init__(self, params: Params, lr: float = 1e-2, eps: float = 1e-3, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, eps=eps), seed)

    @staticmethod
    def _choose(f0: torch.Tensor, f_desc: torch.Tensor, f_asc: torch.Tensor) -> tuple[int, torch.Tensor]:
        """ZO-Bench's comparison: +1 (take the descent point), -1 (the ascent point) or 0 (stay),
        and the loss there."""
        if f_desc > f0:
            return (0, f0) if f0 < f_asc else (-1, f_asc)
        return (1, f_desc) if f_desc < f_asc else (-1, f_asc)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> torch.Tensor:
        oracles = self._oracles(closure)
        first = self.param_groups[0]
        eps, eta = float(first["eps"]), float(first["lr"])
        s = self._seed(self.steps)
        f0 = oracles()
        proj = float(oracles.perturbed_value(s, eps) - oracles.perturbed_value(s, -eps)) / (2 * eps)
        if self.clip is not None and self.clip.kind != "norm":
            g = proj * oracles.flat(seeded_direction(s, self._params()))  # materialised, see the docstring
            self._clip([g])
            x = oracles.flat()
            f_desc, f_asc = oracles.values(torch.stack([x - eta * g, x + eta * g]))
            choice, loss = self._choose(f0, f_desc, f_asc)
            if choice != 0:
                for p, new in zip(self._params(), oracles.unflat(x - choice * eta * g), strict=True):
                    p.copy_(new)
            self._advance()
            return loss
        if self.clip is not None:  # norm: |g_hat| = |proj| |z|, z regenerated
            z2 = sum(float(z.square().sum()) for j, _, p in self._indexed()
                     for _, z in seeded_normal(s, j, p))
            norm = abs(proj) * math.sqrt(z2)
            scale = min(1.0, self.clip.threshold / norm) if 0 < norm < math.inf else 1.0
            self._clipped = float(scale < 1.0)
            proj *= scale
        self._keep(lambda: [proj * z for j, _, p in self._indexed() for _, z in seeded_normal(s, j, p)])
        c = -eta * proj  # theta - eta g_hat = theta + c z
        f_desc, f_asc = oracles.perturbed_value(s, c), oracles.perturbed_value(s, -c)
        choice, loss = self._choose(f0, f_desc, f_asc)
        if choice != 0:
            for j, _, p in self._indexed():
                with writable_flat(p) as flat:
                    for sl, z in seeded_normal(s, j, p):
                        flat[sl] += choice * c * z  # the arithmetic perturbed_value used
        self._advance()
        return loss


# ------------------------------------------------------------------------------ forward gradient

class ForwardGradient(_ZerothOrder):
    r"""Forward gradient (Baydin et al. 2022): one forward-mode JVP per step,

    .. math:: u \sim N(0, I),\quad \hat g = (\nabla f^\top u)\, u,\quad
              \theta \leftarrow \theta - \eta\,(\hat g + \lambda\theta)

    unbiased (:math:`E[uu^\top] = I`) with the exact directional derivative, no finite-difference
    bias. :math:`u = ` ``seeded_direction(s_{t,0}, params)`` is held in full: the JVP needs it."""

    label = "forward_grad"

    def __init__(self, params: Params, lr: float = 1e-2, weight_decay: float = 0.0, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> torch.Tensor:
        oracles = self._oracles(closure)
        params = self._params()
        u = seeded_direction(self._seed(self.steps), params)
        with torch.enable_grad():
            f, d = oracles.jvp(u)
        estimate = [float(d) * uj for uj in u]
        self._clip(estimate)
        offset = 0
        for (_, group, p), gj in zip(self._indexed(), estimate, strict=True):
            g = self._field(gj, oracles, offset)
            offset += p.numel()
            if group["weight_decay"]:
                g = g + group["weight_decay"] * p.detach()
            p.sub_(group["lr"] * g)
        self._advance()
        return f


# ------------------------------------------------------------------- coordinate-wise (DeepZero)

CGE_BATCH_ELEMENTS = 1 << 22
"""Most elements of candidate points handed to one ``oracles.values`` call (small problems: one
call for f(θ) and all |S| perturbed points; large ones: several, counted the same)."""


ZO_GRASP_QUERIES = 192
"""Random directions of each of ZO-GraSP's two estimates: the official ``zoo_sample_size``."""

CGE_SELECTIONS = ("uniform", "zo_grasp")
"""How DeepZero's coordinate estimate picks its sparse coordinates: uniformly over all parameters,
or tensor by tensor in the proportions ZO-GraSP's pruning at initialization keeps."""


def sparse_count(density: float, n_params: int) -> int:
    """:math:`|S| = \\lceil \\rho P \\rceil` coordinates (at least one, at most P)."""
    return max(1, min(n_params, math.ceil(density * n_params - 1e-9)))


class CoordinateGradientEstimate(_ZerothOrder):
    r"""ZO-SGD with DeepZero's coordinate-wise estimate (Chen et al. 2024), forward differences on
    a sparse coordinate subset :math:`S_t`, :math:`|S_t| = \lceil \rho P \rceil`, redrawn each step:

    .. math:: \hat g_i = \frac{f(\theta + \mu e_i) - f(\theta)}{\mu}\ (i \in S_t),\quad
              \hat g_i = 0\ (i \notin S_t),\quad \theta \leftarrow \theta - \eta\,\hat g

    :math:`|S_t| + 1` function values per step, evaluated in one batched ``oracles.values`` call
    (DeepZero's "forward parallelization"). ``selection`` picks :math:`S_t`:

    * ``"uniform"``: ``randperm(P)[:|S_t|]`` from a CPU generator seeded with :math:`s_{t,0}`;
    * ``"zo_grasp"``: DeepZero's Algorithm 1 (ZO-GraSP-oriented layer-wise pruning ratios, after the
      official ``zoo_grasp_importance_score``, ``global_prune`` and ``layer_wise_random``). Once, at
      the first step (and again after a change of ``density``), ZO-GraSP scores the coordinates
      from function values alone: with :math:`q` = ``grasp_queries`` (:data:`ZO_GRASP_QUERIES`) directions
      :math:`u_i` (seeded normal draws :math:`z(s_{t,1+i})`, normalized per tensor),
      :math:`\hat g(x) = \tfrac1q \sum_i \big(f(x + \mu u_i) - f(x)\big) u_i`,
      :math:`\widehat{Hg} = \big(\hat g'(\theta + \mu \hat g(\theta)) - \hat g(\theta)\big)/\mu` (fresh
      directions :math:`z(s_{t,1+q+i})` for :math:`\hat g'`), score :math:`|\theta \odot \widehat{Hg}|`;
      the :math:`|S|` best-scored coordinates (global ranking, ties by position) give each tensor
      :math:`l` its count :math:`c_l`. Every step then draws ``randperm(n_l)[:c_l]`` in each
      tensor, in order, from the generator seeded with :math:`s_{t,0}`: the paper's random
      coordinates within each layer at the layer's ZO-GraSP ratio. The scoring costs
      :math:`2q + 2` function values.

    The official code prunes only convolution and linear weights and keeps every bias dense; here
    every tensor takes part in the ranking (a landscape's point is one tensor, where both selections
    coincide). Its per-tensor counts are kept as Python integers (no tensor state)."""

    label = "zo_cge"

    def __init__(self, params: Params, lr: float = 5e-2, mu: float = 5e-3, density: float = 0.1,
                 selection: str = "uniform", grasp_queries: int = ZO_GRASP_QUERIES, seed: int = 0) -> None:
        if selection not in CGE_SELECTIONS:
            raise ValueError(f"zo_cge: selection must be one of {', '.join(CGE_SELECTIONS)}, "
                             f"got {selection!r}")
        super().__init__(params, dict(lr=lr, mu=mu, density=density, selection=selection,
                                      grasp_queries=grasp_queries), seed)
        self.allocation: list[int] | None = None
        """Coordinates per tensor chosen by ZO-GraSP (None until the first ``"zo_grasp"`` step)."""
        self._allocated_for: float | None = None

    def coordinates(self, step: int, n_params: int) -> torch.Tensor:
        """The sorted flat coordinate indices :math:`S_t` drawn at ``step``."""
        first = self.param_groups[0]
        g = torch.Generator().manual_seed(self._seed(step))
        if first["selection"] == "uniform" or self.allocation is None:
            n = sparse_count(float(first["density"]), n_params)
            return torch.randperm(n_params, generator=g)[:n].sort().values
        parts, offset = [], 0
        for p, c in zip(self._params(), self.allocation, strict=True):
            parts.append(torch.randperm(p.numel(), generator=g)[:c] + offset)
            offset += p.numel()
        return torch.cat(parts).sort().values

    def _rge(self, oracles: Oracles, centre: torch.Tensor, step: int, first_query: int) -> torch.Tensor:
        """ZO-GraSP's randomized estimate at ``centre`` (directions normalized per tensor)."""
        first = self.param_groups[0]
        mu, q = float(first["mu"]), int(first["grasp_queries"])
        params = self._params()
        dirs = torch.stack([flatten([z / (z.norm() + 1e-8) for z in seeded_direction(
            self._seed(step, first_query + i), params)]) for i in range(q)]).to(centre)
        f = oracles.values(torch.cat([centre[None], centre[None] + mu * dirs]))
        return (f[1:] - f[0]) @ dirs / q

    def _allocate(self, oracles: Oracles, step: int) -> None:
        first = self.param_groups[0]
        mu, q = float(first["mu"]), int(first["grasp_queries"])
        x = oracles.flat()
        g0 = self._rge(oracles, x, step, 1)
        hg = (self._rge(oracles, x + mu * g0, step, 1 + q) - g0) / mu
        score = (x * hg).abs()
        keep = torch.argsort(score, descending=True, stable=True)[:sparse_count(float(first["density"]),
                                                                                  x.numel())]
        owner = torch.repeat_interleave(torch.arange(len(self._params())),
                                        torch.tensor([p.numel() for p in self._params()]))
        self.allocation = torch.bincount(owner[keep.cpu()], minlength=len(self._params())).tolist()
        self._allocated_for = float(first["density"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> torch.Tensor:
        oracles = self._oracles(closure)
        first = self.param_groups[0]
        mu = float(first["mu"])
        if first["selection"] == "zo_grasp" and (self.allocation is None
                                                 or self._allocated_for != float(first["density"])):
            self._allocate(oracles, self.steps)
        x = oracles.flat()
        subset = self.coordinates(self.steps, x.numel()).to(x.device)
        per_call = max(1, CGE_BATCH_ELEMENTS // x.numel())
        values = []
        for start in range(0, subset.numel(), per_call):
            idx = subset[start:start + per_call]
            points = x.expand(idx.numel(), -1).clone()
            points[torch.arange(idx.numel(), device=x.device), idx] += mu
            if start == 0:
                points = torch.cat([x[None], points])
            values.append(oracles.values(points))
        f = torch.cat(values)
        g = torch.zeros_like(x)
        g[subset] = (f[1:] - f[0]) / mu
        self._clip([g])
        g = self._field(g, oracles)
        for (_, group, p), gj in zip(self._indexed(), oracles.unflat(g), strict=True):
            p.sub_(group["lr"] * gj)
        self._advance()
        return f[0]


# ----------------------------------------------------------------------------------- ZO-RankSGD

def rank_coefficients(order: Sequence[int], k: int) -> tuple[torch.Tensor, int]:
    r"""ZO-RankSGD's estimator as weights on the directions: for an :math:`(m, k)` ranking
    (``order`` best first, only its first :math:`k` trusted) the DAG has an edge
    :math:`(i, j)` for each ranked :math:`i` and every :math:`j` below it, and

    .. math:: \hat g = \frac1{|E|}\sum_{(i,j)\in E} (\xi_j - \xi_i) = \frac1{|E|}\sum_j c_j \xi_j,
              \quad c_j = \#\mathrm{in}(j) - \#\mathrm{out}(j).

    Returns ``(c [m], |E|)``; the item at position :math:`r` has
    :math:`\min(r, k)` in-edges and :math:`m-1-r` out-edges if :math:`r < k`."""
    m = len(order)
    c = torch.zeros(m, dtype=torch.float64)
    for r, item in enumerate(order):
        c[item] = min(r, k) - ((m - 1 - r) if r < k else 0)
    edges = sum(m - 1 - r for r in range(min(k, m)))
    return c, edges


class ZORankSGD(_ZerothOrder):
    r"""ZO-RankSGD (Tang, Rybin & Chang 2024), Algorithm 1: only the *order* of candidates is seen,

    .. math:: \xi_i \sim N(0, I)\ (i < m),\quad
              \text{order} = \mathcal O^{(m,k)}\big(\{\theta + \mu\xi_i\}\big),\quad
              \hat g = \frac1{|E|}\sum_{(i,j)\in E}(\xi_j - \xi_i),\quad
              \theta \leftarrow \theta - \eta\,\hat g

    with :math:`E` the comparisons the ranking implies (:func:`rank_coefficients`). A monotone
    transform of :math:`f` leaves every step unchanged. :math:`\xi_i = ` ``seeded_direction(
    s_{t,i}, params)``, a function of the step counter only: when the ranking has to wait for a
    person (``AwaitingRanking`` from ``oracles.rank``), nothing has been mutated and the repeated
    call draws the same candidates. ``human`` is read by the run (it routes row 0's rankings to a
    person); the optimizer only stores it. The paper's line-search variant is not implemented."""

    label = "zo_ranksgd"

    def __init__(self, params: Params, lr: float = 2e-2, mu: float = 1e-2, m: int = 5, k: int = 5,
                 human: bool = False, seed: int = 0) -> None:
        super().__init__(params, {"lr": lr, "mu": mu, "m": m, "k": k, HUMAN: human}, seed)

    def directions(self, step: int) -> torch.Tensor:
        r"""The :math:`m` directions :math:`\xi_i` of ``step``, flattened: ``[m, P]``."""
        params = self._params()
        m = int(self.param_groups[0]["m"])
        return torch.stack([flatten(seeded_direction(self._seed(step, i), params)) for i in range(m)])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> None:
        oracles = self._oracles(closure)
        first = self.param_groups[0]
        xi = self.directions(self.steps)
        order = oracles.rank(oracles.flat() + float(first["mu"]) * xi)  # may raise: nothing mutated yet
        c, edges = rank_coefficients(order, int(first["k"]))
        g = (c.to(xi.dtype) @ xi) / edges
        self._clip([g])
        for (_, group, p), gj in zip(self._indexed(), oracles.unflat(g), strict=True):
            p.sub_(group["lr"] * gj)
        self._advance()
        return None


# ------------------------------------------------------------------------------------- registry

_MEZO = Paper("Fine-Tuning Language Models with Just Forward Passes",
              "S. Malladi, T. Gao, E. Nichani, A. Damian, J. D. Lee, D. Chen, S. Arora", 2023,
              "https://arxiv.org/abs/2305.17333")
_ZO_BENCH = Paper("Revisiting Zeroth-Order Optimization for Memory-Efficient LLM Fine-Tuning: A Benchmark",
                  "Y. Zhang, P. Li, J. Hong, J. Li, Y. Zhang, W. Zheng, P.-Y. Chen, J. D. Lee, W. Yin, "
                  "M. Hong, Z. Wang, S. Liu, T. Chen", 2024, "https://arxiv.org/abs/2402.11592")
_FORWARD_GRAD = Paper("Gradients without Backpropagation",
                      "A. G. Baydin, B. A. Pearlmutter, D. Syme, F. Wood, P. Torr", 2022,
                      "https://arxiv.org/abs/2202.08587")
_SPARSE_MEZO = Paper("Sparse MeZO: Less Parameters for Better Performance in Zeroth-Order LLM Fine-Tuning",
                     "Y. Liu, Z. Zhu, C. Gong, M. Cheng, C.-J. Hsieh, Y. You", 2024,
                     "https://arxiv.org/abs/2402.15751")
_DEEPZERO = Paper("DeepZero: Scaling up Zeroth-Order Optimization for Deep Model Training",
                  "A. Chen, Y. Zhang, J. Jia, J. Diffenderfer, J. Liu, K. Parasyris, Y. Zhang, Z. Zhang, "
                  "B. Kailkhura, S. Liu", 2024, "https://arxiv.org/abs/2310.02025")
_RANKSGD = Paper("Zeroth-Order Optimization Meets Human Feedback: Provable Learning via Ranking Oracles",
                 "Z. Tang, D. Rybin, T.-H. Chang", 2024, "https://arxiv.org/abs/2303.03751")

EPS = Hyperparameter("eps", 1e-3, 1e-8, 1.0, log=True, doc="perturbation scale \\epsilon")
Q = Hyperparameter("q", 1, 1, 64, kind="int", doc="SPSA queries averaged per step (2q function values)")

_CLIPS = {CLIPPED_FRACTION: "share of the gradient estimate clipped at the last step (norm clipping: 1 "
                             "where it was rescaled); reported when the lane clips"}

_SPSA_ESTIMATE = (r"\hat g = \frac1q\sum_{i<q}\frac{f(\theta+\epsilon z_i)-f(\theta-\epsilon z_i)}{2\epsilon}"
                  r"\,z_i + \lambda\theta,\ z_i \sim N(0, I);\;")

SPECS = [
    # lr defaults: every method converges on the 2-D bowl quadratic(kappa=10) from (-4, 2) (see
    # tests/engine/test_zeroth_order.py; Sparse MeZO only where the large weight is already at its
    # optimum, as it never moves it). MeZO's paper uses lr 1e-6..1e-7 for full fine-tuning of OPT
    # (1e9-1e10 parameters): ZO-SGD's stable step shrinks like 1/(P + 2), so on a network lower it.
    OptimizerSpec(
        name="zo_sgd", label="MeZO / ZO-SGD", factory=ZOSGD,
        hyperparameters=(lr(1e-2), EPS, Q, weight_decay()),
        update_rule=_SPSA_ESTIMATE + r"\theta_{t+1} = \theta_t - \eta\,\hat g",
        paper=_MEZO, oracle=Oracle.VALUES, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    OptimizerSpec(
        name="zo_sgd_mmt", label="ZO-SGD-MMT", factory=ZOSGDMomentum,
        hyperparameters=(lr(2e-3), EPS, Q, MOMENTUM, weight_decay()),
        update_rule=_SPSA_ESTIMATE + r"b_t = \mu b_{t-1} + \hat g_t,\ \theta_{t+1} = \theta_t - \eta\, b_t",
        paper=_ZO_BENCH, oracle=Oracle.VALUES, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    OptimizerSpec(
        name="zo_sgd_cons", label="ZO-SGD-Cons", factory=ZOSGDConservative,
        hyperparameters=(lr(1e-2), EPS),
        update_rule=(r"\hat g = \frac{f(\theta+\epsilon z)-f(\theta-\epsilon z)}{2\epsilon} z;\;"
                     r"\theta_{t+1} = \arg\min_{\theta' \in \{\theta_t,\ \theta_t - \eta\hat g,\ "
                     r"\theta_t + \eta\hat g\}} f(\theta')"),
        paper=_ZO_BENCH, oracle=Oracle.VALUES, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    OptimizerSpec(
        name="zo_sgd_sign", label="ZO-SGD-Sign", factory=ZOSGDSign,
        hyperparameters=(lr(1e-2), EPS, Q, weight_decay()),
        update_rule=_SPSA_ESTIMATE + r"\theta_{t+1} = \theta_t - \eta\,\mathrm{sign}(\hat g)",
        paper=_ZO_BENCH, oracle=Oracle.VALUES, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    OptimizerSpec(
        name="zo_adam", label="ZO-Adam", factory=ZOAdam,
        hyperparameters=(lr(5e-2), EPS, Q, *ADAM_BETAS,
                         Hyperparameter("adam_eps", 1e-8, 1e-16, 1.0, log=True,
                                        doc="Adam's denominator constant \\delta"),
                         weight_decay()),
        update_rule=(_SPSA_ESTIMATE + r"m_t = \beta_1 m_{t-1} + (1-\beta_1)\hat g_t,\;"
                     r"v_t = \beta_2 v_{t-1} + (1-\beta_2)\hat g_t^2,\;"
                     r"\theta_{t+1} = \theta_t - \eta\,\frac{\hat m_t}{\sqrt{\hat v_t} + \delta}"),
        paper=_ZO_BENCH, oracle=Oracle.VALUES, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    OptimizerSpec(
        name="forward_grad", label="Forward gradient", factory=ForwardGradient,
        hyperparameters=(lr(1e-2), weight_decay()),
        update_rule=(r"u \sim N(0, I),\ \hat g = (\nabla f(\theta_t)^\top u)\,u\ \text{(one JVP)};\;"
                     r"\theta_{t+1} = \theta_t - \eta\,(\hat g + \lambda\theta_t)"),
        paper=_FORWARD_GRAD, oracle=Oracle.JVPS, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    # sparsity 0.75: the paper masks out most weights (the 0.7-0.8 range); 0.75 keeps the
    # smallest quarter of each tensor.
    OptimizerSpec(
        name="sparse_mezo", label="Sparse MeZO", factory=SparseMeZO,
        hyperparameters=(lr(1e-2), EPS, Q,
                         Hyperparameter("sparsity", 0.75, 0.0, 1.0, include_high=False,
                                        doc="fraction of each tensor's weights (the largest) masked out"),
                         weight_decay()),
        update_rule=(r"m = 1[|\theta_l| \le \tau_l],\ "
                     r"\hat g = \frac1q\sum_{i<q}\frac{f(\theta+\epsilon z_i\odot m)-f(\theta-\epsilon z_i"
                     r"\odot m)}{2\epsilon}\,z_i;\;"
                     r"\theta_{t+1} = \theta_t - \eta\,(\hat g + \lambda\theta_t)\odot m"),
        paper=_SPARSE_MEZO, oracle=Oracle.VALUES, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    # mu 5e-3: DeepZero's --zoo-step-size default (OPTML-Group/DeepZero, tools/misc.py); density
    # 0.1: its ResNet-20 runs use 90% gradient sparsity. ZO-GraSP's 192 directions (ZO_GRASP_QUERIES)
    # are fixed, the official generate_layer_ratio.py's zoo_sample_size (its step size is the same
    # 5e-3): a one-time cost, not a per-step knob (and engine.limits reads an integer hyperparameter as
    # a cap on the evaluations per step).
    OptimizerSpec(
        name="zo_cge", label="DeepZero CGE", factory=CoordinateGradientEstimate,
        hyperparameters=(lr(5e-2), Hyperparameter("mu", 5e-3, 1e-8, 1.0, log=True,
                                                  doc="finite-difference step \\mu"),
                         Hyperparameter("density", 0.1, 1e-4, 1.0, log=True,
                                        doc="fraction of coordinates estimated per step"),
                         choice("selection", "uniform", CGE_SELECTIONS,
                                doc="sparse coordinates: uniform, or per tensor at the ratios ZO-GraSP's "
                                    "pruning at initialization keeps (DeepZero)")),
        update_rule=(r"\hat g_i = \frac{f(\theta_t+\mu e_i)-f(\theta_t)}{\mu}\ (i \in S_t),\ "
                     r"0\ \text{otherwise};\;\theta_{t+1} = \theta_t - \eta\,\hat g;\;"
                     r"S_t:\ \text{uniform, or } c_l \text{ random coordinates of tensor } l,\ "
                     r"c_l = \#\{\text{top-}|S| \text{ ZO-GraSP scores } |\theta \odot \widehat{Hg}|"
                     r" \text{ in } l\}"),
        paper=_DEEPZERO, oracle=Oracle.VALUES, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
    OptimizerSpec(
        name="zo_ranksgd", label="ZO-RankSGD", factory=ZORankSGD,
        hyperparameters=(lr(2e-2), Hyperparameter("mu", 1e-2, 1e-8, 10.0, log=True,
                                                  doc="candidate spread \\mu"),
                         Hyperparameter("m", 5, 2, 64, kind="int", doc="candidates ranked per step"),
                         Hyperparameter("k", 5, 1, 64, kind="int",
                                        doc="positions of the ranking used ((m, k) oracle; k >= m - 1: all)"),
                         Hyperparameter(HUMAN, False, kind="bool",
                                        doc="a person ranks the first trajectory's candidates")),
        update_rule=(r"\xi_i \sim N(0, I),\ E = \{(i,j): \theta_t+\mu\xi_i \text{ ranked above } "
                     r"\theta_t+\mu\xi_j\};\;"
                     r"\theta_{t+1} = \theta_t - \frac{\eta}{|E|}\sum_{(i,j)\in E}(\xi_j - \xi_i)"),
        paper=_RANKSGD, oracle=Oracle.RANKINGS, family="zeroth-order", seeded=True, diagnostics=_CLIPS,
    ),
]

__all__ = [
    "CGE_SELECTIONS",
    "SPECS",
    "ZOSGD",
    "ZO_GRASP_QUERIES",
    "CoordinateGradientEstimate",
    "ForwardGradient",
    "SparseMeZO",
    "ZOAdam",
    "ZORankSGD",
    "ZOSGDConservative",
    "ZOSGDMomentum",
    "ZOSGDSign",
    "magnitude_thresholds",
    "rank_coefficients",
    "sparse_count",
    "step_seed",
]
