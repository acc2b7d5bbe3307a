"""Curvature instruments on runs: exact on problems whose Hessian is known, thresholds follow the
optimizer and its live hyperparameters, probes never change a trajectory, and replays reproduce them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.curvature import HVP, dense_hessian
from engine.events import LoggedEvent, RequestProbe, SetHyperparameter, SetProbes
from engine.instruments import LANDSCAPE_PROBES, NETWORK_PROBES, ProbeConfig
from engine.registry import get_spec
from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_landscape, get_network

EVERY_STEP = ProbeConfig(every=1)


def run_with(problem, *lanes, probes=EVERY_STEP, **kw) -> Run:
    return Run(problem, RunConfig(lanes=tuple(LaneConfig(n, h) for n, h in lanes), device="cpu",
                                  probes=probes, **kw))


def test_thresholds_are_the_classical_formulas() -> None:
    assert get_spec("sgd").stability({"lr": 0.1}).value == pytest.approx(20.0)
    assert get_spec("momentum").stability({"lr": 0.1, "momentum": 0.9}).value == pytest.approx(38.0)
    t = get_spec("adam").stability({"lr": 0.01, "beta1": 0.9})
    assert t.quantity == "preconditioned" and t.value == pytest.approx(3800.0)  # 38 / eta
    assert get_spec("lion").stability is None


def test_probes_on_a_quadratic_are_exact() -> None:
    """f = 1/2 x^T diag(lambda) x: lambda_max, the spectrum, and u^T H u / |u|^2 are known."""
    bowl = get_landscape("quadratic", dim=2, kappa=10.0)
    run = run_with(bowl, ("sgd", {"lr": 0.05}))
    recs = run.run(3)
    for r in recs:
        p = r.curvature
        assert p.lambda_max == pytest.approx(10.0, rel=1e-10)
        np.testing.assert_allclose(p.exact, [1.0, 10.0], rtol=1e-12)
        u = -0.05 * np.array([1.0, 10.0]) * r.position[0]  # the gradient-descent update
        assert p.directional == pytest.approx(u @ (np.array([1.0, 10.0]) * u) / (u @ u), rel=1e-10)
        assert p.threshold.value == pytest.approx(2 / 0.05)


def test_adam_preconditioned_sharpness_matches_a_dense_computation() -> None:
    problem = get_landscape("rosenbrock")
    run = run_with(problem, ("adam", {"lr": 0.01, "beta1": 0.8}))
    recs = run.run(4)
    state = run.lanes[0].optimizer.state[run.lanes[0].params[0]]
    x = recs[-1].position[0]
    # P_t with the state *after* step t: the state the probe of step t saw
    t = int(state["step"])
    v_hat = state["exp_avg_sq"][0].double() / (1 - 0.999**t)
    P = (1 - 0.8**t) * (v_hat.sqrt() + 1e-8)
    H = dense_hessian(lambda z: problem.loss(z[None])[0], torch.tensor(x))
    expected = torch.linalg.eigvals(torch.diag(1 / P) @ H).real.max().item()
    assert recs[-1].curvature.preconditioned == pytest.approx(expected, rel=1e-6)
    assert recs[-1].curvature.threshold.value == pytest.approx((2 + 2 * 0.8) / (0.2 * 0.01))


@pytest.mark.parametrize("name, key", [("rmsprop", "square_avg"), ("adagrad", "sum"),
                                       ("adabelief", "exp_avg_var")])
def test_rms_type_preconditioned_sharpness_matches_a_dense_computation(name: str, key: str) -> None:
    """RMSprop and Adagrad step by g / (sqrt(v) + eps): P = diag(sqrt(v) + eps), threshold 2/eta.
    AdaBelief is Adam's P on its s_t (step count kept in the param group). Before, none of the three
    declared a preconditioner and their probes had no preconditioned sharpness."""
    problem = get_landscape("rosenbrock")
    run = run_with(problem, (name, {"lr": 0.01}))
    recs = run.run(4)
    opt = run.lanes[0].optimizer
    v = opt.state[run.lanes[0].params[0]][key][0].double()
    eps = opt.param_groups[0]["eps"]
    if name == "adabelief":
        t = 4  # pytorch_optimizer counts in the group
        b1, b2 = opt.param_groups[0]["betas"]
        P = (1 - b1**t) * ((v / (1 - b2**t)).sqrt() + eps)
        threshold = (2 + 2 * b1) / ((1 - b1) * 0.01)
    else:
        P, threshold = v.sqrt() + eps, 2 / 0.01
    H = dense_hessian(lambda z: problem.loss(z[None])[0], torch.tensor(recs[-1].position[0]))
    expected = torch.linalg.eigvals(torch.diag(1 / P) @ H).real.max().item()
    assert recs[-1].curvature.preconditioned == pytest.approx(expected, rel=1e-6)
    assert recs[-1].curvature.threshold.quantity == "preconditioned"
    assert recs[-1].curvature.threshold.value == pytest.approx(threshold)


def test_network_lambda_max_matches_the_dense_hessian() -> None:
    problem = get_network("logistic_regression")  # 31 parameters: exact eigenvalues come along
    run = run_with(problem, ("sgd", {"lr": 0.5}), probes=ProbeConfig(every=5, top_k=3, tol=1e-10))
    recs = [r for r in run.run(11) if r.curvature is not None]
    assert [r.step for r in recs] == [0, 5, 10]
    for r in recs:
        exact = r.curvature.exact
        np.testing.assert_allclose(r.curvature.top_k, exact[::-1][:3], rtol=1e-6)


def test_probes_do_not_change_the_trajectory_and_count_their_cost() -> None:
    problem = get_network("moons_mlp", batch_size=32)
    lanes = (("adam", {"lr": 0.01}), ("momentum", {"lr": 0.05}))
    plain = Run(problem, RunConfig(lanes=tuple(LaneConfig(*ln) for ln in lanes), device="cpu")).run(12)
    probed_run = run_with(problem, *lanes, probes=ProbeConfig(every=4, trace=True, density=True,
                                                              density_probes=2, density_steps=10))
    probed = probed_run.run(12)
    for a, b in zip(plain, probed, strict=True):
        np.testing.assert_array_equal(a.loss, b.loss)
        assert a.counts.gradients == b.counts.gradients
    with_probe = [r for r in probed if r.curvature is not None]
    assert [r.step for r in with_probe if r.lane == 0] == [0, 4, 8]
    assert probed[-1].counts.hvps == sum(r.curvature.hvps for r in with_probe if r.lane == probed[-1].lane)
    assert 0 < probed_run.probe_overhead < 1
    p = with_probe[-1].curvature
    assert p.trace is not None and p.density_nodes.shape == (2, 10) and p.exact is not None  # 354 <= 600


def test_threshold_follows_a_live_lr_change_and_replay_reproduces_probes() -> None:
    problem = get_landscape("rosenbrock")
    run = run_with(problem, ("sgd", {"lr": 1e-3}), probes=ProbeConfig(schedule="manual"))
    run.run(2)
    run.apply(SetHyperparameter(0, "lr", 5e-4))
    run.apply(RequestProbe())
    (rec,) = run.step()
    assert rec.curvature.threshold.value == pytest.approx(2 / 5e-4)
    assert run.step()[0].curvature is None  # manual: only on request
    run.apply(SetProbes({"schedule": "every", "every": 2}))
    records = run.run(4)
    assert [r.curvature is not None for r in records] == [True, False, True, False]
    log = [LoggedEvent.from_dict(e) for e in run.event_log()["events"]]
    _, again = Run.replay(problem, run.config, log, run.tick)
    assert all(a.same_values(b) for a, b in zip([rec, *records], again[2:3] + again[4:], strict=True))


def test_log_schedule_is_dense_early_and_sparse_later() -> None:
    cfg = ProbeConfig(schedule="log")
    due = [s for s in range(1000) if cfg.due(s)]
    assert due[:5] == [0, 1, 2, 3, 4] and 20 < len(due) < 40 and due[-1] > 500


def test_bad_probe_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="schedule must be one of"):
        ProbeConfig(schedule="sometimes")
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        ProbeConfig(every=0)


def test_presets_trade_detail_for_cost() -> None:
    eco, bus, full = ProbeConfig.economy(), ProbeConfig.business(), ProbeConfig.full()
    assert NETWORK_PROBES == eco
    assert (eco.top_k, eco.trace, eco.density, eco.dtype) == (1, False, False, "float32")
    assert (bus.top_k, bus.trace, bus.density, bus.dtype) == (3, True, False, "float32")
    assert (full.top_k, full.trace, full.density, full.dtype) == (5, True, True, None)
    assert eco.tol > bus.tol > full.tol
    assert (eco.estimate_cosine, eco.noise) == (True, False)  # gradient noise: business and full
    assert (bus.noise, bus.noise_samples, full.noise, full.noise_samples) == (True, 256, True, 1024)
    assert bus.estimate_cosine and full.estimate_cosine and LANDSCAPE_PROBES.estimate_cosine
    assert ProbeConfig.economy(every=7, top_k=2) == dataclasses.replace(eco, every=7, top_k=2)
    with pytest.raises(ValueError, match="dtype must be one of"):
        ProbeConfig(dtype="float16")
    with pytest.raises(ValueError, match="tol must be"):
        ProbeConfig(tol=0.0)


def test_probes_compute_in_the_runs_dtype_unless_told() -> None:
    """moons MLP (354 parameters; density probes bring the exact float64 spectrum)."""
    problem = get_network("moons_mlp", batch_size=None)
    # error relative to lambda_max: the tolerance (1e-8) for float64 products, rounding for float32
    cases = [("float64", None, "float64", 2e-8), ("float64", "float32", "float32", 2e-5),
             ("float32", None, "float32", 2e-5), ("float32", "float64", "float64", 2e-8)]
    for run_dtype, probe_dtype, used, rtol in cases:
        run = run_with(problem, ("sgd", {"lr": 0.5}), dtype=run_dtype,
                       probes=ProbeConfig(every=2, top_k=3, tol=1e-8, dtype=probe_dtype, density=True,
                                          density_probes=1, density_steps=2))
        recs = [r for r in run.run(5) if r.curvature is not None]
        assert len(recs) == 3
        for r in recs:
            assert r.curvature.dtype == used
            exact = r.curvature.exact[::-1][:3]
            np.testing.assert_allclose(r.curvature.top_k, exact, rtol=0, atol=rtol * exact[0])


def test_tiny_problems_probe_with_the_dense_hessian_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """logistic regression (31 parameters) and a 2-D landscape: no Lanczos, every value from the
    float64 eigendecomposition, whatever the run's dtype (before, Lanczos ran and a dense Hessian too)."""
    import engine.instruments

    def no_lanczos(*args, **kwargs):
        raise AssertionError("a tiny problem ran Lanczos")

    monkeypatch.setattr(engine.instruments, "lanczos", no_lanczos)
    problem = get_network("logistic_regression")
    for run_dtype in ("float64", "float32"):
        run = run_with(problem, ("adam", {"lr": 0.05}), dtype=run_dtype,
                       probes=ProbeConfig(every=2, top_k=3, trace=True, density=True))
        assert sum(r.curvature is not None for r in run.run(4)) == 2
        x = torch.as_tensor(run.positions(0)[0], dtype=torch.float64)
        (r,) = run.step()  # step 4 probes at x, where its gradient is taken
        p = r.curvature
        w = torch.linalg.eigvalsh(dense_hessian(lambda z: problem.loss(z[None])[0], x)).numpy()
        assert p.dtype == "float64" and p.hvps == 31
        np.testing.assert_allclose(p.top_k, w[::-1][:3], rtol=1e-5 if run_dtype == "float32" else 1e-12)
        assert p.lambda_max_residual < 1e-10 * p.lambda_max
        assert p.trace == pytest.approx(w.sum(), rel=1e-5) and p.trace_stderr == 0.0
        np.testing.assert_allclose(p.density_nodes[0], p.exact)
        assert p.preconditioned is not None  # Adam's P_t, through the dense path too
    bowl = get_landscape("quadratic", dim=2, kappa=10.0)
    (rec,) = run_with(bowl, ("sgd", {"lr": 0.05})).run(1)
    assert rec.curvature.lambda_max == 10.0 and rec.curvature.hvps == 2


