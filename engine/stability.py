r"""Stability thresholds: the sharpness beyond which an optimizer is unstable on a quadratic.

Each optimizer's spec names its threshold (``OptimizerSpec.stability``), so instruments never keep
tables keyed by optimizer name (Cohen et al. 2021, "Gradient Descent on Neural Networks Typically
Occurs at the Edge of Stability"; Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of
Stability"):

* gradient descent: :math:`\lambda_{\max} < 2/\eta`;
* heavy-ball / Nesterov momentum :math:`\mu`: :math:`\lambda_{\max} < (2 + 2\mu)/\eta`;
* Adam-type methods: the preconditioned sharpness :math:`\lambda_{\max}(P_t^{-1} H) <
  (2 + 2\beta_1)/((1 - \beta_1)\eta)` (38/η at β1 = 0.9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LAMBDA_MAX = "lambda_max"
PRECONDITIONED = "preconditioned"


@dataclass(frozen=True)
class Threshold:
    """The sharpness beyond which the lane's optimizer is unstable on a quadratic."""

    value: float
    quantity: str  # which sharpness it bounds: LAMBDA_MAX or PRECONDITIONED
    formula: str  # LaTeX


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


def adam_preconditioned(hp: Mapping[str, Any]) -> Threshold:
    b1 = float(hp.get("beta1", 0.9))
    return Threshold(_over_lr((2 + 2 * b1) / (1 - b1), hp), PRECONDITIONED,
                     r"(2 + 2\beta_1)/((1 - \beta_1)\eta)")
