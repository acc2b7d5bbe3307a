r"""Specs for adaptive first-order methods beyond ``torch.optim``: diffGrad, AdaBelief, AdamP, SGDP,
SGD-SaI.

Where ``pytorch_optimizer`` (4.1) carries a paper's rule exactly with the arguments we pass, its
class is used (AdaBelief). Where it does not, a small ``torch.optim.Optimizer`` is written here:

* diffGrad: the library's ``DiffGrad`` (rectify=False) does apply the friction ξ in 4.1, but uses
  the "efficient" Adam form ``lr·sqrt(1-β2^t)/(1-β1^t) · ξ m / (sqrt(v + 1e-15) + ε)``; the paper's
  rule (and this registry's Adam, ``torch.optim.Adam``) is ``ξ m̂ / (sqrt(v̂) + ε)``. Written here
  so that diffGrad differs from the registry's Adam by ξ and nothing else.
* AdamP: the library uses the same efficient form ``sqrt(1-β2^t) / (sqrt(v) + ε)`` where the
  official code (clovaai/AdamP) divides by ``sqrt(v̂) + ε``. Written here after the official code,
  and SGDP with it (the same projection).
* SGD-SaI: the library starts the momentum buffer at zero (first step ``(1-μ) g``) where the
  official code (AnonymousAlethiometer/SGD_SaI) starts it at ``g``, and the library computes the
  g-SNR's standard deviation only for tensors with ``ndim > 1`` and more than one row (else it uses
  ``||g||``) where the official code uses every tensor's entries. Written here after the official
  code.

Every hand-written class is dtype-agnostic (state is ``zeros_like(p)``), reads its
hyperparameters from ``param_groups`` at every step (so ``OptimizerSpec.apply`` works mid-run),
and accepts a closure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from pytorch_optimizer import AdaBelief
from torch.nn.functional import cosine_similarity

from engine.optimizers.base import Params, closure_loss, gradients
from engine.specs import (
    ADAM_BETAS,
    MOMENTUM,
    Hyperparameter,
    OptimizerSpec,
    Oracle,
    Paper,
    eps,
    lr,
    weight_decay,
)
from engine.stability import Threshold, adam_preconditioned, heavy_ball, nesterov


class DiffGrad(torch.optim.Optimizer):
    r"""diffGrad (Dubey et al. 2019): Adam whose step is damped by the friction coefficient
    :math:`\xi_t = \mathrm{sigmoid}(|g_{t-1} - g_t|)` (elementwise, :math:`g_0 = 0`)::

        m_t = β1 m + (1-β1) g_t,  v_t = β2 v + (1-β2) g_t²
        θ  -= lr · ξ_t · m̂_t / (sqrt(v̂_t) + ε)

    ``weight_decay`` is the L2 penalty added to the gradient, as in the official code and in
    ``torch.optim.Adam``; the ``g_t`` that enters ξ and the moments includes it.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for group, p, grad, state in gradients(self, "DiffGrad"):
            beta1, beta2 = group["betas"]
            if group["weight_decay"] != 0:
                grad = grad.add(p, alpha=group["weight_decay"])
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
                state["previous_grad"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            exp_avg, exp_avg_sq, previous = state["exp_avg"], state["exp_avg_sq"], state["previous_grad"]
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            xi = previous.sub_(grad).abs_().sigmoid_()  # reuses the buffer; refilled below
            denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
            p.addcdiv_(xi.mul_(exp_avg), denom, value=-group["lr"] / (1 - beta1 ** t))
            previous.copy_(grad)
        return loss


def _adamp_projection(p: torch.Tensor, grad: torch.Tensor, perturb: torch.Tensor, delta: float,
                      wd_ratio: float, eps: float) -> tuple[torch.Tensor, float, bool]:
    """AdamP's projection (official code): for the per-output-channel view, then the whole-tensor
    view, if every |cos(g, w)| is below ``delta / sqrt(view width)`` the weight is taken as scale
    invariant, the radial component ``(ŵ·u) ŵ`` is removed from the update ``u`` and the weight
    decay is scaled by ``wd_ratio``. The first view that qualifies wins. Returns the update, the
    decay factor and whether it was projected."""
    expand = [-1] + [1] * (p.dim() - 1)
    for view in (lambda x: x.reshape(x.size(0), -1), lambda x: x.reshape(1, -1)):
        w, g = view(p), view(grad)
        cos = cosine_similarity(g, w, dim=1, eps=eps).abs()
        if cos.max() < delta / math.sqrt(w.size(1)):
            p_n = p / w.norm(dim=1).add(eps).view(expand)
            perturb = perturb - p_n * view(p_n * perturb).sum(dim=1).view(expand)
            return perturb, wd_ratio, True
    return perturb, 1.0, False


class AdamP(torch.optim.Optimizer):
    r"""AdamP (Heo et al. 2021), after the official code (clovaai/AdamP)::

        u = m̂_t / (sqrt(v̂_t) + ε)          (nesterov=True: β1 m_t + (1-β1) g_t in place of m_t)
        for tensors with ndim > 1: if |cos(w, g)| < δ / sqrt(dim), u ← u − (ŵ·u) ŵ, decay × wd_ratio
        θ ← θ (1 − lr·λ·ratio) − lr · u

    On a 1-D tensor (a single 2-D point) there is no projection and AdamP equals Adam.
    :meth:`diagnostics` reports the share of the parameters (entries) whose update was projected at
    the last step: 0 when the projection did not fire.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1,
                 nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      delta=delta, wd_ratio=wd_ratio, nesterov=nesterov))
        self._projected: tuple[int, int] | None = None  # (entries projected, entries stepped)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        projected = stepped = 0
        for group, p, grad, state in gradients(self, "AdamP"):
            beta1, beta2 = group["betas"]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
            if group["nesterov"]:
                perturb = (beta1 * exp_avg + (1 - beta1) * grad) / denom
            else:
                perturb = exp_avg / denom
            ratio, was_projected = 1.0, False
            if p.dim() > 1:
                perturb, ratio, was_projected = _adamp_projection(p, grad, perturb, group["delta"],
                                                                  group["wd_ratio"], group["eps"])
            projected += p.numel() if was_projected else 0
            stepped += p.numel()
            if group["weight_decay"] > 0:
                p.mul_(1 - group["lr"] * group["weight_decay"] * ratio)
            p.add_(perturb, alpha=-group["lr"] / (1 - beta1 ** t))
        self._projected = (projected, stepped)
        return loss

    def diagnostics(self) -> Mapping[str, float]:
        if self._projected is None or self._projected[1] == 0:
            return {}
        return {"projected_fraction": self._projected[0] / self._projected[1]}


class SGDP(torch.optim.Optimizer):
    r"""SGDP (Heo et al. 2021), after the official code (clovaai/AdamP, ``adamp/sgdp.py``)::

        b_t = μ b_{t-1} + (1 - τ) g_t          (b_0 = 0; τ = dampening, 0 here)
        u = g_t + μ b_t  (nesterov)   or   u = b_t
        for tensors with ndim > 1: if |cos(w, g)| < δ / sqrt(dim), u ← u − (ŵ·u) ŵ, decay × wd_ratio
        θ ← θ (1 − lr·λ·ratio / (1 − μ)) − lr · u

    The projection is AdamP's (:func:`_adamp_projection`, the same official ``_projection``). The
    official decay divides by :math:`1 - \mu` (the stationary size of the momentum buffer). On a 1-D
    tensor (a single 2-D point) there is no projection and SGDP is heavy ball or Nesterov from a zero
    buffer. :meth:`diagnostics` reports the share of the entries whose update was projected.
    """

    def __init__(self, params: Params, lr: float = 1e-3, momentum: float = 0.9, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = True, eps: float = 1e-8, delta: float = 0.1,
                 wd_ratio: float = 0.1) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, eps=eps, delta=delta,
                                      wd_ratio=wd_ratio))
        self._projected: tuple[int, int] | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        projected = stepped = 0
        for group, p, grad, state in gradients(self, "SGDP"):
            mu = group["momentum"]
            if not state:
                state["momentum"] = torch.zeros_like(p)
            buf = state["momentum"]
            buf.mul_(mu).add_(grad, alpha=1 - group["dampening"])
            d_p = grad + mu * buf if group["nesterov"] else buf.clone()
            ratio, was_projected = 1.0, False
            if p.dim() > 1:
                d_p, ratio, was_projected = _adamp_projection(p, grad, d_p, group["delta"], group["wd_ratio"],
                                                              group["eps"])
            projected += p.numel() if was_projected else 0
            stepped += p.numel()
            if group["weight_decay"] > 0:
                p.mul_(1 - group["lr"] * group["weight_decay"] * ratio / (1 - mu))
            p.add_(d_p, alpha=-group["lr"])
        self._projected = (projected, stepped)
        return loss

    def diagnostics(self) -> Mapping[str, float]:
        if self._projected is None or self._projected[1] == 0:
            return {}
        return {"projected_fraction": self._projected[0] / self._projected[1]}


class SGDSaI(torch.optim.Optimizer):
    r"""SGD-SaI (Xu et al. 2024), after the official code's g-SNR form (AnonymousAlethiometer/SGD_SaI
    ``sgd_sai.py``, version 1.0.3)::

        at the first step, per parameter tensor k:  s_k = ||g_k||₂ / (std(g_k) + ε)
                                                    (unbiased std over all entries; s_k = ||g_k||₂
                                                     where std is 0 or undefined, e.g. one entry)
        m_1 = g_1,   m_t = μ m_{t-1} + (1-μ) g_t        (μ = 0: m_t = g_t)
        θ_k ← θ_k (1 − lr·λ) − lr · s_k · m_{t,k}

    The scale is frozen after the first step. The official file has two later variants, not
    followed here: 1.0.4 divides every s_k by the largest one (on a single tensor that makes s = 1),
    and 1.1.0 replaces s_k by sqrt(numel) "as an approximation". The fallback for std = 0 is the
    one commented out in the official code and used by pytorch_optimizer (the official 1.0.3 would
    divide by ε alone). :meth:`diagnostics` reports the smallest and largest :math:`s_k`: the spread
    of the per-tensor learning rates :math:`\eta s_k` the method sets at initialisation.
    """

    def __init__(self, params: Params, lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0,
                 eps: float = 1e-8) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for group, p, grad, state in gradients(self, "SGDSaI"):
            mu = group["momentum"]
            if "gsnr" not in state:
                norm = grad.norm()
                sigma = grad.std() if grad.numel() > 1 else torch.zeros_like(norm)
                ok = torch.isfinite(sigma) & (sigma > 0)
                state["gsnr"] = torch.where(ok, norm / (sigma + group["eps"]), norm)
            if mu != 0:
                if "momentum_buffer" not in state:
                    buf = state["momentum_buffer"] = grad.clone()
                else:
                    buf = state["momentum_buffer"].mul_(mu).add_(grad, alpha=1 - mu)
            else:
                buf = grad
            if group["weight_decay"] != 0:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.addcmul_(buf, state["gsnr"], value=-group["lr"])
        return loss

    def diagnostics(self) -> Mapping[str, float]:
        scales = [float(s["gsnr"]) for s in self.state.values() if "gsnr" in s]
        return {"gsnr_min": min(scales), "gsnr_max": max(scales)} if scales else {}


_DIFFGRAD = Paper("diffGrad: An Optimization Method for Convolutional Neural Networks",
                  "S. R. Dubey, S. Chakraborty, S. K. Roy, S. Mukherjee, S. K. Singh, B. B. Chaudhuri", 2019,
                  "https://arxiv.org/abs/1909.11015")
_ADABELIEF = Paper("AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients",
                   "J. Zhuang, T. Tang, Y. Ding, S. Tatikonda, N. Dvornek, X. Papademetris, J. S. Duncan",
                   2020, "https://arxiv.org/abs/2010.07468")
_ADAMP = Paper("AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
               "B. Heo, S. Chun, S. J. Oh, D. Han, S. Yun, G. Kim, Y. Uh, J.-W. Ha", 2021,
               "https://arxiv.org/abs/2006.08217")
_SGDSAI = Paper("No More Adam: Learning Rate Scaling at Initialization is All You Need",
                "M. Xu, L. Xiang, X. Cai, H. Wen", 2024, "https://arxiv.org/abs/2412.11768")

def _sgdp_threshold(hp: Mapping[str, Any]) -> Threshold:
    """SGDP on a 1-D tensor (no projection): Nesterov's or heavy ball's threshold."""
    return nesterov(hp) if hp.get("nesterov", True) else heavy_ball(hp)


_ADAM_STEP = r"\hat m_t = \frac{m_t}{1-\beta_1^t},\; \hat v_t = \frac{v_t}{1-\beta_2^t},\;"
_ADAM_MOMENTS = r"m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\; v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\;"

SPECS = [
    # Hand-written DiffGrad above: pytorch_optimizer.DiffGrad puts eps outside the bias correction
    # (and adds 1e-15 under the root), so it is not the paper's xi * mhat / (sqrt(vhat) + eps).
    # lr 1e-2 (paper: 1e-3) as for every Adam-type method in this module: the step per coordinate is
    # about lr, so 1e-2 crosses a unit-scale 2-D landscape in a few hundred steps.
    OptimizerSpec(
        name="diffgrad", label="diffGrad", factory=DiffGrad,
        hyperparameters=(lr(1e-2), *ADAM_BETAS, eps(1e-8), weight_decay()),
        update_rule=(_ADAM_MOMENTS + r"\xi_t = \mathrm{sigmoid}(|g_{t-1} - g_t|),\;" + _ADAM_STEP
                     + r"\theta_{t+1} = \theta_t"
                     r" - \eta\,\xi_t \odot \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}"),
        paper=_DIFFGRAD, oracle=Oracle.GRADIENTS, row_separable=True,
        # Adam's step times xi in [1/2, 1): Adam's preconditioned sharpness bounds diffGrad's own
        # (lambda_max(xi P^-1 H) <= lambda_max(P^-1 H)), and where the iterate oscillates across a
        # valley |g_{t-1} - g_t| is large, xi -> 1 and the two coincide.
        stability=adam_preconditioned, second_moment_key="exp_avg_sq",
    ),
    # pytorch_optimizer.AdaBelief with rectify=False, weight_decouple=True, fixed_decay=False,
    # ams_bound=False: s gets (g - m)^2 + eps, denom sqrt(s)/sqrt(1-b2^t) + eps, step lr/(1-b1^t),
    # decay p *= 1 - lr*wd: the paper's Algorithm 2 and the official adabelief-pytorch 0.2 with
    # rectify=False (checked in both sources). Rectification (the official package's default) is off:
    # it is RAdam's warm-up, not part of AdaBelief's rule, and would blur the comparison with Adam.
    # Decoupled decay as in the official package (it only matters when weight_decay > 0).
    # lr 1e-2 (paper: 1e-3), eps 1e-16 (the official package's default since 0.1).
    OptimizerSpec(
        name="adabelief", label="AdaBelief", factory=AdaBelief,
        hyperparameters=(lr(1e-2), *ADAM_BETAS, eps(1e-16), weight_decay()),
        update_rule=(r"m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\;"
                     r"s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon,\;"
                     r"\hat m_t = \frac{m_t}{1-\beta_1^t},\; \hat s_t = \frac{s_t}{1-\beta_2^t},\;"
                     r"\theta_{t+1} = \theta_t(1-\eta\lambda)"
                     r" - \eta\,\frac{\hat m_t}{\sqrt{\hat s_t} + \epsilon}"),
        paper=_ADABELIEF, oracle=Oracle.GRADIENTS, row_separable=True,
        # s_t ("exp_avg_var") is an Adam-type preconditioner (its step count lives in the group,
        # which engine.instruments.second_moment reads).
        stability=adam_preconditioned, second_moment_key="exp_avg_var",
        fixed={"rectify": False, "weight_decouple": True, "fixed_decay": False, "ams_bound": False},
    ),
    # Hand-written AdamP above (pytorch_optimizer.AdamP moves eps inside the bias correction).
    # Not row-separable: the cosine test and the projection use whole-tensor norms. Defaults are the
    # paper's (delta = 0.1, wd_ratio = 0.1) except lr 1e-2 (paper: 1e-3), as for diffGrad. On 1-D
    # tensors (a 2-D point) there is no projection and AdamP is Adam.
    OptimizerSpec(
        name="adamp", label="AdamP", factory=AdamP,
        hyperparameters=(lr(1e-2), *ADAM_BETAS, eps(1e-8), weight_decay(),
                         Hyperparameter("delta", 0.1, 0.0, 1.0, include_low=False,
                                        doc="scale-invariance threshold \\delta on |cos(w, g)|"),
                         Hyperparameter("wd_ratio", 0.1, 0.0, 1.0,
                                        doc="weight-decay factor on projected (scale-invariant) weights")),
        update_rule=(_ADAM_MOMENTS + _ADAM_STEP + r"u_t = \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon},\;"
                     r"u_t \leftarrow u_t - (\hat w \cdot u_t)\,\hat w \text{ if } "
                     r"\max|\cos(w, g_t)| < \delta/\sqrt{\dim w},\;"
                     r"\theta_{t+1} = \theta_t(1 - \eta\lambda r) - \eta\,u_t"),
        paper=_ADAMP, oracle=Oracle.GRADIENTS, row_separable=False, fixed={"nesterov": False},
        stability=adam_preconditioned, second_moment_key="exp_avg_sq",
        diagnostics={"projected_fraction": "share of the parameters (entries) whose update had its radial "
                                           "part removed at the last step (0: the projection did not fire)"},
    ),
    # Hand-written SGDP above, the official clovaai/AdamP SGDP (pytorch_optimizer's SGDP folds the
    # decay differently). Defaults: momentum 0.9 and nesterov True (the official README's
    # SGDP(params, lr=0.1, weight_decay=1e-5, momentum=0.9, nesterov=True)), delta 0.1 and wd_ratio
    # 0.1 (the paper's), eps 1e-8 (official); dampening 0 (official; not exposed: the official
    # examples never set it); lr 1e-3 as this registry's SGD momentum and Nesterov (Rosenbrock's
    # curvature of ~2,000 at (-1.5, 2) diverges Nesterov at 1e-2; the README: 0.1 on ImageNet with a
    # schedule); weight decay 0 so that minima stay put. Not row-separable (whole-tensor cosines).
    # Its threshold is heavy ball's or Nesterov's (the buffer starts at 0, not at g_1 as in
    # torch.optim.SGD: the same recursion from its second step on).
    OptimizerSpec(
        name="sgdp", label="SGDP", factory=SGDP,
        hyperparameters=(lr(1e-3), MOMENTUM,
                         Hyperparameter("nesterov", True, kind="bool", doc="Nesterov momentum"),
                         weight_decay(), eps(1e-8),
                         Hyperparameter("delta", 0.1, 0.0, 1.0, include_low=False,
                                        doc="scale-invariance threshold \\delta on |cos(w, g)|"),
                         Hyperparameter("wd_ratio", 0.1, 0.0, 1.0,
                                        doc="weight-decay factor on projected (scale-invariant) weights")),
        update_rule=(r"b_t = \mu b_{t-1} + g_t,\; u_t = g_t + \mu b_t\ \text{(Nesterov) or } b_t,\;"
                     r"u_t \leftarrow u_t - (\hat w \cdot u_t)\,\hat w \text{ if } "
                     r"\max|\cos(w, g_t)| < \delta/\sqrt{\dim w},\;"
                     r"\theta_{t+1} = \theta_t\left(1 - \frac{\eta\lambda r}{1-\mu}\right) - \eta\,u_t"),
        paper=_ADAMP, oracle=Oracle.GRADIENTS, row_separable=False, fixed={"dampening": 0.0},
        stability=_sgdp_threshold,
        diagnostics={"projected_fraction": "share of the parameters (entries) whose update had its radial "
                                           "part removed at the last step (0: the projection did not fire)"},
    ),
    # Hand-written SGD-SaI above (pytorch_optimizer.SGDSaI differs from the official code in the
    # first momentum step and in which tensors get a standard deviation). Not row-separable: the
    # g-SNR is a whole-tensor statistic. momentum 0.9 is the paper's. lr 2e-3 (paper: 1e-2): the
    # first step is a full lr * s * g_1 (m_1 = g_1), and at 1e-2 it throws Rosenbrock's start
    # (|g| ~ 160, s ~ 2.2) out of the valley into divergence. Weight decay defaults to 0
    # (paper: 1e-2) so that the landscapes' minima stay where they are. On a 2-D point
    # s = sqrt(2) ||g_1|| / |g_1x - g_1y| >= 1, large when the two gradient components are close.
    OptimizerSpec(
        name="sgdsai", label="SGD-SaI", factory=SGDSaI,
        hyperparameters=(lr(2e-3), MOMENTUM, weight_decay(), eps(1e-8)),
        update_rule=(r"s_k = \frac{\lVert g_{1,k}\rVert_2}{\mathrm{std}(g_{1,k}) + \epsilon}"
                     r"\ \text{(first step)},\;"
                     r"m_t = \mu m_{t-1} + (1-\mu) g_t,\ m_1 = g_1,\;"
                     r"\theta_{t+1,k} = \theta_{t,k}(1-\eta\lambda) - \eta\, s_k\, m_{t,k}"),
        paper=_SGDSAI, oracle=Oracle.GRADIENTS, row_separable=False,
        # No stability threshold: the step is lr * s_k * m with s_k state (frozen at step 1), and a
        # threshold is a function of the hyperparameters alone.
        diagnostics={"gsnr_min": "smallest per-tensor g-SNR s_k (the scale of its learning rate)",
                     "gsnr_max": "largest per-tensor g-SNR s_k"},
    ),
]

__all__ = ["SGDP", "SPECS", "AdamP", "DiffGrad", "SGDSaI"]
