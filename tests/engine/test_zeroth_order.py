r"""The zeroth-order family (engine/optimizers/zeroth_order.py) beyond its rule checks.

The first steps of every optimizer against its paper's rule, live changes, float32 and state are
in the case table (``tests/engine/optimizer_cases.py``, driven by ``test_optimizer_rules.py``):
references regenerate every random direction with ``seeded_direction`` at the documented seeds
:math:`s_{t,i} = ((\text{seed}\cdot 1\,000\,003 + t)\cdot 1\,009 + i) \bmod 2^{31}`. Here:

* the seed stream itself (a spy sees exactly those seeds) and every branch of the conservative rule;
* statistics: on :math:`f = \tfrac12\theta^\top A\theta + b^\top\theta` the two-point estimate is
  :math:`(\nabla f^\top z) z` exactly, so its mean over N seeds is :math:`\nabla f` within 5
  standard errors, the per-coordinate variance being :math:`\lVert g\rVert^2 + g_i^2`;
* clipping of the estimate (the run's :class:`engine.clipping.Clip`) against a hand computation,
  and the memory it costs (norm and value clipping of MeZO's estimate allocate no parameter-sized
  tensor; coordinate clipping does, as documented);
* contracts: MeZO never writes θ while evaluating (bit-exact), ZO-RankSGD is invariant under
  monotone transforms of f (ZO-SGD is not), oracle counts per step, a min-max game's descent
  field, a person's ranking in a Run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import engine.oracles
from engine.clipping import Clip
from engine.events import SetHyperparameter, SubmitRanking
from engine.module_oracles import ModuleOracles
from engine.oracles import HUMAN, Oracles, seeded_direction
from engine.problem import Bounds, Minimum
from engine.registry import get_spec
from engine.run import Run, RunConfig
from engine.seeds import step_seed, trajectory_seed
from landscapes.analytic import AnalyticFunction
from landscapes.catalog import get_landscape
from landscapes.games import bilinear_game
from tests.engine.optimizer_cases import (
    CASES,
    THETA7,
    Target,
    analytic,
    clip_np,
    rule_cge,
    rule_cons,
    rule_forward_grad,
    rule_ranksgd,
    rule_spsa,
    run_case,
    schedule,
    seven_d,
    zo_grasp_counts,
)

SEED = 7
STEPS = 5
F7 = seven_d()


def seed_rule(seed: int, t: int, i: int = 0) -> int:
    """The documented seed, written out (not engine.seeds.step_seed)."""
    return ((seed * 1_000_003 + t) * 1_009 + i) % 2**31


def make_params(theta: np.ndarray = THETA7, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    return [torch.tensor(a, dtype=dtype).requires_grad_(True) for a in F7.split(theta)]


def flat(params: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([p.detach().double().reshape(-1).numpy() for p in params])


def direction(s: int) -> np.ndarray:
    return F7.direction(s)


# -------------------------------------------------------------------------------- seeds, branches

def test_the_seed_stream_is_the_documented_one() -> None:
    assert all(step_seed(SEED, t, i) == seed_rule(SEED, t, i) for t in range(3) for i in range(3))
    calls: list[tuple[int, float]] = []

    class Spy(Oracles):
        def perturbed_value(self, seed, scale, thresholds=None):
            calls.append((seed, scale))
            return super().perturbed_value(seed, scale, thresholds)

    params = make_params()
    opt = get_spec("zo_sgd").build(params, {"q": 3, "eps": 1e-2}, seed=SEED)
    for _ in range(3):
        opt.step(Spy(F7.loss, params))
    want = [(seed_rule(SEED, t, i), s) for t in range(3) for i in range(3) for s in (1e-2, -1e-2)]
    assert calls == want and len({s for s, _ in want}) == 9
    # ZO-RankSGD's candidates: theta + mu xi_i, xi_i = seeded_direction(s_{0,i})
    seen: list[torch.Tensor] = []
    params = make_params()
    opt = get_spec("zo_ranksgd").build(params, {"mu": 0.5}, seed=3)
    oracles = Oracles(F7.loss, params, ranker=lambda c, v: (seen.append(c.clone()), list(range(len(v))))[1])
    opt.step(oracles)
    want_c = np.stack([THETA7 + 0.5 * direction(seed_rule(3, 0, i)) for i in range(5)])
    np.testing.assert_allclose(seen[0].numpy(), want_c, rtol=1e-15)


def _double_well() -> object:
    return analytic("double_well", ((2, 2), (3,)), 0.2 * THETA7, lambda x: ((x * x - 1) ** 2).sum(-1),
                    lambda x: 4 * x * (x * x - 1))


def test_the_conservative_rule_takes_every_branch_and_lands_exactly_on_an_evaluated_point() -> None:
    """On the double well sum (x_i^2 - 1)^2 near 0, a long step can overshoot (stay), and the step
    *against* the estimate can land in the other well and win (ascent): all of ZO-Bench's branches."""
    well = _double_well()
    values = schedule("zo_sgd_cons", [{"lr": 0.5, "eps": 1e-2}] * STEPS)
    branches: list[str] = []
    want = rule_cons(values, well, SEED, branches=branches)
    assert set(branches) == {"descent", "stay", "ascent beats theta", "ascent beats descent"}
    np.testing.assert_allclose(np.stack(run_case("zo_sgd_cons", values, well, SEED)), np.stack(want),
                               rtol=1e-10, atol=1e-12)
    params = make_params(well.x0)
    evaluated: list[torch.Tensor] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        evaluated.extend(x.detach().clone())
        return well.loss(x)

    opt = get_spec("zo_sgd_cons").build(params, values[0], seed=SEED)
    for _ in range(STEPS):
        evaluated.clear()
        opt.step(Oracles(spy, params))
        now = torch.cat([p.detach().reshape(-1) for p in params])
        # f(theta), f(theta +- eps z), f(theta - lr g), f(theta + lr g): the new theta is one of them
        assert len(evaluated) == 5 and any(torch.equal(now, e) for e in (evaluated[0], *evaluated[3:]))