def test_warm_started_probes_match_the_dense_spectrum_along_a_run() -> None:
    """moons MLP (354 parameters; density probes bring the exact spectrum): every probe after the
    first starts from the last one's Ritz vectors and still meets its tolerance."""
    problem = get_network("moons_mlp", batch_size=None)
    probes = ProbeConfig(every=2, top_k=3, tol=1e-8, density=True, density_probes=1, density_steps=4)
    run = run_with(problem, ("sgd", {"lr": 0.5}), probes=probes)
    found = [r.curvature for r in run.run(12) if r.curvature is not None]
    assert len(found) == 6
    for p in found:
        exact = p.exact[::-1][:3]
        np.testing.assert_allclose(p.top_k, exact, rtol=1e-6)
        assert abs(p.lambda_max - exact[0]) <= p.lambda_max_residual
    assert max(p.hvps for p in found[1:]) < found[0].hvps  # warm starts are cheaper than the cold one


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_economy_probes_along_a_run_are_within_their_tolerance_of_the_dense_lambda_max(dtype: str) -> None:
    """Sharpness every step at tol 1e-3 (warm after the first), in the run's dtype, on the step's
    own graph: each lambda_max within 1e-3 of the dense Hessian's and within its reported residual."""
    problem = get_network("moons_mlp", batch_size=None)
    run = run_with(problem, ("sgd", {"lr": 0.5}), probes=ProbeConfig.economy(every=1, dtype=None),
                   dtype=dtype)
    hvps = []
    for _ in range(12):
        x = torch.as_tensor(run.positions(0)[0], dtype=torch.float64)
        (r,) = run.step()
        p = r.curvature
        exact = torch.linalg.eigvalsh(dense_hessian(lambda z: problem.loss(z[None])[0], x))[-1].item()
        slack = 1e-5 * exact if dtype == "float32" else 1e-12 * exact  # float32 products' own error
        assert abs(p.lambda_max - exact) <= 1e-3 * exact + slack
        assert abs(p.lambda_max - exact) <= p.lambda_max_residual + slack
        assert p.dtype == dtype
        hvps.append(p.hvps)
    assert max(hvps[1:]) < hvps[0]  # warm probes cost less than the cold first one


