"""Gradient-noise instruments on the probe schedule: per-tensor variance and SNR against a linear model
whose per-sample gradients are known in closed form, SGD-SaI's g-SNR against the optimizer's own
scales, the norm test against the batch size it grows to, the estimate cosine against hand
computations (SGD, clipped SGD, MeZO's seeded directions) and ZO-SGD's Beta law, landscapes without
data, untouched trajectories and curvature, replays, and the limits on untrusted settings."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from engine.clipping import Clip
from engine.device import make_generator
from engine.events import LoggedEvent, RequestProbe
from engine.instruments import ProbeConfig
from engine.limits import LimitError, check_probes, check_run
from engine.noise import NormTest, cosine, sai_gsnr
from engine.oracles import seeded_direction
from engine.run import LaneConfig, Run, RunConfig
from engine.seeds import step_seed
from landscapes import get_landscape, get_network
from landscapes.networks import half_mse, problem_from_module

NOISE = ProbeConfig(every=1, noise=True, dtype="float64")
COSINE = ProbeConfig(every=1, estimate_cosine=True, dtype="float64")


def run_of(problem, *lanes: LaneConfig, probes: ProbeConfig | None, **kw) -> Run:
    return Run(problem, RunConfig(lanes=lanes, device="cpu", probes=probes, **kw))


def linear_problem(n: int = 7, d: int = 3, batch_size: int | None = None):
    """f(x) = w.x + b with loss 1/2 (f(x_i) - y_i)^2 per sample: grad_w = r_i x_i, grad_b = r_i."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    module = nn.Linear(d, 1).double()
    return problem_from_module(module, half_mse, X, y, batch_size=batch_size, name="linear"), X, y, module


def hand_noise(X: np.ndarray, y: np.ndarray, w: np.ndarray, b: float) -> dict[str, np.ndarray | float]:
    r = X @ w + b - y[:, 0]  # residuals [n]
    per = [r[:, None] * X, r[:, None]]  # per-sample gradients of the weight [n, d] and the bias [n, 1]
    n = len(r)
    out: dict[str, np.ndarray | float] = {}
    means = [p.mean(0) for p in per]
    out["variance"] = np.array([((p - m) ** 2).sum() / (n - 1) for p, m in zip(per, means, strict=True)])
    out["snr"] = np.array([(m**2).sum() for m in means]) / out["variance"]
    out["gsnr"] = np.array([np.linalg.norm(means[0]) / (means[0].std(ddof=1) + 1e-8), abs(means[1][0])])
    total = sum((m**2).sum() for m in means)
    out["noise_scale"] = float(out["variance"].sum() / total)
    return out


def test_variance_snr_and_gsnr_per_tensor_match_a_linear_model_by_hand() -> None:
    problem, X, y, module = linear_problem()
    run = run_of(problem, LaneConfig("sgd", {"lr": 0.1}), probes=NOISE)
    p = run.step()[0].curvature
    want = hand_noise(X.numpy(), y.numpy(), module.weight.detach().numpy()[0], float(module.bias.detach()))
    assert p.noise_tensors == ("weight", "bias")
    np.testing.assert_allclose(p.grad_variance, want["variance"], rtol=1e-12)
    np.testing.assert_allclose(p.grad_snr, want["snr"], rtol=1e-12)
    np.testing.assert_allclose(p.gsnr, want["gsnr"], rtol=1e-12)
    assert p.noise_scale == pytest.approx(want["noise_scale"], rel=1e-12)
    assert p.norm_test == pytest.approx(want["noise_scale"] / 7, rel=1e-12)  # full batch: b = 7
    assert p.noise_samples == 7 and p.estimate_cosine is None and dict(p.notes) == {}


def test_a_subset_of_samples_estimates_the_noise_of_the_steps_batch() -> None:
    """With fewer samples than the step's batch, the norm test still divides by the step's size."""
    problem, *_ = linear_problem(n=40)
    probes = dataclasses.replace(NOISE, noise_samples=5)
    p = run_of(problem, LaneConfig("sgd", {"lr": 0.1}), probes=probes).step()[0].curvature
    assert p.noise_samples == 5 and p.norm_test == pytest.approx(p.noise_scale / 40, rel=1e-14)
    again = run_of(problem, LaneConfig("sgd", {"lr": 0.1}), probes=probes)
    assert again.step()[0].curvature.same_values(p)  # the subset is seeded