# --------------------------------------------------------------------------------- statistics

def test_the_two_point_estimate_is_unbiased_for_a_quadratic() -> None:
    r"""On f = 1/2 θᵀAθ + bᵀθ the Gaussian-smoothed gradient is ∇f itself and the central difference
    is exact, so ĝ = (gᵀz) z: E ĝ = g, Var ĝ_i = ||g||² + g_i². N = 2000 draws, 5 standard errors."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(4, 4))
    a = torch.tensor(m @ m.T + 4 * np.eye(4))
    b = torch.tensor(rng.normal(size=4))
    theta0 = torch.tensor([0.5, -1.0, 2.0, 0.3], dtype=torch.float64)
    g = (a @ theta0 + b).numpy()

    def quad(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x @ a) * x).sum(-1) + x @ b

    p = theta0.clone().requires_grad_(True)
    opt = get_spec("zo_sgd").build([p], {"lr": 1.0}, seed=11)
    n = 2000
    est = np.empty((n, 4))
    for k in range(n):
        opt.step(Oracles(quad, [p]))
        est[k] = (theta0 - p.detach()).numpy()  # lr = 1: theta0 - theta1 = g_hat
        with torch.no_grad():
            p.copy_(theta0)
    sd = np.sqrt(g @ g + g * g)
    assert np.all(np.abs(est.mean(0) - g) < 5 * sd / math.sqrt(n)), (est.mean(0), g)
    ratio = est.var(0) / sd**2
    assert np.all((ratio > 0.7) & (ratio < 1.3)), ratio  # the variance the tolerance assumed
    assert np.abs(est[:, 0] - g[0]).max() > 1.0  # single draws are far from g: a real estimator


# ----------------------------------------------------------------------------------- clipping

CLIPS = {"norm": Clip("norm", threshold=0.5), "value": Clip("value", threshold=0.3),
         "coordinate": Clip("coordinate", fraction=0.3)}
# each optimizer's unclipped estimate g_hat of its first step, from its rule with lr = 1 (theta0 -
# theta1 = g_hat), with hyperparameters where the rule is a plain step along -g_hat
ESTIMATED = {
    "zo_sgd": (lambda v: rule_spsa("sgd")(v, F7, SEED), {"lr": 1.0, "q": 2, "eps": 1e-2}),
    "sparse_mezo": (lambda v: rule_spsa("sparse")(v, F7, SEED), {"lr": 1.0, "q": 2, "sparsity": 0.5}),
    "zo_sgd_mmt": (lambda v: rule_spsa("mmt")(v, F7, SEED), {"lr": 1.0}),
    "forward_grad": (lambda v: rule_forward_grad(v, F7, SEED), {"lr": 1.0}),
    "zo_cge": (lambda v: rule_cge(v, F7, SEED), {"lr": 1.0, "density": 0.5}),
    "zo_ranksgd": (lambda v: rule_ranksgd(v, F7, SEED), {"lr": 1.0}),
}


@pytest.mark.parametrize("kind", list(CLIPS))
@pytest.mark.parametrize("name", list(ESTIMATED))
def test_the_estimate_is_clipped_before_the_update(name: str, kind: str) -> None:
    """theta1 = theta0 - clip(g_hat) for a step of lr 1, with g_hat from the unclipped rule and the
    clipping done by hand; ``diagnostics()`` reports the clipped fraction."""
    rule, hp = ESTIMATED[name]
    values = schedule(name, [hp])
    estimate = THETA7 - rule(values)[0]
    want, fraction = clip_np(estimate, CLIPS[kind])
    assert 0 < fraction  # the clip is active
    params = make_params()
    opt = get_spec(name).build(params, values[0], seed=SEED)
    opt.clip = CLIPS[kind]
    opt.step(Oracles(F7.loss, params))
    np.testing.assert_allclose(THETA7 - flat(params), want, rtol=1e-10, atol=1e-12)
    assert get_spec(name).read_diagnostics(opt) == {"clipped_fraction": pytest.approx(fraction, rel=1e-12)}


@pytest.mark.parametrize("kind", list(CLIPS))
def test_the_conservative_rule_compares_the_points_of_the_clipped_estimate(kind: str) -> None:
    """ZO-SGD-Cons with a clip: f at theta and at theta -+ lr clip(g_hat) decide, by ZO-Bench's
    branches, where theta goes (norm clipping scales the projected gradient; the other kinds
    evaluate the materialised points)."""
    lr = 0.1
    values = schedule("zo_sgd_cons", [{"lr": lr, "eps": 1e-2}])
    z = direction(seed_rule(SEED, 0))
    f = F7.f
    proj = (f(THETA7 + 1e-2 * z) - f(THETA7 - 1e-2 * z)) / 2e-2
    g, fraction = clip_np(proj * z, CLIPS[kind])
    f0, f_desc, f_asc = f(THETA7), f(THETA7 - lr * g), f(THETA7 + lr * g)
    if f_desc > f0:
        want = THETA7 if f0 < f_asc else THETA7 + lr * g
    else:
        want = THETA7 - lr * g if f_desc < f_asc else THETA7 + lr * g
    params = make_params()
    opt = get_spec("zo_sgd_cons").build(params, values[0], seed=SEED)
    opt.clip = CLIPS[kind]
    oracles = Oracles(F7.loss, params)
    opt.step(oracles)
    np.testing.assert_allclose(flat(params), want, rtol=1e-10, atol=1e-12)
    assert not np.allclose(want, THETA7) and oracles.counts.function_values == 5
    assert opt.diagnostics() == {"clipped_fraction": pytest.approx(fraction, rel=1e-12)}


class LargestAllocation(TorchDispatchMode):
    """The largest tensor (in elements) any operation allocates while active: outputs that share
    storage with an input (views, in-place results) are not allocations."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize(("kind", "lean"), [("norm", True), ("value", True), ("coordinate", False)])