def test_sharpness_only_probes_skip_the_directional_product_and_keep_their_bounds() -> None:
    """``directional=False`` (sharpness only): one product fewer a probe, lambda_max still a lower
    bound of the dense lambda_max, within tol and its residual of it; the directional is nan and
    says why. With it (the default), the directional is u^T H u / |u|^2 of the dense Hessian."""
    problem = get_network("moons_mlp", batch_size=None)
    runs = {d: run_with(problem, ("sgd", {"lr": 0.5}), probes=ProbeConfig.economy(every=1, dtype=None,
                                                                                  directional=d))
            for d in (True, False)}
    hvps = {True: 0, False: 0}
    for _ in range(6):
        x = torch.as_tensor(runs[True].positions(0)[0], dtype=torch.float64)
        H = dense_hessian(lambda z: problem.loss(z[None])[0], x)
        exact = torch.linalg.eigvalsh(H)[-1].item()
        for d, run in runs.items():
            (r,) = run.step()
            p = r.curvature
            assert p.lambda_max <= exact + 1e-12 * exact
            assert abs(p.lambda_max - exact) <= min(1e-3 * exact, p.lambda_max_residual) + 1e-12 * exact
            hvps[d] += p.hvps
            if d:
                u = torch.as_tensor(run.positions(0)[0], dtype=torch.float64) - x
                assert p.directional == pytest.approx(float(u @ H @ u / (u @ u)), rel=1e-9)
                assert "directional" not in p.notes
            else:
                assert np.isnan(p.directional) and "directional=False" in p.notes["directional"]
    assert hvps[False] < hvps[True]
    tiny = run_with(get_network("logistic_regression"), ("sgd", {"lr": 0.5}),
                    probes=ProbeConfig(every=1, directional=False))
    p = tiny.run(1)[0].curvature  # the dense path (31 parameters) says the same
    assert np.isnan(p.directional) and "directional" in p.notes and p.exact is not None
    with pytest.raises(ValueError, match="directional must be True or False"):
        ProbeConfig(directional=1)


