"""Weight matching and linear mode connectivity (landscapes.connectivity): a permuted network is the
same function and matching undoes the permutation exactly; the assignment is the brute-force optimum
on a small layer; and on the digits MLP two networks trained from different seeds are separated by a
loss barrier that matching removes (Ito, Yamada & Kumagai 2024)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from landscapes import get_network
from landscapes.connectivity import (
    match,
    mlp_permutation_spec,
    mode_connectivity,
    permute,
    singular_alignment,
    train_pair,
    weight_matching,
)
from landscapes.networks import cross_entropy, problem_from_module, seeded


def random_theta(problem, seed: int) -> torch.Tensor:
    return problem.flatten(dict(problem.make_module(seed).named_parameters())).detach().double()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_permutation_spec_of_an_mlp(depth: int) -> None:
    problem = get_network("digits_mlp", width=16, depth=depth, n_train=50)
    spec = mlp_permutation_spec(problem)
    assert list(spec.perms) == [f"P_{i}" for i in range(depth)] and set(spec.sizes.values()) == {16}
    linear = [2 * i for i in range(depth + 1)]  # nn.Sequential: Linear, Tanh, Linear, ...
    for i in range(depth):
        assert spec.perms[f"P_{i}"] == ((f"{linear[i]}.weight", 0), (f"{linear[i]}.bias", 0),
                                        (f"{linear[i + 1]}.weight", 1))
    assert spec.axes["0.weight"] == ("P_0", None) and spec.axes[f"{linear[-1]}.bias"] == (None,)
    with pytest.raises(ValueError, match="weight matching here knows MLPs"):
        mlp_permutation_spec(get_network("digits_cnn", n_train=50))


@pytest.mark.parametrize("depth", [1, 2])
def test_a_permuted_network_is_the_same_function_and_matching_undoes_the_permutation(depth: int) -> None:
    """theta' = sigma(theta): every output equal (float64: up to the summation order of the permuted
    dot products, 1e-13); weight matching of theta' to theta returns sigma^-1 = argsort(sigma) for
    every layer, and applying it gives back theta bit for bit."""
    problem = get_network("digits_mlp", width=24, depth=depth)
    spec = mlp_permutation_spec(problem)
    theta = random_theta(problem, 3)
    rng = np.random.default_rng(0)
    sigma = {p: rng.permutation(n) for p, n in spec.sizes.items()}
    params = problem.unflatten(theta)
    shuffled = permute(spec, params, sigma)
    assert not torch.equal(problem.flatten(shuffled), theta)
    X = problem.X_test
    torch.testing.assert_close(problem.forward(problem.flatten(shuffled), X), problem.forward(theta, X),
                               rtol=1e-13, atol=1e-13)
    perm = weight_matching(spec, params, shuffled)
    for p in spec.perms:
        np.testing.assert_array_equal(perm[p], np.argsort(sigma[p]))
    assert torch.equal(problem.flatten(permute(spec, shuffled, perm)), theta)


def test_one_hidden_layer_matching_is_the_brute_force_optimum() -> None:
    """Five hidden units, 120 permutations: the assignment minimizes |theta_A - pi(theta_B)| over all of
    them (two unrelated networks)."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)

    def build(seed: int) -> nn.Module:
        return seeded(lambda: nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)), seed)

    problem = problem_from_module(build(0), cross_entropy, X, y)
    spec = mlp_permutation_spec(problem)
    a = {k: v.detach() for k, v in build(1).named_parameters()}
    b = {k: v.detach() for k, v in build(2).named_parameters()}
    flat_a = problem.flatten(a)

    def distance(order: np.ndarray) -> float:
        return float(torch.linalg.vector_norm(flat_a - problem.flatten(permute(spec, b, {"P_0": order}))))

    brute = min(itertools.permutations(range(5)), key=lambda o: distance(np.array(o)))
    found = weight_matching(spec, a, b)["P_0"]
    assert tuple(found) == brute
    assert distance(found) < distance(np.arange(5))


