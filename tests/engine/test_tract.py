"""TrAct (Petersen, Borgelt & Ermon 2024) beyond its case-table rule check (the softmax model, whose
one layer is the first, in tests/engine/optimizer_cases.py): the transform against the official
backward pass's closed forms (both branches), a step on a network whose first layer is followed by
another, which problems are refused, and the paper's claim at small scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engine.optimizers.tract import tract_gradient
from engine.run import LaneConfig, Run, RunConfig
from landscapes import data as datasets
from landscapes.catalog import get_landscape
from landscapes.networks import cross_entropy, get_network, mlp, problem_from_module, seeded


def official_weight_gradient(grad_output: np.ndarray, inputs: np.ndarray, lam: float) -> np.ndarray:
    """``TrActLinearFunction.backward`` of the official tract.py, transcribed: for b < n,
    G^T (I - A (A/lam + I)^-1 / lam) X / lam with A = X X^T / b; else G^T X (X^T X / b + lam I)^-1."""
    b, n = inputs.shape
    if b < n:
        a = inputs @ inputs.T / b
        eye = np.eye(b)
        return grad_output.T @ (eye - a @ np.linalg.inv(a / lam + eye) / lam) @ inputs / lam
    return grad_output.T @ inputs @ np.linalg.inv(inputs.T @ inputs / b + lam * np.eye(n))


@pytest.mark.parametrize(("b", "n"), [(12, 5), (3, 7)], ids=["gram", "woodbury"])
@pytest.mark.parametrize("lam", [0.1, 2.5])
def test_the_transform_is_the_official_closed_form_in_both_branches(b: int, n: int, lam: float) -> None:
    rng = np.random.default_rng(b + n)
    x, g = rng.standard_normal((b, n)), rng.standard_normal((b, 4)) / b  # G = dL/dZ of a mean loss
    got = tract_gradient(torch.tensor(g.T @ x), torch.tensor(x), lam).numpy()
    np.testing.assert_allclose(got, official_weight_gradient(g, x, lam), rtol=1e-11, atol=1e-13)


def _two_layers(b: int = 4) -> tuple:
    """Linear(5, 3) - tanh - Linear(3, 2) on b = 4 < n = 5 samples (TrAct's Woodbury branch)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(b, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 2, (b,), generator=gen)
    return problem_from_module(seeded(lambda: mlp([5, 3, 2], "tanh"), 1), cross_entropy, X, y), X


@pytest.mark.parametrize("name", ["tract_sgdm", "tract_adam"])
def test_only_the_first_layers_weight_takes_the_transformed_gradient(name: str) -> None:
    """One step of a run: the first layer's weight moves by -lr g_W (X'X/b + lam I)^-1 (the first SGD
    momentum step is the gradient; Adam's first step is lr sign-like m/sqrt(v) of the transformed
    gradient); its bias and the second layer move as plain SGD momentum / Adam would."""
    problem, X = _two_layers()
    lam, lr = 0.3, 0.05
    run = Run(problem, RunConfig(lanes=(LaneConfig(name, {"lr": lr, "lam": lam}),)))
    run.step()
    x0 = problem.x0().requires_grad_(True)
    (g,) = torch.autograd.grad(problem.loss(x0), x0)
    parts = [t.numpy().copy() for t in problem.unflatten(g).values()]
    parts[0] = tract_np(parts[0], X.numpy(), lam)
    if name == "tract_sgdm":
        steps = [lr * p for p in parts]
    else:  # Adam's first step: m-hat / (sqrt(v-hat) + eps) = g / (|g| + eps)
        steps = [lr * p / (np.abs(p) + 1e-8) for p in parts]
    want = problem.x0().numpy() - np.concatenate([s.ravel() for s in steps])
    np.testing.assert_allclose(run.positions(0)[0], want, rtol=1e-12, atol=1e-14)


def tract_np(grad_w: np.ndarray, inputs: np.ndarray, lam: float) -> np.ndarray:
    b, n = inputs.shape
    return grad_w @ np.linalg.inv(inputs.T @ inputs / b + lam * np.eye(n))


@pytest.mark.parametrize(("problem", "reason"), [
    (lambda: get_landscape("rosenbrock"), "needs a network"),
    (lambda: get_network("digits_cnn", n_train=50), "first layer is linear"),
    (lambda: get_network("matrix_sensing", n=4, m=20), "first layer is linear"),
])
def test_problems_without_a_linear_first_layer_are_refused_before_any_step(problem, reason: str) -> None:
    with pytest.raises(ValueError, match=rf"TrAct \(SGD momentum\) cannot run on .*: .*{reason}"):
        Run(problem(), RunConfig(lanes=(LaneConfig("tract_sgdm", {}),)))


def test_tract_trains_the_first_layer_of_a_low_contrast_mlp_much_faster_than_sgd(device: str) -> None:
    """The paper's claim at small scale: the first layer's gradient is proportional to the input
    values, so on low-contrast inputs (the digits' standardized pixels times 0.1) SGD with momentum
    crawls; TrAct's step on the pre-activations does not. Digits MLP 64-32-10, 100 full-batch steps,
    lr 0.05, momentum 0.9, lam 0.1: loss 0.25 vs 1.10 (measured)."""
    digits = datasets.digits(seed=0)
    problem = problem_from_module(seeded(lambda: mlp([64, 32, 10], "tanh"), 0), cross_entropy,
                                  0.1 * digits.X_train, digits.y_train)
    lanes = (LaneConfig("momentum", {"lr": 0.05}), LaneConfig("tract_sgdm", {"lr": 0.05}))
    run = Run(problem, RunConfig(lanes=lanes, device=device))
    run.run(100)
    final = [float(problem.loss(torch.tensor(run.positions(k)[0]))) for k in range(2)]
    assert final[1] < 0.5 * final[0], final


def test_the_first_layer_is_found_or_declared() -> None:
    from engine.oracles import first_layer_weight, model_view
    assert first_layer_weight(get_network("logistic_regression")) == "weight"
    assert first_layer_weight(get_network("moons_mlp")) == "0.weight"
    assert first_layer_weight(get_network("digits_cnn", n_train=20)) is None
    problem, _ = _two_layers()
    problem.first_layer = "2.weight"  # a declaration wins
    assert first_layer_weight(problem) == "2.weight" and model_view(problem).first_layer == 2
    assert isinstance(problem.module[0], nn.Linear)