def test_the_sharpness_preset_measures_lambda_max_and_the_threshold_only() -> None:
    """The app's cheapest preset (float32 products, tol 1e-3): each SGD probe's lambda_max within its
    residual of the dense Hessian's top eigenvalue (and never above it, up to float32 rounding), the
    threshold 2/lr; nothing else: no directional sharpness (nan, and the probe says it was not asked
    for), no estimate cosine, no noise. An Adam lane still gets its preconditioned sharpness."""
    problem = get_network("moons_mlp", batch_size=None)
    preset = ProbeConfig.sharpness(every=1)
    assert (preset.top_k, preset.tol, preset.dtype, preset.directional) == (1, 1e-3, "float32", False)
    assert not (preset.estimate_cosine or preset.noise or preset.trace or preset.density)
    run = run_with(problem, ("sgd", {"lr": 0.5}), ("adam", {"lr": 0.01}), probes=preset)
    for _ in range(8):
        x = torch.as_tensor(run.positions(0)[0], dtype=torch.float64)
        sgd, adam = run.step()
        exact = torch.linalg.eigvalsh(dense_hessian(lambda z: problem.loss(z[None])[0], x))[-1].item()
        p = sgd.curvature
        slack = 1e-5 * exact  # float32 products' own error
        assert p.dtype == "float32" and p.lambda_max <= exact + slack
        assert abs(p.lambda_max - exact) <= min(1e-3 * exact, p.lambda_max_residual) + slack
        assert p.sharpness == p.lambda_max and p.threshold.value == pytest.approx(2 / 0.5)
        for q in (p, adam.curvature):
            assert np.isnan(q.directional) and not q.measures_directional
            assert q.estimate_cosine is None and q.noise_scale is None and q.trace is None
    assert adam.curvature.threshold.quantity == "preconditioned" and np.isfinite(adam.curvature.sharpness)
    economy = run_with(problem, ("sgd", {"lr": 0.5}), probes=ProbeConfig.economy(every=1)).run(1)[0].curvature
    assert economy.measures_directional and np.isfinite(economy.directional)


