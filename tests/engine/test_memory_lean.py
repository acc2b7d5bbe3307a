"""SCALE and FRUGAL beyond their rule checks (the authors' reference code transcribed in numpy is in
the case table, tests/engine/optimizer_cases.py, driven by test_optimizer_rules.py): the properties
their memory savings rest on -- which tensors carry state, how much, when FRUGAL's subspace is
redrawn and what density it reports -- their extremes, and races on a network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.registry import get_spec
from engine.run import Run, RunConfig
from landscapes.networks import get_network
from tests.engine.optimizer_cases import (
    NET,
    PROBLEMS,
    frugal_columns,
    given,
    rule_frugal,
    rule_scale,
    run_case,
    schedule,
)

RTOL, ATOL = 1e-12, 1e-14


# ---------------------------------------------------------------------------- SCALE

def test_a_normalised_matrix_update_has_rms_lr_in_every_row() -> None:
    """The hidden layer (no momentum) with the defaults and no decay: each row moves by a vector of
    root mean square exactly lr."""
    rp = PROBLEMS["given_net"]
    (after,) = run_case("scale", schedule("scale", [{}]), rp, 0)
    d = (rp.split(after)[0] - rp.split(rp.x0)[0]).reshape(NET[0][0], -1)
    np.testing.assert_allclose(np.sqrt((d**2).mean(axis=1)), get_spec("scale").defaults()["lr"], rtol=1e-12)


def test_scale_keeps_state_only_for_the_output_layer_and_the_vectors() -> None:
    ps = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in NET]
    opt = get_spec("scale").build(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    state = {i: sum(v.numel() for v in opt.state[p].values() if isinstance(v, torch.Tensor))
             for i, p in enumerate(ps)}
    assert state == {0: 0, 1: 2 * 4, 2: 2 * 4, 3: 2 * 2}  # W1: none; b: Adam's 2 moments; W2: momentum


def test_scale_output_layer_is_the_last_matrix_even_among_equal_shapes() -> None:
    """A hidden layer shaped like the output layer gets no momentum: only the last matrix does."""
    rp = given("equal", [(3, 3), (3,), (3, 3), (3,)], seed=8)
    states = []
    values = schedule("scale", [{"lr": 0.05}] * 5)
    got = run_case("scale", values, rp, 0, on_step=lambda o, ps: states.append(
        ("momentum_buffer" in o.state[ps[0]], "momentum_buffer" in o.state[ps[2]])))
    assert states == [(False, True)] * 5
    np.testing.assert_allclose(np.stack(got), np.stack(rule_scale(values, rp, 0)), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", ["scale", "frugal"])
def test_race_on_a_network_equals_single_runs(name: str, device: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Both specs are per_trajectory: each start of a race has its own optimizer (own output layer,
    own subsets), so with one seed for every row, row i is the run from start i alone."""
    monkeypatch.setattr("engine.run.trajectory_seed", lambda seed, lane, row: 77)
    assert get_spec(name).per_trajectory
    problem = get_network("moons_mlp", width=8)
    hp = {"lr": 0.01, "rho": 0.5, "update_gap": 2} if name == "frugal" else {"lr": 0.01}
    cfg = {"lanes": ({"optimizer": name, "hyperparameters": hp},), "device": device}
    race = Run(problem, RunConfig(**cfg, n_starts=3, seed=2))
    race.run(4)
    for i, row in enumerate(race.starts):
        single = Run(problem, RunConfig(**cfg, start=tuple(row.tolist())))
        single.run(4)
        np.testing.assert_allclose(race.positions(0)[i], single.positions(0)[0], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- FRUGAL

@pytest.mark.parametrize("which", ["defaults", "settings"])
def test_frugal_draws_its_subsets_as_documented_and_reports_their_density(which: str) -> None:
    """The columns in force at step k are the documented draw of the last re-selection (k - k % T):
    ``randperm(columns)[:floor(rho n)]`` per tensor from one generator seeded with the seed; they
    hold for T steps, have no repeats, and the state density is sum(rows x floor(rho n)) / P."""
    rp = PROBLEMS["given_net"]
    values = schedule("frugal", [{} if which == "defaults" else {"rho": 0.4, "update_gap": 3}] * 7)
    v = values[0]
    seen: list[list[np.ndarray]] = []
    density: list[float] = []

    def record(opt: torch.optim.Optimizer, ps: list[torch.Tensor]) -> None:
        seen.append([opt.state[p]["indices"].numpy().copy() for p in ps])
        density.append(opt.diagnostics()["state_density"])

    run_case("frugal", values, rp, 9, on_step=record)
    gen = torch.Generator().manual_seed(9)
    for k, current in enumerate(seen):
        if k % v["update_gap"] == 0:
            n = [frugal_columns(s) for s in rp.shapes]
            drawn = [torch.randperm(c, generator=gen)[:int(c * v["rho"])].numpy() for c in n]
        assert all(np.array_equal(a, b) and len(set(a.tolist())) == len(a)
                   for a, b in zip(current, drawn, strict=True))
    held = sum((np.prod(s) // frugal_columns(s)) * int(frugal_columns(s) * v["rho"]) for s in rp.shapes)
    assert density == [held / rp.size] * 7 and 0 < held < rp.size


def test_frugal_extremes_are_signsgd_and_adamw_until_the_first_redraw() -> None:
    """rho = 0: no state, every coordinate takes lr * sign(g) (signSGD); rho = 1 with no redraw in
    the run: Adam on everything, i.e. torch.optim.AdamW's rule (decoupled decay). With redraws,
    rho = 1 is Adam restarted every T steps: it leaves AdamW at the first one."""
    rp = given("frugal_extremes", [(3, 5), (4,)], seed=4)
    hp = {"lr": 0.05, "weight_decay": 0.1}
    sign = run_case("frugal", schedule("frugal", [{**hp, "rho": 0.0}] * 7), rp, 0)
    th, want = rp.x0.copy(), []
    for t in range(7):
        th = th * (1 - 0.05 * 0.1) - 0.05 * np.sign(rp.gradient(t, th))
        want.append(th)
    np.testing.assert_allclose(np.stack(sign), np.stack(want), rtol=RTOL, atol=ATOL)

    ps = [torch.tensor(t, requires_grad=True) for t in rp.split(rp.x0)]
    adamw = torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)
    reference = []
    for t in range(7):
        for p, g in zip(ps, rp.split(rp.gradient(t, None)), strict=True):
            p.grad = torch.tensor(g)
        adamw.step()
        reference.append(rp.join([p.detach().numpy() for p in ps]))
    adam = run_case("frugal", schedule("frugal", [{**hp, "rho": 1.0, "update_gap": 1000}] * 7), rp, 0)
    np.testing.assert_allclose(np.stack(adam), np.stack(reference), rtol=1e-12, atol=1e-14)
    restarted = run_case("frugal", schedule("frugal", [{**hp, "rho": 1.0, "update_gap": 3}] * 7), rp, 0)
    np.testing.assert_allclose(np.stack(restarted[:3]), np.stack(reference[:3]), rtol=1e-12, atol=1e-14)
    assert not np.allclose(restarted[3], reference[3])  # step 3: fresh moments, not AdamW's


def test_frugal_state_is_two_rho_p_and_a_new_rho_takes_effect_at_once() -> None:
    ps = [torch.zeros(8, 10, dtype=torch.float64, requires_grad=True), torch.zeros(6, dtype=torch.float64,
                                                                                   requires_grad=True)]
    spec = get_spec("frugal")
    opt = spec.build(ps, {"rho": 0.5})

    def moments() -> int:
        return sum(opt.state[p][k].numel() for p in ps for k in ("exp_avg", "exp_avg_sq"))

    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert moments() == 2 * (8 * 5 + 3)  # 2 rho P: half the columns of W, half the entries of b
    assert opt.diagnostics() == {"state_density": (8 * 5 + 3) / 86}
    spec.apply(opt, "rho", 0.2)
    opt.step()
    assert moments() == 2 * (8 * 2 + 1)  # floor(0.2 * 10) columns, floor(0.2 * 6) entries
    assert opt.diagnostics() == {"state_density": (8 * 2 + 1) / 86}


# ---------------------------------------------------------------------------- FRUGAL's projections

@pytest.mark.parametrize("which", ["defaults", "settings"])
@pytest.mark.parametrize("projection", ["blockwise", "svd"])
def test_frugal_blockwise_and_svd_projections_follow_the_reference(projection: str, which: str) -> None:
    """BlockAdamW (random round(rho L) tensors get Adam, the rest signSGD) and GaloreAdamW (Adam on the
    projection onto the gradient's top singular vectors, signSGD on the rest) against the numpy
    transcription, on a network's tensors and on a conv kernel, with redraws every T steps."""
    settings = {} if which == "defaults" else {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6,
                                               "weight_decay": 0.1, "rho": 0.5, "update_gap": 3}
    for name in ("given_net", "given_conv"):
        rp = PROBLEMS[name]
        values = schedule("frugal", [{**settings, "projection": projection}] * 7)
        np.testing.assert_allclose(np.stack(run_case("frugal", values, rp, 9)),
                                   np.stack(rule_frugal(values, rp, 9)), rtol=1e-10, atol=1e-12)


def test_frugal_svd_projector_spans_the_gradients_top_singular_vectors() -> None:
    """GaLore's side rule: a tall (or square) matrix is projected on the right onto round(rho n) right
    singular vectors, a wide one on the left onto round(rho m) left ones; the basis is orthonormal and
    spans the gradient's top singular subspace at the redraw."""
    w, v = torch.zeros(6, 4, dtype=torch.float64, requires_grad=True), torch.zeros(3, 8, dtype=torch.float64,
                                                                                   requires_grad=True)
    opt = get_spec("frugal").build([w, v], {"rho": 0.5, "projection": "svd"})
    gen = torch.Generator().manual_seed(0)
    w.grad, v.grad = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(3, 8, generator=gen,
                                                                                       dtype=torch.float64)
    opt.step()
    for p, side, rank in ((w, "right", 2), (v, "left", 2)):
        state = opt.state[p]
        basis = state["projector"]
        u, _, vh = np.linalg.svd(p.grad.numpy(), full_matrices=False)
        top = vh[:rank] if side == "right" else u[:, :rank].T
        mine = basis.numpy() if side == "right" else basis.numpy().T
        assert state["side"] == side and mine.shape == (rank, p.shape[1] if side == "right" else p.shape[0])
        np.testing.assert_allclose(mine @ mine.T, np.eye(rank), atol=1e-12)
        np.testing.assert_allclose(mine.T @ mine, top.T @ top, atol=1e-12)  # the same subspace


def test_frugal_projections_hold_equal_moments_at_equal_density() -> None:
    """Four [6, 4] tensors at rho = 0.5: random columns (2 of 4 per tensor), blockwise (2 of 4 tensors)
    and SVD (rank 2 of 4, right side) all keep 48 entries per Adam moment, a state density of 1/2.
    What differs is the projection's own data: the random columns' index permutations (4 x 4 int64,
    the reference's randperm slice keeps the permutation), the SVD's bases (4 x [2, 4] floats, GaLore's
    projector), none for blocks; the total state, by engine.memory.state_bytes, is each's sum."""
    from engine.memory import state_bytes
    shapes, b = [(6, 4)] * 4, 8
    moments, totals = {}, {}
    for projection in ("random", "blockwise", "svd"):
        ps = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        opt = get_spec("frugal").build(ps, {"rho": 0.5, "projection": projection}, seed=1)
        gen = torch.Generator().manual_seed(2)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        opt.step()
        moments[projection] = sum(opt.state[p][k].numel() for p in ps for k in ("exp_avg", "exp_avg_sq")
                                  if k in opt.state[p])
        totals[projection] = state_bytes(opt)
        assert opt.diagnostics() == {"state_density": 0.5}
    assert moments == {"random": 96, "blockwise": 96, "svd": 96}
    assert totals == {"random": 96 * b + 4 * 4 * 8, "blockwise": 96 * b, "svd": 96 * b + 4 * 2 * 4 * b}


def test_frugal_blockwise_redraws_whole_tensors_from_its_generator() -> None:
    """The active tensors at each redraw are randperm(L)[:round(rho L)] of the seeded generator; an
    active tensor's whole entries have Adam state, an inactive one none."""
    rp = PROBLEMS["given_net"]
    values = schedule("frugal", [{"rho": 0.5, "update_gap": 2, "projection": "blockwise"}] * 6)
    active: list[list[bool]] = []
    run_case("frugal", values, rp, 9,
             on_step=lambda opt, ps: active.append(["exp_avg" in opt.state[p] for p in ps]))
    gen = torch.Generator().manual_seed(9)
    for k, now in enumerate(active):
        if k % 2 == 0:
            chosen = set(torch.randperm(4, generator=gen)[:2].tolist())
        assert now == [i in chosen for i in range(4)]