def test_clipping_mezo_allocates_no_parameter_sized_tensor_except_coordinate_clipping(
        kind: str, lean: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """MeZO on a module through ModuleOracles (directions in chunks of 16): a step clipped by norm
    or by value allocates nothing as large as the 200-entry weight; coordinate clipping needs every
    |g_i| at once, as its docstring says (204 entries: both tensors)."""
    monkeypatch.setattr(engine.oracles, "CHUNK", 16)
    torch.manual_seed(0)
    model = nn.Linear(50, 4).double()
    batch = (torch.randn(3, 50, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    oracles = ModuleOracles(model, lambda m, b: (m(b[0]) - b[1]).square().mean(), batch)
    opt = get_spec("zo_sgd").build(oracles.params, {"q": 2}, seed=SEED)
    opt.clip = CLIPS[kind]
    with torch.no_grad(), LargestAllocation() as seen:
        opt.step(oracles)
    assert (seen.largest < 200) == lean, seen.largest
    assert seen.largest >= 204 or lean
    assert opt.diagnostics()["clipped_fraction"] > 0


# --------------------------------------------------------------------------------- contracts

@pytest.mark.parametrize("name", ["zo_sgd", "sparse_mezo", "zo_sgd_cons"])
def test_evaluation_never_writes_theta(name: str) -> None:
    params = make_params()
    snapshots: list[np.ndarray] = []

    def snapshotting(x: torch.Tensor) -> torch.Tensor:
        snapshots.append(flat(params))
        return F7.loss(x)

    hp = {"q": 2} if name != "zo_sgd_cons" else {}
    opt = get_spec(name).build(params, hp, seed=SEED)
    for _ in range(4):
        before = flat(params)
        snapshots.clear()
        opt.step(Oracles(snapshotting, params))
        assert snapshots and all(np.array_equal(s, before) for s in snapshots)  # bit for bit
        assert not np.array_equal(flat(params), before)
    if name != "zo_sgd_cons":  # lr = 0 and no decay: after steps, theta is bit-identical
        params = make_params()
        opt = get_spec(name).build(params, {"q": 2}, seed=SEED)
        for group in opt.param_groups:
            group["lr"] = 0.0  # below the spec's range: set directly
        for _ in range(3):
            opt.step(Oracles(F7.loss, params))
        assert np.array_equal(flat(params), THETA7)


def test_sparse_mezo_with_nothing_masked_is_mezo_bit_for_bit() -> None:
    a = run_case("sparse_mezo", schedule("sparse_mezo", [{"sparsity": 0.0, "q": 2}] * 4), F7, SEED)
    b = run_case("zo_sgd", schedule("zo_sgd", [{"q": 2}] * 4), F7, SEED)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("transform", [torch.exp, lambda y: 3 * y + 7], ids=["exp", "affine"])
def test_ranking_steps_are_invariant_under_monotone_transforms(transform) -> None:
    moved = analytic("moved", F7.shapes, THETA7, lambda x: transform(F7.f(x)), F7.grad)
    for name, same in (("zo_ranksgd", True), ("zo_sgd", False)):
        values = schedule(name, [{}] * STEPS)
        base, other = run_case(name, values, F7, SEED), run_case(name, values, moved, SEED)
        if same:
            assert all(np.array_equal(x, y) for x, y in zip(base, other, strict=True))
        else:
            assert not np.allclose(base[-1], other[-1], rtol=1e-3)


COUNTS = [
    ("zo_sgd", {"q": 2}, dict(function_values=4)),
    ("zo_sgd", {}, dict(function_values=2)),
    ("zo_sgd_mmt", {"q": 3}, dict(function_values=6)),
    ("zo_sgd_cons", {}, dict(function_values=5)),
    ("zo_sgd_sign", {}, dict(function_values=2)),
    ("zo_adam", {"q": 2}, dict(function_values=4)),
    ("sparse_mezo", {}, dict(function_values=2)),
    ("forward_grad", {}, dict(jvps=1)),
    ("zo_cge", {"density": 0.5}, dict(function_values=5)),  # ceil(0.5 * 7) = 4 coordinates + f(theta)
    ("zo_ranksgd", {"m": 4}, dict(rankings=1)),
]


@pytest.mark.parametrize(("name", "hp", "per_step"), COUNTS)
def test_oracle_counts_per_step(name: str, hp: dict, per_step: dict) -> None:
    params = make_params()
    opt = get_spec(name).build(params, hp, seed=SEED)
    oracles = Oracles(F7.loss, params)
    batched_calls = []
    values = oracles.values
    oracles.values = lambda pts: (batched_calls.append(pts.shape[0]), values(pts))[1]
    for _ in range(3):
        opt.step(oracles)
    want = {k: 0 for k in ("function_values", "gradients", "hvps", "jvps", "rankings", "surrogate_gradients")}
    want.update({k: 3 * v for k, v in per_step.items()})
    assert oracles.counts.as_dict() == want
    if name == "zo_cge":
        assert batched_calls == [5, 5, 5]  # one batched call per step: f(theta) and the 4 points


def test_a_plain_closure_or_foreign_oracles_are_refused() -> None:
    params = make_params()
    opt = get_spec("zo_sgd").build(params)
    with pytest.raises(TypeError, match="Oracles closure"):
        opt.step(lambda: F7.loss(torch.zeros(1, 7)))
    with pytest.raises(ValueError, match="same order"):
        opt.step(Oracles(F7.loss, params[::-1]))


GAME = seven_d(ascent=np.array([False, True, False, False, True, True, False]))


@pytest.mark.parametrize("name", ["zo_sgd", "zo_adam", "sparse_mezo", "forward_grad", "zo_cge"])
def test_on_a_min_max_game_the_estimate_follows_the_descent_field(name: str) -> None:
    """The rule with the estimate of grad f negated on the maximizing coordinates (the references
    read the problem's ascent mask), and not the plain rule."""
    case = CASES[name]
    values = schedule(name, [case.settings] * STEPS)
    got = run_case(name, values, GAME, case.seed)
    want = case.rule(values, GAME, case.seed)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-10, atol=1e-12)
    assert not np.allclose(got[-1], run_case(name, values, F7, case.seed)[-1])


# ------------------------------------------------------------------------------------ in a Run

HOLD = 25


def steps_to_hold(run: Run, target: np.ndarray, tol: float, budget: int) -> int | None:
    held = 0
    for t in range(budget):
        (record,) = run.step()
        held = held + 1 if np.linalg.norm(record.position[0] - target) < tol else 0
        if held == HOLD:
            return t + 1
    return None


ZO_ON_THE_BOWL = [n for n, c in CASES.items()
                  if get_spec(n).family == "zeroth-order" and isinstance(c.bowl, Target)]


@pytest.mark.parametrize("name", ZO_ON_THE_BOWL)
def test_converges_on_the_bowl_in_a_run(name: str, device: str) -> None:
    """The case table's bowl budget (test_convergence steps the optimizer as a run does) met by a
    Run itself: the catalog's bowl from (-1.5, 2), run seed 0 (the first trajectory's optimizer
    seed is then 0, as in test_convergence)."""
    target = CASES[name].bowl
    config = RunConfig(lanes=({"optimizer": name},), start=(-1.5, 2.0), seed=0, device=device)
    run = Run(get_landscape("quadratic"), config)
    assert steps_to_hold(run, np.zeros(2), target.tol, target.budget) is not None, name


def test_zo_sgd_solves_a_regularised_bilinear_game_in_a_run(device: str) -> None:
    """min_x max_y xy + (x^2 - y^2)/2: the field is a contraction for GDA, equilibrium 0. Minimizing
    f instead would send y off to infinity."""
    run = Run(bilinear_game(alpha=1.0), RunConfig(lanes=({"optimizer": "zo_sgd"},), seed=0, device=device))
    assert steps_to_hold(run, np.zeros(2), 1e-2, 1_500) is not None


def test_sparse_mezo_moves_only_the_small_weights(device: str) -> None:
    """From (-4, 2) only y, the smaller weight, is ever perturbed or updated: on the bowl centred
    at 0, x stays at -4 bit for bit; on the bowl whose x-optimum is -4 (the fine-tuning regime the
    paper targets: large weights already right) it converges."""
    config = RunConfig(lanes=({"optimizer": "sparse_mezo"},), seed=0, device=device)
    records = Run(get_landscape("quadratic"), config).run(200)
    assert all(r.position[0][0] == -4.0 for r in records) and abs(records[-1].position[0][1]) < 1e-2
    shifted = AnalyticFunction(
        name="shifted_bowl", dim=2, latex=r"\tfrac12((x+4)^2 + 10y^2)",
        fn=lambda x: 0.5 * ((x[..., 0] + 4) ** 2 + 10 * x[..., 1] ** 2),
        bounds=Bounds((-6.0, -3.0), (2.0, 3.0)), minima=(Minimum((-4.0, 0.0), 0.0),), start=(-4.0, 2.0))
    run = Run(shifted, config)
    assert steps_to_hold(run, np.array([-4.0, 0.0]), 1e-2, 400) is not None


def test_a_person_ranks_zo_ranksgd_candidates_in_a_run(device: str) -> None:
    problem = get_landscape("quadratic")
    run = Run(problem, RunConfig(lanes=({"optimizer": "zo_ranksgd", "hyperparameters": {HUMAN: True}},),
                                 seed=1, device=device))
    v = get_spec("zo_ranksgd").validate({HUMAN: True})
    row_seed = trajectory_seed(1, 0, 0)  # the run's seed, lane 0, row 0
    theta0 = np.array(problem.start)
    like = [torch.zeros(2, dtype=torch.float64)]
    xi = np.stack([seeded_direction(seed_rule(row_seed, 0, i), like)[0].numpy() for i in range(v["m"])])
    assert run.step() == [] and set(run.awaiting) == {0}
    first = run.awaiting[0].clone()
    np.testing.assert_allclose(first.cpu().numpy(), theta0 + v["mu"] * xi, rtol=1e-15)
    assert run.step() == [] and torch.equal(run.awaiting[0], first)  # waiting: the same candidates
    f = problem.fn(first).cpu().numpy()
    contrarian = tuple(int(i) for i in np.argsort(-f))  # a person who prefers higher loss
    run.apply(SubmitRanking(0, contrarian))
    (record,) = run.step()  # a record holds the point the step started from, and its counts
    np.testing.assert_array_equal(record.position[0], theta0)
    edges = [(contrarian[r], contrarian[j]) for r in range(v["m"]) for j in range(r + 1, v["m"])]
    want = theta0 - v["lr"] * sum(xi[j] - xi[i] for i, j in edges) / len(edges)
    np.testing.assert_allclose(run.lanes[0].points()[0].detach().cpu().numpy(), want, rtol=1e-13)
    assert 0.5 * (want**2 * [1, 10]).sum() > 0.5 * (theta0**2 * [1, 10]).sum()  # it went uphill, as told
    assert record.step == 0 and record.counts.rankings == 1 and record.counts.function_values == 0
    assert run.step() == [] and not torch.equal(run.awaiting[0], first)  # step 1: new candidates
    run.apply(SetHyperparameter(0, HUMAN, False))
    records = run.run(3)
    assert [r.step for r in records] == [1, 2, 3] and records[-1].counts.rankings == 4


# ---------------------------------------------------------------------------- DeepZero's ZO-GraSP

_BLOCK_WEIGHTS = np.concatenate([np.full(40, 4.0), np.zeros(400)])


def _blocks_loss(x: object) -> object:
    """40 coordinates that matter (curvature 4) beside 400 that do not (curvature 0); numpy or torch."""
    if isinstance(x, torch.Tensor):
        return 0.5 * (torch.as_tensor(_BLOCK_WEIGHTS, dtype=x.dtype, device=x.device) * x * x).sum(-1)
    return 0.5 * (_BLOCK_WEIGHTS * x * x).sum(-1)


BLOCKS = analytic("two_blocks", ((40,), (400,)), np.concatenate([np.ones(40), np.full(400, 0.1)]),
                  _blocks_loss, lambda x: _BLOCK_WEIGHTS * x)


def _two_blocks() -> tuple[list[torch.Tensor], object]:
    """The blocks' leaves at their start (the important ones at 1, the others at 0.1) and the loss."""
    return [torch.tensor(a).requires_grad_(True) for a in BLOCKS.split(BLOCKS.x0)], _blocks_loss


def test_zo_grasp_counts_per_tensor_are_the_references_and_cost_2q_plus_2_values_once() -> None:
    """The per-tensor counts of the first zo_grasp step against the numpy ZO-GraSP (the same seeded
    directions), the sparse coordinates of every step within those counts, and the scoring's
    2 q + 2 = 386 function values at the first step only."""
    params, f = _two_blocks()
    opt = get_spec("zo_cge").build(params, {"selection": "zo_grasp", "density": 0.1}, seed=SEED)
    values = get_spec("zo_cge").validate({"selection": "zo_grasp", "density": 0.1})
    want = zo_grasp_counts(BLOCKS, BLOCKS.x0, values, SEED, 0)
    evaluations = []
    for t in range(3):
        o = Oracles(f, params)
        opt.step(o)
        evaluations.append(o.counts.function_values)
        subset = opt.coordinates(t, 440)
        assert [int((subset < 40).sum()), int((subset >= 40).sum())] == want
    assert opt.allocation == want and sum(want) == 44 and want[0] >= 35  # most go where the loss is
    assert evaluations == [2 * 192 + 2 + 45, 45, 45]


def test_zo_grasp_guided_coordinates_beat_uniform_ones_at_equal_queries() -> None:
    """DeepZero's claim at small scale: ZO-GraSP-guided layer-wise sparsity trains better than random
    sparsity at the same query budget. 1,500 function values (the scoring's 386 included): guided,
    the loss of the important block falls to 5e-4; uniform (10% of the coordinates, most of them in
    the block that does not matter) leaves it above 7 (measured, 4 seeds)."""
    results = {}
    for selection in ("uniform", "zo_grasp"):
        losses = []
        for seed in range(3):
            params, f = _two_blocks()
            hp = {"selection": selection, "density": 0.1, "lr": 0.1}
            opt = get_spec("zo_cge").build(params, hp, seed=seed)
            spent = 0
            while spent < 1_500:
                o = Oracles(f, params)
                opt.step(o)
                spent += o.counts.function_values
            losses.append(float(f(torch.cat([p.detach() for p in params]))))
        results[selection] = losses
    assert max(results["zo_grasp"]) < 1e-2 * min(results["uniform"]), results
