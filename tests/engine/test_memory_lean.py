"""SCALE and FRUGAL against numpy transcriptions of the authors' reference code, on a small
network's parameter tensors (matrices and vectors), plus the properties their memory savings
rest on: which tensors carry state, how much, and when FRUGAL's subspace is redrawn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.registry import Oracle, get_spec
from engine.run import Run, RunConfig, _Lane
from landscapes.networks import get_network

torch.set_num_threads(1)

RTOL, ATOL = 1e-12, 1e-14
SCALES = (1.0, 0.3, 2.0, 0.05, 1.5, 0.7, 1.2)
NET = [(4, 3), (4,), (2, 4), (2,)]  # W1, b1, W2 (the output layer), b2 in torch's [out, in] layout


def given(shapes: list[tuple[int, ...]], seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[s * rng.standard_normal(shape) for shape in shapes] for s in SCALES]


def start(shapes: list[tuple[int, ...]], seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, shape) for shape in shapes]


def run_registry(name: str, hp: dict, th0: list[np.ndarray], grads: list[list[np.ndarray]],
                 seed: int = 0, on_step=None) -> list[list[np.ndarray]]:
    ps = [torch.tensor(t, dtype=torch.float64, requires_grad=True) for t in th0]
    opt = get_spec(name).build(ps, hp, seed=seed)
    out = []
    for gs in grads:
        for p, g in zip(ps, gs, strict=True):
            p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        if on_step is not None:
            on_step(opt, ps)
        out.append([p.detach().numpy().copy() for p in ps])
    return out


def assert_trajectories_close(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> None:
    for step_got, step_want in zip(got, want, strict=True):
        for a, b in zip(step_got, step_want, strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- SCALE

def ref_scale(v: dict, shapes: list[tuple[int, ...]], output: int | None = None):
    """The authors' SCALE step in numpy: matrices get g (the output layer ``output``, by default
    the last matrix: its EMA, m_0 = 0) divided row-wise by max(RMS, 1e-8); vectors get AdamW with
    betas (0.9, 0.999), eps 1e-8 and the step lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps);
    decay theta *= 1 - lr wd."""
    if output is None:
        output = [i for i, s in enumerate(shapes) if len(s) >= 2][-1]
    st = [{"m": 0.0, "v": 0.0, "t": 0, "buf": 0.0} for _ in shapes]
    lr, wd, beta = v["lr"], v["weight_decay"], v["momentum"]

    def step(ths: list[np.ndarray], gs: list[np.ndarray]) -> list[np.ndarray]:
        new = []
        for i, (th, g, s) in enumerate(zip(ths, gs, st, strict=True)):
            if g.ndim >= 2:
                m = g
                if i == output:
                    s["buf"] = beta * s["buf"] + (1 - beta) * g
                    m = s["buf"]
                flat = m.reshape(m.shape[0], -1)
                rms = np.maximum(np.sqrt((flat**2).mean(axis=1, keepdims=True)), 1e-8)
                new.append(th * (1 - lr * wd) - lr * (flat / rms).reshape(m.shape))
            else:
                s["t"] += 1
                t = s["t"]
                s["m"] = 0.9 * s["m"] + 0.1 * g
                s["v"] = 0.999 * s["v"] + 0.001 * g * g
                step_size = lr * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
                new.append(th * (1 - lr * wd) - step_size * s["m"] / (np.sqrt(s["v"]) + 1e-8))
        return new
    return step


def run_reference(step, th0: list[np.ndarray], grads: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    ths, out = [t.copy() for t in th0], []
    for gs in grads:
        ths = step(ths, gs)
        out.append([t.copy() for t in ths])
    return out


@pytest.mark.parametrize("hp", [{}, {"lr": 0.05, "momentum": 0.6, "weight_decay": 0.1}],
                         ids=["defaults", "non-default"])
@pytest.mark.parametrize("shapes", [NET, [(3, 2, 2, 2), (3,), (5, 12)]], ids=["mlp", "conv"])
def test_scale_matches_the_reference_code(hp: dict, shapes: list[tuple[int, ...]]) -> None:
    spec = get_spec("scale")
    assert spec.oracle is Oracle.GRADIENTS and not spec.row_separable
    th0, grads = start(shapes), given(shapes)
    got = run_registry("scale", hp, th0, grads)
    want = run_reference(ref_scale(spec.validate(hp), shapes), th0, grads)
    assert_trajectories_close(got, want)
    # a normalised matrix update has RMS lr in every row (here: the hidden layer, no momentum, no decay)
    if not hp:
        d = (got[0][0] - th0[0]).reshape(shapes[0][0], -1)
        np.testing.assert_allclose(np.sqrt((d**2).mean(axis=1)), spec.validate(hp)["lr"], rtol=1e-12)


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
    shapes = [(3, 3), (3,), (3, 3), (3,)]
    ps = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    opt = get_spec("scale").build(ps)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert "momentum_buffer" not in opt.state[ps[0]] and "momentum_buffer" in opt.state[ps[2]]
    th0, grads = start(shapes), given(shapes, seed=8)
    got = run_registry("scale", {"lr": 0.05}, th0, grads)
    want = run_reference(ref_scale(get_spec("scale").validate({"lr": 0.05}), shapes, output=2), th0, grads)
    assert_trajectories_close(got, want)


@pytest.mark.parametrize("name", ["scale", "frugal"])
def test_race_on_a_network_equals_single_runs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both specs are per_trajectory: each start of a race has its own optimizer (own output layer,
    own subsets), so with one seed for every row, row i is the run from start i alone."""
    monkeypatch.setattr(_Lane, "_row_seed", lambda self, row: 77)
    assert get_spec(name).per_trajectory
    problem = get_network("moons_mlp", width=8)
    hp = {"lr": 0.01, "rho": 0.5, "update_gap": 2} if name == "frugal" else {"lr": 0.01}
    cfg = {"lanes": ({"optimizer": name, "hyperparameters": hp},), "device": "cpu"}
    race = Run(problem, RunConfig(**cfg, n_starts=3, seed=2))
    race.run(4)
    for i, row in enumerate(race.starts):
        single = Run(problem, RunConfig(**cfg, start=tuple(row.tolist())))
        single.run(4)
        np.testing.assert_allclose(race.positions(0)[i], single.positions(0)[0], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- FRUGAL

def ref_frugal(v: dict, subsets: list[list[np.ndarray]]):
    """The authors' CoordAdamW step in numpy (columns of a matrix, coordinates of a vector):
    at every refresh (step k with k % T == 0) the subset is replaced and Adam's moments and step
    count reset; Adam (bias-corrected, denominator sqrt(v)/sqrt(1 - b2^t) + eps) on the subset,
    lr * sign(g) on the rest, decoupled decay. ``subsets[r][i]``: tensor i's columns at refresh r."""
    b1, b2, lr, eps, wd = v["beta1"], v["beta2"], v["lr"], v["eps"], v["weight_decay"]
    st: dict = {"k": 0, "r": -1, "params": []}

    def cols(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return a[:, idx] if a.ndim >= 2 else a[idx]

    def step(ths: list[np.ndarray], gs: list[np.ndarray]) -> list[np.ndarray]:
        if st["k"] % v["update_gap"] == 0:
            st["r"] += 1
            st["params"] = [{"idx": idx, "m": 0.0, "v": 0.0, "t": 0} for idx in subsets[st["r"]]]
        new = []
        for th, g, s in zip(ths, gs, st["params"], strict=True):
            s["t"] += 1
            gs_ = cols(g, s["idx"])
            s["m"] = b1 * s["m"] + (1 - b1) * gs_
            s["v"] = b2 * s["v"] + (1 - b2) * gs_ * gs_
            adam = (s["m"] / (1 - b1 ** s["t"])) / (np.sqrt(s["v"]) / np.sqrt(1 - b2 ** s["t"]) + eps)
            upd = np.sign(g)
            if g.ndim >= 2:
                upd[:, s["idx"]] = adam
            else:
                upd[s["idx"]] = adam
            new.append(th * (1 - lr * wd) - lr * upd)
        st["k"] += 1
        return new
    return step


@pytest.mark.parametrize("hp", [
    {},
    {"lr": 0.05, "beta1": 0.8, "beta2": 0.95, "eps": 1e-6, "weight_decay": 0.1, "rho": 0.4, "update_gap": 3},
], ids=["defaults", "non-default"])
def test_frugal_matches_the_reference_code(hp: dict) -> None:
    spec = get_spec("frugal")
    assert spec.seeded and not spec.row_separable
    v = spec.validate(hp)
    shapes = [(3, 5), (4,)]
    seen: list[list[np.ndarray]] = []

    def record(opt, ps) -> None:  # the subsets in force at each step
        seen.append([opt.state[p]["indices"].numpy().copy() for p in ps])

    th0, grads = start(shapes), given(shapes, seed=2)
    got = run_registry("frugal", hp, th0, grads, seed=9, on_step=record)
    gap = v["update_gap"]
    subsets = [seen[k] for k in range(0, len(seen), gap)]
    for k, current in enumerate(seen):  # a subset holds for T steps, then is redrawn
        for idx, ref, shape in zip(current, subsets[k // gap], shapes, strict=True):
            n = shape[1] if len(shape) >= 2 else shape[0]
            assert np.array_equal(idx, ref) and len(idx) == int(n * v["rho"]) == len(set(idx.tolist()))
            assert idx.min() >= 0 and idx.max() < n
    want = run_reference(ref_frugal(v, subsets), th0, grads)
    assert_trajectories_close(got, want)
    again: list[list[np.ndarray]] = []
    run_registry("frugal", hp, th0, grads, seed=9, on_step=lambda o, ps: again.append(
        [o.state[p]["indices"].numpy().copy() for p in ps]))
    assert all(np.array_equal(a, b)
               for sa, sb in zip(seen, again, strict=True) for a, b in zip(sa, sb, strict=True))


def test_frugal_extremes_are_signsgd_and_adam() -> None:
    """rho = 0: no state, every coordinate takes lr * sign(g) (signSGD); rho = 1 with no redraw in
    the run: Adam on everything, i.e. torch.optim.AdamW's rule (decoupled decay)."""
    shapes = [(3, 5), (4,)]
    th0, grads = start(shapes), given(shapes, seed=4)
    hp = {"lr": 0.05, "weight_decay": 0.1}
    sign = run_registry("frugal", {**hp, "rho": 0.0}, th0, grads)
    def signsgd(ths: list[np.ndarray], gs: list[np.ndarray]) -> list[np.ndarray]:
        return [t * (1 - 0.05 * 0.1) - 0.05 * np.sign(g) for t, g in zip(ths, gs, strict=True)]

    want = run_reference(signsgd, th0, grads)
    assert_trajectories_close(sign, want)
    adam = run_registry("frugal", {**hp, "rho": 1.0, "update_gap": 1000}, th0, grads)
    ps = [torch.tensor(t, requires_grad=True) for t in th0]
    torch_adamw = torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1)
    for step, gs in zip(adam, grads, strict=True):
        for p, g in zip(ps, gs, strict=True):
            p.grad = torch.tensor(g)
        torch_adamw.step()
        for a, p in zip(step, ps, strict=True):
            np.testing.assert_allclose(a, p.detach().numpy(), rtol=1e-12, atol=1e-14)


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
    spec.apply(opt, "rho", 0.2)
    opt.step()
    assert moments() == 2 * (8 * 2 + 1)  # floor(0.2 * 10) columns, floor(0.2 * 6) entries