def test_gsnr_is_the_scale_sgd_sai_freezes_at_its_first_step() -> None:
    problem = get_network("moons_mlp", batch_size=32)
    run = run_of(problem, LaneConfig("sgdsai", {"lr": 0.01}), probes=NOISE)
    p = run.step()[0].curvature
    lane = run.lanes[0]
    scales = [float(lane.optimizer.state[q]["gsnr"]) for q in lane.rows[0]]
    np.testing.assert_allclose(p.gsnr, scales, rtol=1e-12)
    assert len(p.gsnr) == len(problem.param_shapes) == len(p.grad_variance) == len(p.grad_snr)


def test_norm_test_statistic_by_hand_and_it_is_what_grows_the_batch() -> None:
    g = torch.tensor([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    t = NormTest.of(g)  # spread 10, mean (2, 2)
    assert (t.spread, t.mean_sq, t.samples) == (10.0, 8.0, 3)
    assert t.noise_scale == 10.0 / (2 * 8.0) and t.statistic() == t.noise_scale / 3
    assert t.size(0.5) == 3 and t.size(0.1) == 63  # what engine.batching.norm_test_size returns
    problem = get_network("logistic_regression")
    lane = LaneConfig("sgd", {"lr": 0.5}, batch_size={"kind": "norm_test", "size": 8, "theta": 0.2})
    run = run_of(problem, lane, probes=NOISE)
    p = run.step()[0].curvature
    grown = run.lanes[0].batch_now
    assert grown == max(8, math.ceil(p.noise_scale / 0.2**2)) > 8  # the test failed: p.norm_test > theta^2
    assert p.norm_test == pytest.approx(p.noise_scale / 8, rel=1e-14) and p.norm_test > 0.2**2


def test_sgd_estimate_cosines_are_the_minibatch_and_full_batch_cosines_by_hand() -> None:
    problem = get_network("moons_mlp", batch_size=16)
    clip = Clip("value", 0.02)
    run = run_of(problem, LaneConfig("sgd", {"lr": 0.1}), LaneConfig("sgd", {"lr": 0.1}, clip=clip),
                 probes=COSINE)
    plain, clipped = (r.curvature for r in run.step())
    x = problem.x0().requires_grad_(True)
    batch = problem.sample_batch(make_generator(0))  # the run's first minibatch (its seeded stream)
    (g_batch,) = torch.autograd.grad(problem.loss(x[None], batch)[0], x)
    (g_full,) = torch.autograd.grad(problem.loss(x[None], None)[0], x)
    by_hand = float(g_batch @ g_full / (g_batch.norm() * g_full.norm()))
    assert by_hand < 0.99  # a minibatch gradient is not the full one
    assert plain.estimate_cosine == pytest.approx(1.0, abs=1e-12)
    assert plain.estimate_cosine_full == pytest.approx(by_hand, rel=1e-10)
    assert plain.gradients == 1
    g_clip = g_batch.clamp(-0.02, 0.02)
    hand_clipped = float(g_clip @ g_batch / (g_clip.norm() * g_batch.norm()))
    assert clipped.estimate_cosine == pytest.approx(hand_clipped, rel=1e-10) and hand_clipped < 0.999
    assert clipped.estimate_cosine_full == pytest.approx(cosine(g_clip, g_full), rel=1e-10)
    full = run_of(get_network("moons_mlp", batch_size=None), LaneConfig("sgd", {"lr": 0.1}), probes=COSINE)
    p = full.step()[0].curvature
    assert p.estimate_cosine_full == p.estimate_cosine == pytest.approx(1.0, abs=1e-12) and p.gradients == 0


def mezo_by_hand(problem, x: torch.Tensor, seed: int, step: int, q: int, eps: float) -> torch.Tensor:
    est = torch.zeros_like(x)
    for i in range(q):
        (z,) = seeded_direction(step_seed(seed, step, i), [x])
        f = problem.loss(torch.stack([x + eps * z, x - eps * z]))
        est += float(f[0] - f[1]) / (2 * eps) / q * z
    return est


def test_mezo_keeps_seeds_and_its_estimate_is_rebuilt_exactly_when_a_probe_asks() -> None:
    bowl = get_landscape("quadratic", dim=6, kappa=10.0)
    probes = dataclasses.replace(COSINE, every=3)
    run = run_of(bowl, LaneConfig("zo_sgd", {"lr": 0.05, "q": 3}), probes=probes)
    opt = run.lanes[0].optimizer
    lam = torch.tensor([10.0 ** (i / 5) for i in range(6)], dtype=torch.float64)
    for t in range(5):
        x = run.lanes[0].points()[0].detach().clone()
        (rec,) = run.step()
        if t % 3:
            assert rec.curvature is None and opt._kept is None  # nothing materialised off schedule
            continue
        hand = mezo_by_hand(bowl, x, opt.seed, t, 3, 1e-3)
        assert rec.curvature.estimate_cosine == pytest.approx(cosine(hand, lam * x), rel=1e-9)
        assert rec.curvature.estimate_cosine_full == rec.curvature.estimate_cosine
        assert opt._kept is None  # the probe took it: no P-sized tensor stays
    assert not opt.keep_estimate


def test_zo_sgd_cosine_follows_its_beta_law() -> None:
    r"""q Gaussian directions in d dimensions with exact directional derivatives (central differences
    on a quadratic): cos^2 ~ Beta(q/2, (d-1)/2), E[cos^2] = q/(q+d-1),
    E[cos] = Gamma((q+1)/2) Gamma((q+d-1)/2) / (Gamma(q/2) Gamma((q+d)/2)). Tolerance: 4 standard
    errors of N = 400 independent steps (fixed seeds: deterministic)."""
    d, q, n = 10, 4, 400
    bowl = get_landscape("quadratic", dim=d, kappa=4.0)
    probes = ProbeConfig(every=1, estimate_cosine=True, tol=1e-3)
    run = run_of(bowl, LaneConfig("zo_sgd", {"lr": 1e-3, "q": q}), probes=probes, start=(1.0,) * d)
    cos = np.array([r.curvature.estimate_cosine for r in run.run(n)])
    a, b = q / 2, (d - 1) / 2
    mean2, var2 = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    mean1 = math.exp(math.lgamma(a + 0.5) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(a + b + 0.5))
    assert abs((cos**2).mean() - mean2) < 4 * math.sqrt(var2 / n)
    assert abs(cos.mean() - mean1) < 4 * math.sqrt((mean2 - mean1**2) / n)
    assert (cos > 0).all()  # the estimate never points uphill: g.g_hat = |g|^2/q sum_i z_i1^2


def test_landscapes_have_no_per_sample_noise_and_say_why_but_the_cosine_works() -> None:
    problem = get_landscape("rosenbrock")
    probes = ProbeConfig(every=1, noise=True, estimate_cosine=True, dtype="float64")
    run = run_of(problem, LaneConfig("sgd", {"lr": 1e-3}), LaneConfig("zo_sgd", {"lr": 1e-3}),
                 LaneConfig("cbo", {}), probes=probes)
    sgd, zo, cbo = (r.curvature for r in run.step())
    x = torch.tensor(run.starts[0].tolist(), dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(problem.loss(x[None])[0], x)
    for p in (sgd, zo, cbo):
        assert p.grad_variance is None and p.grad_snr is None
        assert p.noise_scale is None and p.norm_test is None
        assert "no data set" in p.notes["noise"] and p.noise_samples == 0
        np.testing.assert_allclose(p.gsnr, [sai_gsnr(g)], rtol=1e-12)  # SGD-SaI's g-SNR needs no data
    assert sgd.estimate_cosine == pytest.approx(1.0, abs=1e-12) == sgd.estimate_cosine_full
    hand = mezo_by_hand(problem, x.detach(), run.lanes[1].optimizer.seed, 0, 1, 1e-3)
    assert zo.estimate_cosine == pytest.approx(cosine(hand, g), rel=1e-8)
    assert cbo.estimate_cosine is None and "forms no gradient estimate" in cbo.notes["estimate_cosine"]


def test_noise_probes_change_no_trajectory_nor_curvature_count_their_work_and_replay() -> None:
    problem = get_network("moons_mlp", batch_size=32)
    lanes = (LaneConfig("adam", {"lr": 0.01}), LaneConfig("zo_sgd", {"lr": 1e-3, "q": 2}))
    base = ProbeConfig(every=3, top_k=2, tol=1e-8)
    plain = run_of(problem, *lanes, probes=base).run(7)
    rich = run_of(problem, *lanes, probes=dataclasses.replace(base, noise=True, estimate_cosine=True,
                                                                noise_samples=16))
    noisy = rich.run(7)
    for a, b in zip(plain, noisy, strict=True):
        np.testing.assert_array_equal(a.loss, b.loss)
        assert a.counts == b.counts
        if a.curvature is not None:
            np.testing.assert_array_equal(a.curvature.top_k, b.curvature.top_k)
            assert a.curvature.hvps == b.curvature.hvps
            assert b.curvature.noise_samples == 16 and b.curvature.gradients == 1
            assert -1 <= b.curvature.estimate_cosine <= 1 and b.curvature.grad_snr.shape == (6,)
    assert 0 < rich.probe_time <= rich.instrument_time < rich.compute_time
    rich.apply(RequestProbe())
    noisy += rich.step()
    log = [LoggedEvent.from_dict(e) for e in rich.event_log()["events"]]
    _, again = Run.replay(problem, rich.config, log, rich.tick)
    assert all(a.same_values(b) for a, b in zip(noisy, again, strict=True))
    p = noisy[-1].curvature
    assert p is not None and p.estimate_cosine is not None  # a requested probe arms the estimate too
    assert not p.same_values(dataclasses.replace(p, gsnr=p.gsnr * (1 + 1e-12)))
    assert not p.same_values(dataclasses.replace(p, estimate_cosine=None))


def test_noise_settings_are_bounded_for_untrusted_configs() -> None:
    with pytest.raises(LimitError, match=r"noise_samples=100,000 is over the limit of 4,096"):
        check_probes({"noise": True, "noise_samples": 100_000})
    with pytest.raises(ValueError, match="noise must be true or false"):
        check_probes({"noise": "yes"})
    with pytest.raises(ValueError, match="noise_samples must be an integer >= 2"):
        ProbeConfig(noise_samples=1)
    with pytest.raises(ValueError, match="estimate_cosine must be True or False"):
        ProbeConfig(estimate_cosine=1)
    config = RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.1}),), device="cpu")
    full = {"batch_size": None}  # the step's batch is the training set: a subset of up to 4,096 of it
    few, many = (check_run("digits_mlp", full, dataclasses.replace(
        config, probes=ProbeConfig(noise=True, noise_samples=s))) for s in (2, 4096))
    n_train = get_network("digits_mlp").n_train
    assert dict(many.memory)["a curvature probe"] >= 2 * n_train * 4810 * 8  # S P per-sample gradients, twice
    assert dict(few.memory)["a curvature probe"] < 2 * n_train * 4810 * 8 / 5  # a Lanczos basis
    assert many.probe_ops > few.probe_ops


def test_mse_to_one_hot_targets_has_per_sample_gradients_under_vmap() -> None:
    """The MSE criterion of the edge-of-stability network builds e_y by comparison: F.one_hot reads
    the targets' largest value, which vmap refuses, so per-sample gradients fell back to a loop."""
    from torch.nn import functional as F

    from landscapes.networks import mse_one_hot

    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2, 0])
    want = 0.5 * ((out - F.one_hot(y, 4).double()) ** 2).sum(-1).mean()
    assert float(mse_one_hot(out, y)) == pytest.approx(float(want), rel=1e-15)
    per_sample = torch.func.vmap(lambda o, t: mse_one_hot(o[None], t[None]))(out, y)
    np.testing.assert_allclose(per_sample.numpy(), 0.5 * ((out - F.one_hot(y, 4)) ** 2).sum(-1).numpy())
