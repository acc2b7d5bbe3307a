r"""TrAct: training the first layer's pre-activations (Petersen, Borgelt & Ermon, NeurIPS 2024).

The gradient reaching a first linear layer :math:`Z = X W^\top` is :math:`\nabla_W L = G^\top X`
(:math:`G = \partial L / \partial Z`, :math:`X` the ``[b, n]`` inputs of the minibatch): proportional to
the raw inputs, so the layer learns slowly on low-contrast inputs. TrAct replaces it by the
closed-form step that moves the *pre-activations* :math:`Z` along their own gradient as closely as a
weight change can, regularized by :math:`\lambda`:

.. math:: \tilde\nabla_W = \nabla_W L\,\Big(\tfrac1b X^\top X + \lambda I\Big)^{-1}
          = \tfrac1\lambda\Big(\nabla_W L - (\nabla_W L\, X^\top)\big(b\lambda I + X X^\top\big)^{-1} X\Big)

(the second form, Woodbury's, solves a ``b x b`` system; it is used when :math:`b < n`, as in the
official code). Any optimizer then steps with :math:`\tilde\nabla_W`; the bias and every other
layer keep their gradients. The official code (Felix-Petersen/tract, ``src/tract.py``) does this in
the first layer's backward pass; here it is an optimizer transform (what the paper describes),
so the run's gradient, its records and every instrument keep the true gradient. λ = 0.1 is the
paper's default and only hyperparameter.

A network problem's first layer is its declared ``first_layer`` parameter, or the weight of a bare
``nn.Linear`` or of the ``nn.Linear`` an ``nn.Sequential`` starts with
(:func:`engine.oracles.first_layer_weight`); its inputs come from the run's
:class:`engine.oracles.ModelView` at this step's minibatch. Convolutional first layers (the paper's
unfolded patches) are not supported.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.optimizers.base import GradientEstimator, Params
from engine.oracles import first_layer_weight
from engine.specs import (
    ADAM_BETAS,
    CLIPPED_FRACTION,
    MOMENTUM,
    Hyperparameter,
    OptimizerSpec,
    Oracle,
    Paper,
    eps,
    lr,
    weight_decay,
)


def tract_gradient(grad_w: torch.Tensor, inputs: torch.Tensor, lam: float) -> torch.Tensor:
    r""":math:`\nabla_W L\,(X^\top X / b + \lambda I)^{-1}` for ``grad_w [out, n]`` and ``inputs [b, n]``
    (the Woodbury form when :math:`b < n`, as the official code)."""
    x = inputs.to(grad_w.dtype)
    b, n = x.shape
    if b < n:
        small = x @ x.T + b * lam * torch.eye(b, dtype=x.dtype, device=x.device)
        return (grad_w - torch.linalg.solve(small, (grad_w @ x.T).T).T @ x) / lam
    gram = x.T @ x / b + lam * torch.eye(n, dtype=x.dtype, device=x.device)
    return torch.linalg.solve(gram, grad_w.T).T  # the Gram matrix is symmetric


def _first_layer_reason(problem: Any) -> str | None:
    if not hasattr(problem, "forward"):
        return "it needs a network (it preconditions the first layer with that layer's inputs)"
    if first_layer_weight(problem) is None:
        return ("it needs a network whose first layer is linear (a bare nn.Linear, the nn.Linear an "
                "nn.Sequential starts with, or a declared first_layer)")
    return None


class TrAct(GradientEstimator):
    r"""TrAct's first-layer transform (see the module docstring) in front of a base rule:

    * ``base="sgdm"``: ``torch.optim.SGD`` with momentum, :math:`b_1 = \tilde g_1`,
      :math:`b_t = \mu b_{t-1} + \tilde g_t`, :math:`\theta \leftarrow \theta - \eta b_t`;
    * ``base="adam"``: ``torch.optim.Adam``, :math:`\theta \leftarrow \theta - \eta\,\hat m_t /
      (\sqrt{\hat v_t} + \epsilon)`;

    with :math:`\tilde g = g + \lambda_{\mathrm{wd}}\theta` (L2 weight decay, as torch) and :math:`g` the
    gradient whose first-layer weight part is :func:`tract_gradient` of the run's. The run's clip
    (:attr:`clip`) acts on the run's gradient before the transform, as for every closure-driven lane
    (:class:`engine.optimizers.base.GradientEstimator`). Closure-driven: it reads the first layer's
    inputs from ``oracles.model``."""

    label = "tract"

    def __init__(self, params: Params, lr: float = 1e-2, lam: float = 0.1, momentum: float = 0.9,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 base: str = "sgdm") -> None:
        if base not in ("sgdm", "adam"):
            raise ValueError(f"TrAct: base must be 'sgdm' or 'adam', got {base!r}")
        super().__init__(params, dict(lr=lr, lam=lam, momentum=momentum, betas=betas, eps=eps,
                                      weight_decay=weight_decay))
        self.base = base

    def _transformed(self, oracles: Any) -> list[torch.Tensor]:
        model = getattr(oracles, "model", None)
        if model is None or model.first_layer is None:
            raise ValueError("TrAct needs the network's first linear layer and its inputs (a run on a "
                             "network problem hands them over)")
        params = self._params()
        with torch.enable_grad():
            grads = self._gradient(oracles)  # the run's gradient, clipped with the lane's clip (a copy)
        grads = [g.clone() for g in grads]
        i = model.first_layer
        w = params[i]
        if w.dim() != 2 or w.shape[1] != model.inputs.shape[-1]:
            raise ValueError(f"TrAct: the first layer's weight has shape {tuple(w.shape)}, which does not "
                             f"take inputs of width {model.inputs.shape[-1]}")
        grads[i] = tract_gradient(grads[i], model.inputs.reshape(-1, model.inputs.shape[-1]),
                                  float(self.param_groups[0]["lam"]))
        return grads

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        oracles = self._oracles(closure)
        grads = self._transformed(oracles)
        for group, p, g in zip(self._groups(), self._params(), grads, strict=True):
            state = self.state[p]
            g = g.to(p.dtype)
            if group["weight_decay"] != 0:
                g = g + group["weight_decay"] * p
            if self.base == "sgdm":
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
                continue
            beta1, beta2 = group["betas"]
            if "exp_avg" not in state:
                state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            state["step"] += 1
            t = state["step"]
            state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
            p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1 ** t))


_TRACT = Paper("TrAct: Making First-layer Pre-Activations Trainable", "F. Petersen, C. Borgelt, S. Ermon",
               2024, "https://arxiv.org/abs/2410.23970")
_LAM = Hyperparameter("lam", 0.1, 1e-6, 1e3, log=True,
                      doc="TrAct's \\lambda: the first layer steps with g (X^T X / b + \\lambda I)^{-1}")
_RULE = (r"\tilde g_W = g_W\Big(\tfrac1b X^\top X + \lambda I\Big)^{-1}\ \text{(first layer)},\ "
         r"\tilde g = g\ \text{else};\;")
_CLIPS = {CLIPPED_FRACTION: "share of the gradient clipped (before TrAct's transform) at the last step "
                             "(norm clipping: 1 where it was rescaled); reported when the lane clips"}
_NEEDS = {"forward": "a network (TrAct preconditions its first layer with that layer's inputs)"}

SPECS = [
    # lam 0.1: the paper's default, "performs very well". lr 1e-2 and momentum 0.9 for SGD with
    # momentum (the paper: 0.08 on CIFAR ResNets with a cosine schedule), lr 1e-3 for Adam (the
    # paper's 1e-3 / 1e-2). Weight decay 0 (L2, added after the transform, as torch's optimizers do
    # to the gradient TrAct's backward produced). No stability threshold: the first layer's step is
    # preconditioned by the inputs' Gram matrix, which no threshold of the hyperparameters bounds.
    OptimizerSpec(
        name="tract_sgdm", label="TrAct (SGD momentum)", factory=TrAct,
        hyperparameters=(lr(1e-2), _LAM, MOMENTUM, weight_decay()),
        update_rule=_RULE + (r"b_t = \mu b_{t-1} + \tilde g_t + \lambda_{wd}\theta_t,\ "
                             r"\theta_{t+1} = \theta_t - \eta\,b_t"),
        paper=_TRACT, oracle=Oracle.GRADIENTS, family="first-order", row_separable=False, uses_model=True,
        fixed={"base": "sgdm"}, requires=_NEEDS, problem_check=_first_layer_reason, diagnostics=_CLIPS,
    ),
    OptimizerSpec(
        name="tract_adam", label="TrAct (Adam)", factory=TrAct,
        hyperparameters=(lr(1e-3), _LAM, *ADAM_BETAS, eps(1e-8), weight_decay()),
        update_rule=_RULE + (r"m_t = \beta_1 m_{t-1} + (1-\beta_1)\tilde g_t,\ v_t = \beta_2 v_{t-1} + "
                             r"(1-\beta_2)\tilde g_t^2,\ \theta_{t+1} = \theta_t - \eta\,\frac{\hat m_t}"
                             r"{\sqrt{\hat v_t} + \epsilon}"),
        paper=_TRACT, oracle=Oracle.GRADIENTS, family="first-order", row_separable=False, uses_model=True,
        fixed={"base": "adam"}, requires=_NEEDS, problem_check=_first_layer_reason, diagnostics=_CLIPS,
    ),
]

__all__ = ["SPECS", "TrAct", "tract_gradient"]