@pytest.fixture(scope="module")
def digits() -> tuple:
    """Two digits MLPs (64-64-10, tanh) trained from initialization seeds 1 and 2 with 300 steps of
    SGD (lr 0.1, batch 64) through the engine's Run."""
    problem = get_network("digits_mlp")
    a, b = train_pair(problem, seeds=(1, 2), steps=300, optimizer="sgd", hyperparameters={"lr": 0.1})
    return problem, a, b, mode_connectivity(problem, a, b, k=21)


def test_matching_removes_the_barrier_between_independently_trained_digits_mlps(digits: tuple) -> None:
    """Measured (seeds 1, 2): test-loss barrier 0.313 on the straight path, 0.031 after matching
    (train 0.329 -> 0.030); the matched path ends at the same function (pi(theta_B) computes what
    theta_B does); the accuracy at alpha = 1/2 drops to 0.909 naively and stays at 0.953 matched
    (ends 0.958 and 0.949). L2 distance 11.32 -> 7.67: matching shortens it by a third, while the
    barrier falls tenfold. Seeds (3, 4) and (5, 6), and widths 32 and 128, give barriers 0.17-0.37
    naive against 0.02-0.05 matched."""
    _, a, b, c = digits
    assert np.linalg.norm(a - b) > 1.0  # two different minima
    for name in ("train_loss", "test_loss", "loss"):
        assert c.barrier_matched[name] < 0.5 * c.barrier_naive[name], name
        assert c.barrier_naive[name] > 0.1, name
    for name in ("train_loss", "test_loss", "test_accuracy"):  # the end points: the same two functions
        assert c.matched.curves[name][0] == c.naive.curves[name][0]
        assert c.matched.curves[name][-1] == pytest.approx(c.naive.curves[name][-1], abs=1e-12)
    middle = len(c.alphas) // 2
    assert c.alphas[middle] == 0.5
    assert c.matched.curves["test_accuracy"][middle] > c.naive.curves["test_accuracy"][middle]
    assert c.l2_matched < c.l2_naive
    assert c.l2_matched == pytest.approx(np.linalg.norm(a - c.theta_matched), rel=1e-12)
    assert c.alphas.shape == (21,) and all(v.shape == (21,) for v in c.matched.curves.values())


def test_matching_keeps_singular_values_and_aligns_singular_directions(digits: tuple) -> None:
    """Ito et al. (Sec. 4): a permutation cannot change a weight matrix's singular values, only its
    singular vectors, and weight matching aligns the dominant ones. Measured: overlap of the top-5
    hidden-side singular subspaces 0.09 naive (chance: 5/64 = 0.078) -> 0.52 matched (first layer),
    0.09 -> 0.54 (output layer)."""
    problem, a, b, c = digits
    spec = mlp_permutation_spec(problem)
    pb = problem.unflatten(torch.tensor(c.theta_matched))
    for name, w in problem.unflatten(torch.tensor(b)).items():
        if w.dim() == 2:
            same = torch.linalg.svdvals(w).numpy()
            np.testing.assert_allclose(torch.linalg.svdvals(pb[name]).numpy(), same, rtol=1e-12)
    assert set(c.alignment_naive) == {"0.weight", "2.weight"}
    for name in c.alignment_naive:
        assert c.alignment_naive[name] < 0.2 and c.alignment_matched[name] > 0.4, name
    same = problem.unflatten(torch.tensor(a))
    ones = {"0.weight": 1.0, "2.weight": 1.0}
    assert singular_alignment(spec, same, same) == pytest.approx(ones, rel=1e-12)


def test_bad_input() -> None:
    problem = get_network("digits_mlp", width=8, n_train=50)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        train_pair(problem, steps=0)
    theta = random_theta(problem, 0)
    message = r"theta_b must be a flat parameter vector of size 610 .* shape \[609\]"
    with pytest.raises(ValueError, match=message):
        match(problem, theta, theta[:-1])
