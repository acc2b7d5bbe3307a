r"""Linear mode connectivity of two networks up to the permutation of hidden units (Ainsworth, Hayase &
Srinivasa 2023, "Git Re-Basin", weight matching; Ito, Yamada & Kumagai 2024, "Analysis of Linear
Mode Connectivity via Permutation-Based Weight Matching").

Permuting the hidden units of a layer (its weight rows and bias entries, and the next layer's weight
columns) changes no function an MLP computes. **Weight matching** looks for the permutations
:math:`\pi = (P_1, \dots, P_{L-1})` that bring :math:`\theta_B` closest to :math:`\theta_A`,

.. math::

    \min_\pi \lVert\theta_A - \pi(\theta_B)\rVert_2^2
    \iff \max_\pi \sum_l \big\langle W_l^A,\ P_l W_l^B P_{l-1}^\top\big\rangle
    + \langle b_l^A, P_l b_l^B\rangle

(the norms do not depend on :math:`\pi`). With the other permutations fixed, the objective is linear
in one :math:`P_l`: a linear assignment problem, solved exactly by the Hungarian method
(:func:`scipy.optimize.linear_sum_assignment`); layers are visited in a seeded random order until no
assignment improves (coordinate ascent, Ainsworth et al., Alg. 1). With one hidden layer a single
assignment is the global optimum.

Ito et al. find that the permutation removes the loss barrier along the linear path although it
lowers :math:`\lVert\theta_A - \pi(\theta_B)\rVert` only modestly: it aligns the dominant singular
directions of the weight matrices. :func:`mode_connectivity` gives both paths, both barriers and both
distances as plain arrays (:class:`Connectivity`); :func:`train_pair` trains the two networks with the
engine's :class:`~engine.run.Run` from two initialization seeds.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from engine.connectivity import LinearPath, l2_distance, linear_path
from landscapes.networks import ACTIVATIONS, NetworkProblem

__all__ = ["Connectivity", "PermutationSpec", "match", "mlp_permutation_spec", "mode_connectivity", "permute",
           "singular_alignment", "train_pair", "weight_matching"]

Params = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which parameters each permutation acts on: ``perms`` maps a permutation's name
    (``"P_0"``: the units of the first hidden layer) to ``(parameter name, axis)`` pairs, ``sizes`` to
    its number of units. ``axes`` is the inverse: parameter -> the permutation on each axis (or None)."""

    perms: Mapping[str, tuple[tuple[str, int], ...]]
    sizes: Mapping[str, int]
    axes: Mapping[str, tuple[str | None, ...]]


def mlp_permutation_spec(problem: NetworkProblem) -> PermutationSpec:
    """The hidden-unit permutations of an MLP problem: an ``nn.Sequential`` of ``nn.Linear`` layers
    and elementwise activations (the digits, moons and diabetes MLPs). Anything else is refused: a
    convolution's channels or a normalization layer's statistics would need their own axes."""
    module = problem.module
    elementwise = tuple(ACTIVATIONS.values())
    if not isinstance(module, nn.Sequential) or not all(
            isinstance(m, (nn.Linear, *elementwise)) for m in module):
        raise ValueError(f"{problem.name}: weight matching here knows MLPs (an nn.Sequential of nn.Linear "
                         f"layers and elementwise activations), not {type(module).__name__}")
    linear = [(name, m) for name, m in module.named_children() if isinstance(m, nn.Linear)]
    if len(linear) < 2:
        raise ValueError(f"{problem.name}: a single linear layer has no hidden units to permute")
    names = set(problem.param_names)
    perms: dict[str, tuple[tuple[str, int], ...]] = {}
    sizes: dict[str, int] = {}
    for i, ((name, layer), (next_name, _)) in enumerate(itertools.pairwise(linear)):
        acts = [(f"{name}.weight", 0), (f"{name}.bias", 0), (f"{next_name}.weight", 1)]
        perms[f"P_{i}"] = tuple((p, axis) for p, axis in acts if p in names)
        sizes[f"P_{i}"] = layer.out_features
    shapes = dict(zip(problem.param_names, problem.param_shapes, strict=True))
    axes: dict[str, list[str | None]] = {n: [None] * len(s) for n, s in shapes.items()}
    for perm, acts in perms.items():
        for p, axis in acts:
            axes[p][axis] = perm
    return PermutationSpec(perms=perms, sizes=sizes, axes={k: tuple(v) for k, v in axes.items()})


def _take(w: torch.Tensor, index: np.ndarray, axis: int) -> torch.Tensor:
    return torch.index_select(w, axis, torch.as_tensor(index, dtype=torch.long, device=w.device))


