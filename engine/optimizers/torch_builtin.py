r"""Specs for the optimizers ``torch.optim`` already carries correctly.

Nothing is reimplemented here: each entry is ``torch.optim.X`` plus its hyperparameters as data,
its update rule and its paper. Defaults are torch's. Learning rates are chosen so every optimizer
converges with its defaults on both a unit-scale bowl and Rosenbrock (whose curvature of ~2,000
at the usual start caps gradient descent at lr < 1e-3); AMSGrad's is raised to 1e-2 because at
1e-3 the running max of v, set by the start's large gradients, slows it ~15x on the valley floor.
"""

from __future__ import annotations

import torch

from engine.specs import (
    ADAM_BETAS,
    MOMENTUM,
    Hyperparameter,
    OptimizerSpec,
    Paper,
    beta,
    eps,
    lr,
    weight_decay,
)
from engine.stability import adam_preconditioned, gradient_descent, heavy_ball, nesterov, rms_preconditioned

_HEAVY_BALL = Paper("Some methods of speeding up the convergence of iteration methods",
                    "B. T. Polyak", 1964, "https://doi.org/10.1016/0041-5553(64)90137-5")
_NESTEROV = Paper("A method for solving the convex programming problem with convergence rate O(1/k^2)",
                  "Y. Nesterov", 1983)
_ADAM = Paper("Adam: A Method for Stochastic Optimization", "D. P. Kingma, J. Ba", 2015,
              "https://arxiv.org/abs/1412.6980")

# Stability thresholds (engine.stability): gradient descent, heavy ball and Nesterov have classical
# ones on lambda_max; Adam, AdamW and AMSGrad the preconditioned one of Cohen et al. (2022), with
# P_t built from the state entry named by second_moment_key (AMSGrad: the running max, which its
# step divides by). RMSprop and Adagrad have a preconditioned threshold too (2/eta on
# lambda_max(diag(sqrt(v) + eps)^-1 H): no momentum, no bias correction; engine.stability's
# rms_preconditioned carries that P_t).
SPECS = [
    OptimizerSpec(
        name="sgd", label="SGD", factory=torch.optim.SGD,
        hyperparameters=(lr(1e-3), weight_decay()),
        update_rule=r"\theta_{t+1} = \theta_t - \eta\, g_t",
        paper=Paper("A Stochastic Approximation Method", "H. Robbins, S. Monro", 1951,
                    "https://doi.org/10.1214/aoms/1177729586"),
        row_separable=True, stability=gradient_descent,
    ),
    OptimizerSpec(
        name="momentum", label="Heavy-ball momentum", factory=torch.optim.SGD,
        hyperparameters=(lr(1e-3), MOMENTUM, weight_decay()),
        update_rule=r"b_t = \mu b_{t-1} + g_t,\quad \theta_{t+1} = \theta_t - \eta\, b_t",
        paper=_HEAVY_BALL, row_separable=True, stability=heavy_ball,
    ),
    OptimizerSpec(
        name="nesterov", label="Nesterov momentum", factory=torch.optim.SGD,
        hyperparameters=(lr(1e-3), Hyperparameter("momentum", 0.9, 1e-6, 1.0, include_high=False,
                                                   doc="momentum \\mu (> 0 for Nesterov)"),
                         weight_decay()),
        update_rule=r"b_t = \mu b_{t-1} + g_t,\quad \theta_{t+1} = \theta_t - \eta\,(g_t + \mu b_t)",
        paper=_NESTEROV, row_separable=True, fixed={"nesterov": True}, stability=nesterov,
    ),
    OptimizerSpec(
        name="adam", label="Adam", factory=torch.optim.Adam,
        hyperparameters=(lr(1e-3), *ADAM_BETAS, eps(1e-8), weight_decay()),
        update_rule=(r"m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t,\;"
                     r"v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\;"
                     r"\theta_{t+1} = \theta_t - \eta\,\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}"),
        paper=_ADAM, row_separable=True, stability=adam_preconditioned, second_moment_key="exp_avg_sq",
    ),
    OptimizerSpec(
        name="adamw", label="AdamW", factory=torch.optim.AdamW,
        hyperparameters=(lr(1e-3), *ADAM_BETAS, eps(1e-8), weight_decay(0.01)),
        update_rule=(r"\theta_t \leftarrow \theta_t(1 - \eta\lambda),\;"
                     r"\theta_{t+1} = \theta_t - \eta\,\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}"),
        paper=Paper("Decoupled Weight Decay Regularization", "I. Loshchilov, F. Hutter", 2019,
                    "https://arxiv.org/abs/1711.05101"),
        row_separable=True, stability=adam_preconditioned, second_moment_key="exp_avg_sq",
    ),
    OptimizerSpec(
        name="amsgrad", label="AMSGrad", factory=torch.optim.Adam,
        hyperparameters=(lr(1e-2), *ADAM_BETAS, eps(1e-8), weight_decay()),
        update_rule=(r"v^{\max}_t = \max(v^{\max}_{t-1}, v_t),\;"
                     r"\theta_{t+1} = \theta_t"
                     r" - \eta\,\frac{\hat m_t}{\sqrt{v^{\max}_t/(1-\beta_2^t)} + \epsilon}"),
        paper=Paper("On the Convergence of Adam and Beyond", "S. J. Reddi, S. Kale, S. Kumar", 2018,
                    "https://openreview.net/forum?id=ryQu7f-RZ"),
        row_separable=True, fixed={"amsgrad": True}, stability=adam_preconditioned,
        second_moment_key="max_exp_avg_sq",
    ),
    OptimizerSpec(
        name="rmsprop", label="RMSprop", factory=torch.optim.RMSprop,
        hyperparameters=(lr(0.01), beta("alpha", 0.99, doc="squared-gradient decay \\alpha"),
                         eps(1e-8), weight_decay()),
        update_rule=(r"v_t = \alpha v_{t-1} + (1-\alpha) g_t^2,\;"
                     r"\theta_{t+1} = \theta_t - \eta\,\frac{g_t}{\sqrt{v_t} + \epsilon}"),
        paper=Paper("Lecture 6.5 - RMSProp (Neural Networks for Machine Learning)",
                    "T. Tieleman, G. Hinton", 2012),
        row_separable=True, stability=rms_preconditioned, second_moment_key="square_avg",
    ),
    OptimizerSpec(
        name="adagrad", label="Adagrad", factory=torch.optim.Adagrad,
        hyperparameters=(lr(0.1), eps(1e-10), weight_decay()),
        update_rule=(r"G_t = G_{t-1} + g_t^2,\;"
                     r"\theta_{t+1} = \theta_t - \eta\,\frac{g_t}{\sqrt{G_t} + \epsilon}"),
        paper=Paper("Adaptive Subgradient Methods for Online Learning and Stochastic Optimization",
                    "J. Duchi, E. Hazan, Y. Singer", 2011,
                    "https://jmlr.org/papers/v12/duchi11a.html"),
        row_separable=True, stability=rms_preconditioned, second_moment_key="sum",
    ),
]

__all__ = ["SPECS"]