def test_a_budget_of_products_stops_probes_early_and_says_so() -> None:
    """max_hvps caps each probe's products; the Ritz value is a Rayleigh quotient (never above the
    dense lambda_max), its residual is reported, and a probe stopped short says so in its notes."""
    problem = get_network("moons_mlp", batch_size=None)
    probes = ProbeConfig(every=1, top_k=1, tol=1e-10, max_hvps=3)
    run = run_with(problem, ("sgd", {"lr": 0.5}), probes=probes)
    for _ in range(3):
        x = torch.as_tensor(run.positions(0)[0], dtype=torch.float64)
        (r,) = run.step()
        p = r.curvature
        exact = torch.linalg.eigvalsh(dense_hessian(lambda z: problem.loss(z[None])[0], x))[-1].item()
        assert p.hvps == 3 and p.lambda_max <= exact + 1e-10
        assert p.lambda_max_residual > 0 and "budget of 3" in p.notes["lambda_max"]
    with pytest.raises(ValueError, match="max_hvps must be an integer >= 3"):
        ProbeConfig(max_hvps=2)


def test_a_lanes_first_probe_starts_from_another_lanes_vectors() -> None:
    """Two lanes at the same start probe the same Hessian at step 0: the second one starts warm."""
    problem = get_network("moons_mlp", batch_size=None)
    run = run_with(problem, ("sgd", {"lr": 0.5}), ("sgd", {"lr": 0.1}),
                   probes=ProbeConfig(every=10, tol=1e-8, top_k=2))
    first, second = (r.curvature for r in run.step())
    np.testing.assert_allclose(second.top_k, first.top_k, rtol=1e-8)
    assert second.hvps < first.hvps


def test_a_single_start_probe_reuses_the_steps_graph_with_the_same_results(monkeypatch) -> None:
    problem = get_network("moons_mlp", batch_size=None)
    probes = ProbeConfig(every=1, top_k=2, tol=1e-8)
    lanes = (("momentum", {"lr": 0.05}),)
    plain = Run(problem, RunConfig(lanes=(LaneConfig(*lanes[0]),), device="cpu")).run(6)
    built = []
    original = HVP.from_gradient.__func__

    def spy(cls, *args, **kwargs):
        built.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(HVP, "from_gradient", classmethod(spy))
    reused = run_with(problem, *lanes, probes=probes).run(6)
    assert len(built) == 6  # every probe differentiated the step's own gradient
    monkeypatch.setattr(Run, "_probe_reuses_graph", lambda self, lanes: False)
    rebuilt = run_with(problem, *lanes, probes=probes).run(6)
    assert len(built) == 6
    for a, b, c in zip(plain, reused, rebuilt, strict=True):
        np.testing.assert_array_equal(a.loss, b.loss)  # the trajectory is untouched
        np.testing.assert_allclose(b.curvature.top_k, c.curvature.top_k, rtol=1e-10)
        assert b.curvature.directional == pytest.approx(c.curvature.directional, rel=1e-10)
    monkeypatch.undo()
    monkeypatch.setattr(HVP, "from_gradient", classmethod(spy))
    run_with(problem, *lanes, ("sgd", {"lr": 0.1}), probes=probes).run(2)  # two lanes: no reuse
    assert len(built) == 6