def permute(spec: PermutationSpec, params: Params, perm: Mapping[str, Sequence[int]],
            except_perm: str | None = None) -> dict[str, torch.Tensor]:
    """``params`` with every axis a permutation acts on reindexed, ``w'[i] = w[perm[i]]`` along it
    (skipping ``except_perm``): hidden unit ``i`` of the result is unit ``perm[i]`` of ``params``."""
    out = {}
    for name, w in params.items():
        for axis, p in enumerate(spec.axes.get(name, ())):
            if p is not None and p != except_perm:
                w = _take(w, np.asarray(perm[p]), axis)
        out[name] = w
    return out


def weight_matching(spec: PermutationSpec, params_a: Params, params_b: Params, *, max_iter: int = 100,
                    seed: int = 0) -> dict[str, np.ndarray]:
    r"""The permutations :math:`\pi` that maximize :math:`\sum \langle\theta_A, \pi(\theta_B)\rangle` by
    coordinate ascent over the layers (see the module docstring), as ``{name: index array}`` for
    :func:`permute`. Each sweep visits the permutations in an order drawn from ``seed``; it stops after
    a sweep that improved none (by more than 1e-12 of the objective's scale) or ``max_iter`` sweeps."""
    perm = {p: np.arange(n) for p, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)
    names = list(spec.perms)
    a = {k: v.detach().double().cpu() for k, v in params_a.items()}
    b = {k: v.detach().double().cpu() for k, v in params_b.items()}
    for _ in range(max_iter):
        improved = False
        for p in rng.permutation(names):
            n = spec.sizes[p]
            others = permute(spec, b, perm, except_perm=p)  # theta_B with every other permutation applied
            score = np.zeros((n, n))
            for name, axis in spec.perms[p]:
                wa = torch.movedim(a[name], axis, 0).reshape(n, -1).numpy()
                wb = torch.movedim(others[name], axis, 0).reshape(n, -1).numpy()
                score += wa @ wb.T  # score[i, j] = <unit i of A, unit j of B>
            _, cols = linear_sum_assignment(score, maximize=True)
            old, new = score[np.arange(n), perm[p]].sum(), score[np.arange(n), cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)):
                improved = True
                perm[p] = cols
        if not improved:
            break
    return perm


def singular_alignment(spec: PermutationSpec, params_a: Params, params_b: Params, rank: int = 5
                       ) -> dict[str, float]:
    r"""How well the dominant singular directions of each weight matrix agree, on its permuted sides:
    with :math:`W = U\Sigma V^\top`, the overlap :math:`\lVert U_{A,r}^\top U_{B,r}\rVert_F^2 / r \in [0, 1]`
    of the top-``rank`` left singular subspaces when the rows are hidden units (and likewise of the
    right ones when the columns are), averaged over those sides; about ``rank / units`` for unrelated
    matrices. Permutations leave the singular values as they are and move only these directions (Ito et
    al. 2024, Sec. 4): weight matching raises the overlap."""
    out = {}
    for name, perms in spec.axes.items():
        if len(perms) != 2 or all(p is None for p in perms):
            continue
        ua, _, vta = np.linalg.svd(params_a[name].detach().double().cpu().numpy())
        ub, _, vtb = np.linalg.svd(params_b[name].detach().double().cpu().numpy())
        sides = []
        if perms[0] is not None:
            r = min(rank, ua.shape[1])
            sides.append(np.linalg.norm(ua[:, :r].T @ ub[:, :r]) ** 2 / r)
        if perms[1] is not None:
            r = min(rank, vta.shape[0])
            sides.append(np.linalg.norm(vta[:r] @ vtb[:r].T) ** 2 / r)
        out[name] = float(np.mean(sides))
    return out


@dataclass(frozen=True)
class Connectivity:
    r"""Both linear paths between two networks and what they measure, as plain arrays.

    * ``alphas [k]``; ``naive`` and ``matched``: :class:`engine.connectivity.LinearPath` from
      :math:`\theta_A` to :math:`\theta_B` and to :math:`\pi(\theta_B)` (curves ``loss``,
      ``train_loss``, ``test_loss``, ``train_accuracy``, ``test_accuracy``, each ``[k]``);
    * ``barrier_naive`` / ``barrier_matched``: loss curve -> barrier;
    * ``l2_naive`` / ``l2_matched``: :math:`\lVert\theta_A-\theta_B\rVert`,
      :math:`\lVert\theta_A-\pi(\theta_B)\rVert`;
    * ``alignment_naive`` / ``alignment_matched``: weight matrix -> :func:`singular_alignment` of
      :math:`\theta_A` with :math:`\theta_B` and with :math:`\pi(\theta_B)`;
    * ``permutation``: :math:`\pi` (``{"P_0": [n_0], ...}``); ``theta_matched``: :math:`\pi(\theta_B)`.
    """

    alphas: np.ndarray
    naive: LinearPath
    matched: LinearPath
    barrier_naive: dict[str, float]
    barrier_matched: dict[str, float]
    l2_naive: float
    l2_matched: float
    alignment_naive: dict[str, float]
    alignment_matched: dict[str, float]
    permutation: dict[str, np.ndarray]
    theta_matched: np.ndarray


