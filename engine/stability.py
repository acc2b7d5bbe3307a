r"""Stability thresholds: the sharpness beyond which an optimizer is unstable on a quadratic.

Each optimizer's spec names its threshold (``OptimizerSpec.stability``), so instruments never keep
tables keyed by optimizer name (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability"; Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability"):

* gradient descent: :math:`\lambda_{\max} < 2/\eta`;
* heavy-ball momentum :math:`\mu`: :math:`\lambda_{\max} < (2 + 2\mu)/\eta`;
* Nesterov momentum :math:`\mu`: :math:`\lambda_{\max} < (2 + 2\mu)/((1 + 2\mu)\eta)` (the
  boundary of the ``torch.optim.SGD(nesterov=True)`` recursion on a quadratic: its eigenvalue
  :math:`-1` at :math:`\eta\lambda (1 + 2\mu) = 2 + 2\mu`);
* optimistic gradient descent :math:`\theta_{t+1} = \theta_t - 2\eta g_t + \eta g_{t-1}`:
  :math:`\lambda_{\max} < 2/(3\eta)` (the root :math:`-1` of :math:`z^2 - (1 - 2a)z - a`,
  :math:`a = \eta\lambda`);
* extragradient / mirror prox: the step multiplies by :math:`1 - a + a^2`, so
  :math:`\lambda_{\max} < 1/\eta`;
* Adam-type methods: the preconditioned sharpness :math:`\lambda_{\max}(P_t^{-1} H) <
  (2 + 2\beta_1)/((1 - \beta_1)\eta)` (38/η at β1 = 0.9), with
  :math:`P_t = (1 - \beta_1^t)\,\mathrm{diag}(\sqrt{v_t/(1 - \beta_2^t)} + \epsilon)`;
* RMSprop and Adagrad (no momentum, no bias correction): :math:`\lambda_{\max}(P_t^{-1} H) < 2/\eta`
  with :math:`P_t = \mathrm{diag}(\sqrt{v_t} + \epsilon)` (:math:`v_t` the running average, resp.
  the sum, of squared gradients).

A preconditioned threshold carries its :math:`P_t` (``Threshold.diagonal``): the one place an
instrument learns how a method's state becomes its preconditioner.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

LAMBDA_MAX = "lambda_max"
PRECONDITIONED = "preconditioned"


@dataclass(frozen=True)
class Threshold:
    """The sharpness beyond which the lane's optimizer is unstable on a quadratic."""

    value: float
    quantity: str  # which sharpness it bounds: LAMBDA_MAX or PRECONDITIONED
    formula: str  # LaTeX
    diagonal: Diagonal | None = field(default=None, compare=False, repr=False)
    """For a PRECONDITIONED threshold: ``(v, t, hp) -> diag(P_t)`` from the state entry named by the
    spec's ``second_moment_key`` (flattened), the step count and the live hyperparameters."""


Diagonal = Callable[[Any, int, Mapping[str, Any]], Any]
"""(v_t as a tensor, step t >= 1, live hyperparameters) -> the diagonal of P_t, a tensor like v_t."""


def adam_diagonal(v: Any, t: int, hp: Mapping[str, Any]) -> Any:
    r""":math:`(1 - \beta_1^t)(\sqrt{v/(1 - \beta_2^t)} + \epsilon)` (Cohen et al. 2022, eq. 2)."""
    b1, b2, eps = float(hp["beta1"]), float(hp["beta2"]), float(hp["eps"])
    return (1 - b1**t) * ((v / (1 - b2**t)).sqrt() + eps)


def rms_diagonal(v: Any, t: int, hp: Mapping[str, Any]) -> Any:
    r""":math:`\sqrt{v} + \epsilon`: RMSprop's and Adagrad's denominator."""
    return v.sqrt() + float(hp["eps"])


StabilityRule = Callable[[Mapping[str, Any]], Threshold]
"""Live hyperparameters -> the threshold at those values."""


def _lr(hp: Mapping[str, Any]) -> float:
    return float(hp.get("lr", float("nan")))


def _over_lr(numerator: float, hp: Mapping[str, Any]) -> float:
    """``numerator / lr``; a schedule may anneal lr to exactly 0, where no sharpness is unstable."""
    lr = _lr(hp)
    return float("inf") if lr == 0 else numerator / lr


def gradient_descent(hp: Mapping[str, Any]) -> Threshold:
    return Threshold(_over_lr(2, hp), LAMBDA_MAX, r"2/\eta")


def heavy_ball(hp: Mapping[str, Any]) -> Threshold:
    mu = float(hp.get("momentum", 0.0))
    return Threshold(_over_lr(2 + 2 * mu, hp), LAMBDA_MAX, r"(2 + 2\mu)/\eta")


def nesterov(hp: Mapping[str, Any]) -> Threshold:
    mu = float(hp.get("momentum", 0.0))
    return Threshold(_over_lr((2 + 2 * mu) / (1 + 2 * mu), hp), LAMBDA_MAX, r"(2 + 2\mu)/((1 + 2\mu)\eta)")


def optimistic_gradient(hp: Mapping[str, Any]) -> Threshold:
    return Threshold(_over_lr(2 / 3, hp), LAMBDA_MAX, r"2/(3\eta)")


def extragradient(hp: Mapping[str, Any]) -> Threshold:
    return Threshold(_over_lr(1, hp), LAMBDA_MAX, r"1/\eta")


def adam_preconditioned(hp: Mapping[str, Any]) -> Threshold:
    b1 = float(hp.get("beta1", 0.9))
    return Threshold(_over_lr((2 + 2 * b1) / (1 - b1), hp), PRECONDITIONED,
                     r"(2 + 2\beta_1)/((1 - \beta_1)\eta)", diagonal=adam_diagonal)


def rms_preconditioned(hp: Mapping[str, Any]) -> Threshold:
    """RMSprop / Adagrad: gradient descent's 2/eta on the preconditioned Hessian."""
    return Threshold(_over_lr(2, hp), PRECONDITIONED, r"2/\eta", diagonal=rms_diagonal)