def test_warm_starts_extrapolate_each_ritz_vector_along_its_drift() -> None:
    """2 v_t - v_(t-1) with the signs of v_(t-1) aligned to v_t: exact for a vector moving on a line,
    second-order close to one turning at a constant rate; left alone where the order changed."""
    from engine.instruments import _extrapolated

    def turn(angle: float) -> torch.Tensor:
        return torch.tensor([np.cos(angle), np.sin(angle), 0.0], dtype=torch.float64)

    a, b = torch.tensor([1.0, 0.0, 0.0]).double(), torch.tensor([1.0, 0.5, 0.0]).double()
    assert torch.equal(_extrapolated(b[None], a[None])[0], torch.tensor([1.0, 1.0, 0.0]).double())
    assert torch.equal(_extrapolated(b[None], -a[None])[0], torch.tensor([1.0, 1.0, 0.0]).double())  # sign
    guess = _extrapolated(torch.stack([turn(0.1), -turn(1.6)]), torch.stack([turn(0.0), turn(1.5)]))
    for g, want in zip(guess, (turn(0.2), -turn(1.7)), strict=True):
        cos = float(g @ want / g.norm())
        assert 1 - cos < 1e-4 and 1 - float(turn(0.1) @ want) > 4e-3  # O(h^4) against O(h^2) unmoved
    crossed = torch.stack([turn(0.0), turn(1.5)])  # cosine 0.07 with its predecessor: kept
    assert torch.equal(_extrapolated(crossed, torch.stack([turn(1.5), turn(0.0)])), crossed)
    assert _extrapolated(crossed, None) is crossed


def test_warm_probes_keep_where_they_started_for_the_next_one() -> None:
    """Each warm probe hands on its start (the previous top-k) beside its Ritz vectors, and every
    probe still lies within its residual of the dense lambda_max."""
    problem = get_network("moons_mlp", batch_size=None)
    run = run_with(problem, ("sgd", {"lr": 0.5}), probes=ProbeConfig(every=1, tol=1e-6))
    previous = None
    for i in range(6):
        x = torch.as_tensor(run.positions(0)[0], dtype=torch.float64)
        (r,) = run.step()
        warm = run._warm[0]
        assert ("before" in warm) == (i > 0)
        if previous is not None:
            torch.testing.assert_close(warm["before"], previous[:1], rtol=0, atol=0)
        previous = warm["top"]
        exact = torch.linalg.eigvalsh(dense_hessian(lambda z: problem.loss(z[None])[0], x))[-1].item()
        assert abs(r.curvature.lambda_max - exact) <= r.curvature.lambda_max_residual + 1e-12 * exact


def test_a_probe_config_names_its_preset_up_to_the_fields_a_person_changes() -> None:
    """``ProbeConfig.preset``: each preset, with any interval, schedule, top-k, density, trace and
    seed on top, is named; a config that differs in a field no widget shows (tol, dtype, noise,
    directional) is no preset."""
    for name in ProbeConfig.PRESETS:
        made = getattr(ProbeConfig, name)(every=7, schedule="log", top_k=2, trace=True, seed=3)
        assert made.preset() == name
        assert dataclasses.replace(made, density=not made.density).preset() == name
    assert ProbeConfig.economy(directional=False).preset() is None
    assert ProbeConfig.economy(tol=1e-5).preset() is None
    assert ProbeConfig.business(dtype=None).preset() is None
    assert ProbeConfig.sharpness(every=3).preset({"mine": ProbeConfig.sharpness()}) == "mine"
