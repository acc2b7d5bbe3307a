"""Network problems: they learn (stated accuracies within stated budgets, fixed seeds), sampling
is reproducible, the flat view agrees with the module, modes are explicit, and a user's own module
becomes a problem in one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engine.run import LaneConfig, Run, RunConfig
from landscapes import data as datasets
from landscapes.networks import (
    available_networks,
    binary_cross_entropy,
    class_accuracy,
    cross_entropy,
    get_network,
    half_mse,
    mse_one_hot,
    problem_from_module,
)

# (problem kwargs, lr, steps, metric, threshold): Adam (GD for the MSE variant), seed 0, with margin
TARGETS = {
    "digits_mlp": ({}, 1e-3, 300, "test_accuracy", 0.95),  # 0.967 at 300 steps (batch 64)
    "digits_mlp_mse": ({}, 0.2, 1000, "test_accuracy", 0.95),  # full-batch GD: 0.971 (checked with SGD)
    "logistic_regression": ({}, 0.05, 200, "test_accuracy", 0.95),  # 0.972, full batch
    "digits_cnn": ({}, 3e-3, 400, "test_accuracy", 0.93),  # 0.967
    "moons_mlp": ({}, 0.02, 400, "test_accuracy", 0.88),  # 0.93 (noise 0.2 caps it)
    "matrix_sensing": ({}, 0.01, 1000, "recovery_error", 0.01),  # 6e-4 (below: lower is better)
    "diabetes_regression": ({}, 0.05, 300, "test_r2", 0.45),  # R^2 0.491, near least squares' 0.50
}
LOSS_DROP = {"diabetes_regression": 0.4}  # half MSE of a standardized target: 0.735 -> 0.238 (R^2 ~ 0.5)


def test_targets_cover_every_network() -> None:
    assert set(TARGETS) == set(available_networks())


@pytest.mark.parametrize("name", list(TARGETS))
def test_each_network_learns_to_a_stated_level(name: str) -> None:
    kwargs, lr, steps, metric, threshold = TARGETS[name]
    problem = get_network(name, **kwargs)
    optimizer = "sgd" if name == "digits_mlp_mse" else "adam"  # the edge-of-stability setting is plain GD
    run = Run(problem, RunConfig(lanes=(LaneConfig(optimizer, {"lr": lr}),), device="cpu",
                                 metrics_every=steps))
    records = run.run(steps + 1)
    first, last = records[0].metrics, records[-1].metrics
    assert last["train_loss"][0] < LOSS_DROP.get(name, 0.25) * first["train_loss"][0]
    if metric == "recovery_error":
        assert last[metric][0] < threshold
    else:
        assert last[metric][0] >= threshold


def test_batches_are_reproducible_from_the_seed() -> None:
    problem = get_network("digits_mlp", batch_size=32)
    a = problem.sample_batch(torch.Generator().manual_seed(5))
    b = problem.sample_batch(torch.Generator().manual_seed(5))
    c = problem.sample_batch(torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 32 and len(set(a.tolist())) == 32  # without replacement
    assert get_network("digits_mlp", batch_size=None).sample_batch(torch.Generator()) is None


def test_minibatch_run_replays_exactly() -> None:
    problem = get_network("digits_mlp", width=16, batch_size=16)
    cfg = RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-2}), LaneConfig("adamp", {"lr": 1e-2}),
                           LaneConfig("sgd", {"lr": 0.1}, batch_size={"kind": "norm_test", "size": 4},
                                      clip={"threshold": 1.0},
                                      schedules={"lr": {"kind": "linear", "steps": 5}})),
                    n_starts=2, seed=3, device="cpu", metrics_every=3)
    run = Run(problem, cfg)
    records = run.run(7)
    _, again = Run.replay(problem, cfg, run.log, run.tick)
    assert all(a.same_values(b) for a, b in zip(records, again, strict=True))
    lane0 = [r for r in records if r.lane == 0]
    assert [bool(r.metrics) for r in lane0] == [True, False, False, True, False, False, True]  # every 3


def test_flat_view_and_module_parameters_agree() -> None:
    problem = get_network("digits_cnn")
    module = problem.module
    theta = problem.x0()
    params = problem.unflatten(theta)
    for name, p in module.named_parameters():
        assert torch.equal(params[name], p.detach())
    assert torch.equal(problem.flatten(params), theta)
    direct = F.cross_entropy(module(problem.X_train), problem.y_train)
    assert torch.allclose(problem.loss(theta), direct, rtol=1e-12, atol=0)
    # a batch of parameter vectors is B independent evaluations
    g = torch.Generator().manual_seed(0)
    other = theta + 0.01 * torch.randn(theta.shape, generator=g, dtype=theta.dtype)
    both = problem.loss(torch.stack([theta, other]))
    assert torch.allclose(both, torch.stack([problem.loss(theta), problem.loss(other)]), rtol=1e-12)


def test_run_gives_layer_aware_optimizers_real_layers() -> None:
    problem = get_network("digits_mlp", width=8)
    run = Run(problem, RunConfig(lanes=(LaneConfig("adamp"), LaneConfig("adam")), n_starts=2, device="cpu"))
    adamp, adam = run.lanes[0], run.lanes[1]
    assert [tuple(p.shape) for p in adamp.rows[0]] == list(problem.param_shapes)  # one set per start
    assert len(adamp.rows) == 2
    assert [tuple(p.shape) for p in adam.rows[0]] == [(2, *s) for s in problem.param_shapes]
    run.run(2)
    np.testing.assert_allclose(run.trajectory(0)[1][0], problem.x0().numpy())


def test_random_starts_are_fresh_seeded_initializations() -> None:
    problem = get_network("moons_mlp")
    a = Run(problem, RunConfig(lanes=(LaneConfig("sgd"),), n_starts=3, seed=1, device="cpu")).starts
    b = Run(problem, RunConfig(lanes=(LaneConfig("sgd"),), n_starts=3, seed=1, device="cpu")).starts
    assert torch.equal(a, b) and torch.equal(a[0], problem.x0())
    assert not torch.equal(a[1], a[2]) and not torch.equal(a[1], a[0])
    # same initialization scale as the module's own (PyTorch's default uniform bounds)
    assert a[1].abs().max() <= problem.x0().abs().max() * 1.5


class Scorer(nn.Module):
    """A module this project does not define: LayerNorm + GELU + dropout, from torch.nn."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.GELU(), nn.Dropout(0.5),
                                  nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _toy_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(120, 4, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return X, y


def test_a_users_own_module_becomes_a_problem_and_trains() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = Scorer().double()
    X, y = _toy_data(0)
    Xt, yt = _toy_data(1)
    problem = problem_from_module(module, F.cross_entropy, X, y, X_test=Xt, y_test=yt,
                                  accuracy=class_accuracy, mode="eval")
    assert problem.dim == sum(p.numel() for p in module.parameters())
    module.eval()
    assert torch.allclose(problem.loss(problem.x0()), F.cross_entropy(module(X), y), rtol=1e-12)
    run = Run(problem, RunConfig(lanes=(LaneConfig("adam", {"lr": 0.02}),), device="cpu", metrics_every=150))
    recs = run.run(151)
    assert recs[-1].metrics["train_loss"][0] < 0.5 * recs[0].metrics["train_loss"][0]
    assert recs[-1].metrics["test_accuracy"][0] > 0.8


def test_modes_are_explicit() -> None:
    """Dropout makes the train-mode loss random; metrics run in eval mode and are deterministic."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = Scorer().double()
    X, y = _toy_data(0)
    problem = problem_from_module(module, F.cross_entropy, X, y, mode="train")
    assert problem.mode == "train" and problem.metrics_mode == "eval"
    theta = problem.x0()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        l1, l2 = problem.loss(theta), problem.loss(theta)
    assert l1 != l2  # dropout active in train mode
    m1, m2 = problem.metrics(theta[None]), problem.metrics(theta[None])
    module.eval()
    assert m1["train_loss"][0] == m2["train_loss"][0] == pytest.approx(
        float(F.cross_entropy(module(X), y)), rel=1e-12)
    module.train()
    assert module.training  # restored


def test_bad_arguments_get_clear_messages() -> None:
    with pytest.raises(ValueError, match="unknown network problem 'resnet'"):
        get_network("resnet")
    with pytest.raises(ValueError, match="width must be a positive integer"):
        get_network("digits_mlp", width=0)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        get_network("digits_mlp", activation="swish")
    with pytest.raises(ValueError, match="classes must be >= 2 distinct digits"):
        get_network("digits_mlp", classes=[3])
    with pytest.raises(ValueError, match="it takes"):
        get_network("moons_mlp", widht=3)
    with pytest.raises(ValueError, match="mode must be 'train' or 'eval'"):
        problem_from_module(nn.Linear(2, 2), F.mse_loss, torch.zeros(3, 2), torch.zeros(3, 2), mode="test")


def test_class_subset_relabels_in_the_given_order() -> None:
    problem = get_network("digits_mlp", classes=[7, 1])
    assert problem.param_shapes[-1] == (2,)
    assert set(problem.y_train.tolist()) == {0, 1}


def test_loss_helpers_refuse_mismatched_shapes() -> None:
    """The issue's case: half_mse broadcast outputs [n, 1] against targets [n] to [n, n] silently."""
    out = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    y = torch.tensor([1.5, 2.0, 3.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"half_mse: expected outputs and targets of the same shape; got "
                                         r"outputs of shape \[3, 1\] and targets of shape \[3\]"):
        half_mse(out, y)
    assert float(half_mse(out[:, 0], y)) == pytest.approx(0.5 * (0.25 + 0 + 1) / 3, rel=1e-15)
    logits = torch.zeros(3, 4, dtype=torch.float64)
    for fn in (cross_entropy, mse_one_hot, class_accuracy):
        with pytest.raises(ValueError, match=r"expected outputs \[n, classes\] and class-index targets"):
            fn(logits, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"binary_cross_entropy: expected outputs \[n, 1\]"):
        binary_cross_entropy(logits, torch.zeros(3))


def test_per_sample_gradients_are_each_samples_own() -> None:
    """vmap(grad) per-sample gradients equal autograd on each sample's loss, and their mean is the
    minibatch gradient (penalty included in both)."""
    problem = get_network("digits_cnn", l2=0.01)
    theta = problem.x0()
    batch = torch.tensor([3, 17, 40, 41, 500])
    G = problem.per_sample_grads(theta, batch)
    assert G.shape == (5, problem.dim)
    for row, i in zip(G, batch.tolist(), strict=True):
        t = theta.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(problem.loss(t, torch.tensor([i])), t)
        torch.testing.assert_close(row, want, rtol=1e-10, atol=1e-12)
    t = theta.clone().requires_grad_(True)
    (mean,) = torch.autograd.grad(problem.loss(t, batch), t)
    torch.testing.assert_close(G.mean(0), mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(problem.per_sample_losses(theta, batch).mean(), problem.loss(theta, batch))


def test_l2_penalty_adds_half_lambda_squared_norm() -> None:
    plain, penalized = get_network("moons_mlp"), get_network("moons_mlp", l2=0.3)
    theta = torch.stack([plain.x0(), 0.5 * plain.x0()])
    want = plain.loss(theta) + 0.15 * (theta**2).sum(1)
    torch.testing.assert_close(penalized.loss(theta), want, rtol=1e-13, atol=0)
    # metrics stay the data loss, so train and test compare
    torch.testing.assert_close(penalized.metrics(theta)["train_loss"], plain.metrics(theta)["train_loss"])
    assert r"\tfrac{0.3}{2}\lVert\theta\rVert^2" in penalized.latex
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        get_network("moons_mlp", l2=-1.0)


def test_n_train_trains_on_a_seeded_subset() -> None:
    full = get_network("digits_mlp")
    sub = get_network("digits_mlp", n_train=100)
    again = get_network("digits_mlp", n_train=100)
    assert sub.n_train == 100 and torch.equal(sub.X_train, again.X_train)
    assert torch.equal(sub.X_test, full.X_test)  # the test part is untouched
    rows = {tuple(r) for r in full.X_train.tolist()}
    assert all(tuple(r) in rows for r in sub.X_train.tolist())
    assert not torch.equal(sub.X_train, get_network("digits_mlp", n_train=100, seed=1).X_train[:100])
    for name in available_networks():
        assert get_network(name, n_train=20).n_train == 20
    with pytest.raises(ValueError, match=r"n_train must be an integer in 1\.\.1348"):
        get_network("digits_mlp", n_train=5000)


def test_sample_batch_takes_a_size() -> None:
    problem = get_network("digits_mlp", batch_size=32)
    g = torch.Generator().manual_seed(3)
    assert len(problem.sample_batch(g, batch_size=10)) == 10
    assert problem.sample_batch(g, batch_size=problem.n_train) is None  # the full batch
    assert len(problem.sample_batch(g)) == 32


def test_diabetes_is_a_standardized_regression_set() -> None:
    data = datasets.diabetes()
    assert data.X_train.shape == (332, 10) and data.y_train.shape == (332, 1) and data.n_classes == 0
    assert abs(float(data.y_train.mean())) < 1e-12
    assert float(data.y_train.std(unbiased=False)) == pytest.approx(1.0, rel=1e-12)
    problem = get_network("diabetes_regression")
    assert problem.dim == 11 and problem.accuracy is None
    mlp = get_network("diabetes_regression", depth=2, width=8)
    assert mlp.dim == 10 * 8 + 8 + 8 * 8 + 8 + 8 + 1
    # depth 0 is least squares: the exact minimizer's R^2 bounds what any optimizer reaches
    X = torch.cat([data.X_train, torch.ones(332, 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(X, data.y_train).solution
    theta = torch.cat([w[:10, 0], w[10]])
    assert problem.metrics(theta[None])["test_r2"][0] == pytest.approx(0.50, abs=0.05)