def _flat(problem: NetworkProblem, theta: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(theta, dtype=torch.float64).detach().cpu()
    if t.shape != (problem.dim,):
        raise ValueError(f"{what} must be a flat parameter vector of size {problem.dim} ({problem.name}'s "
                         f"parameters), got shape {list(t.shape)}")
    return t


def match(problem: NetworkProblem, theta_a: Any, theta_b: Any, *, max_iter: int = 100,
          seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    r""":math:`\pi(\theta_B)` (flat, float64) and :math:`\pi`, by :func:`weight_matching` on an MLP
    problem."""
    spec = mlp_permutation_spec(problem)
    a = problem.unflatten(_flat(problem, theta_a, "theta_a"))
    b = problem.unflatten(_flat(problem, theta_b, "theta_b"))
    perm = weight_matching(spec, a, b, max_iter=max_iter, seed=seed)
    return problem.flatten(permute(spec, b, perm)).numpy(), perm


def mode_connectivity(problem: NetworkProblem, theta_a: Any, theta_b: Any, k: int = 25, *,
                      max_iter: int = 100, seed: int = 0) -> Connectivity:
    r"""Weight-match :math:`\theta_B` to :math:`\theta_A` and evaluate both linear paths at ``k``
    points (:func:`engine.connectivity.linear_path`).

    >>> problem = get_network("digits_mlp")                                    # doctest: +SKIP
    >>> a, b = train_pair(problem, seeds=(1, 2), steps=300)                    # doctest: +SKIP
    >>> c = mode_connectivity(problem, a, b)                                   # doctest: +SKIP
    >>> c.barrier_naive["test_loss"], c.barrier_matched["test_loss"]           # doctest: +SKIP
    """
    matched_b, perm = match(problem, theta_a, theta_b, max_iter=max_iter, seed=seed)
    naive = linear_path(problem, theta_a, theta_b, k)
    matched = linear_path(problem, theta_a, matched_b, k)
    spec = mlp_permutation_spec(problem)
    a, b, mb = (problem.unflatten(torch.as_tensor(t, dtype=torch.float64))
                for t in (theta_a, theta_b, matched_b))
    return Connectivity(alphas=naive.alphas, naive=naive, matched=matched, barrier_naive=naive.barriers,
                        barrier_matched=matched.barriers, l2_naive=l2_distance(theta_a, theta_b),
                        l2_matched=l2_distance(theta_a, matched_b),
                        alignment_naive=singular_alignment(spec, a, b),
                        alignment_matched=singular_alignment(spec, a, mb), permutation=perm,
                        theta_matched=matched_b)


def train_pair(problem: NetworkProblem, seeds: tuple[int, int] = (1, 2), steps: int = 300,
               optimizer: str = "sgd", hyperparameters: Mapping[str, Any] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Two networks trained on ``problem`` for ``steps`` steps with the engine's :class:`~engine.run.Run`,
    each from the initialization ``problem.make_module(seed)`` and with minibatches drawn from the
    run's generator seeded with the same ``seed``: two independent trainings that differ only in their
    seeds. Returns the two flat parameter vectors (float64)."""
    from engine.run import LaneConfig, Run, RunConfig  # the catalog imports landscapes: keep it light

    if problem.make_module is None:
        raise ValueError(f"{problem.name}: training from seeds needs make_module (a seeded initializer)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train_pair: steps must be an integer >= 1, got {steps!r}")
    out = []
    for seed in seeds:
        start = problem.flatten(dict(problem.make_module(seed).named_parameters())).detach().double()
        config = RunConfig(lanes=(LaneConfig(optimizer, dict(hyperparameters or {})),),
                           start=tuple(start.tolist()), seed=seed, metrics_every=steps, snapshot_every=steps)
        run = Run(problem, config)
        run.run(steps, record_every=steps)
        out.append(run.positions(0)[0].astype(np.float64))
    return out[0], out[1]
