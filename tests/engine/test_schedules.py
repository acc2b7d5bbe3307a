"""Schedules: each kind against its closed form, the refined schedule against the paper's formula
(and linear decay on a constant log), schedules in runs (live values, base rescaling, annealing to
exactly 0 below a range's low end, events), and exact replay."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import median_filter as scipy_median_filter

from engine.events import LoggedEvent, SetHyperparameter, SetSchedule
from engine.instruments import ProbeConfig
from engine.registry import HyperparameterError
from engine.run import LaneConfig, Run, RunConfig
from engine.schedules import Schedule, median_filter
from landscapes import get_landscape

T = np.arange(0, 260)


def closed_form(kind: str, t: np.ndarray, *, steps=100, gamma=0.5, every=30, final=0.0,
                warmup=0) -> np.ndarray:
    """Each schedule written out in numpy, independently of the implementation."""
    tau = np.maximum(t - warmup, 0).astype(float)
    main = {
        "constant": np.ones_like(tau),
        "step": gamma ** np.floor(tau / every),
        "exponential": gamma**tau,
        "cosine": final + (1 - final) * 0.5 * (1 + np.cos(np.pi * np.minimum(tau, steps) / steps)),
        "linear": final + (1 - final) * np.clip(1 - tau / steps, 0, None),
    }[kind]
    return np.where(t < warmup, t / max(warmup, 1), main)


@pytest.mark.parametrize("warmup", [0, 20])
@pytest.mark.parametrize("kind", ["constant", "step", "exponential", "cosine", "linear"])
def test_each_schedule_is_its_closed_form(kind: str, warmup: int) -> None:
    kw = dict(steps=100, gamma=0.5, every=30, final=0.1 if kind in ("cosine", "linear") else 0.0)
    sched = Schedule(kind, warmup=warmup, **kw)
    want = closed_form(kind, T, warmup=warmup, **kw)
    np.testing.assert_allclose(sched.curve(len(T)), want, rtol=1e-14, atol=0)
    assert sched.value(7, 0.3) == pytest.approx(0.3 * want[7], rel=1e-14)


def test_linear_decay_reaches_exactly_zero_and_stays_there() -> None:
    s = Schedule("linear", steps=50)
    assert s.factor(0) == 1.0 and s.factor(25) == 0.5 and s.factor(50) == 0.0 and s.factor(10_000) == 0.0
    assert Schedule("cosine", steps=50).factor(50) == 0.0


def paper_refinement(g: np.ndarray, power: float) -> np.ndarray:
    """Defazio et al. (2023), Algorithms 1/2 without smoothing, as a double loop:
    w_t = G_t^-p * sum_{s > t} G_s^-p, normalized to max 1."""
    n = len(g)
    w = np.array([g[t] ** -power * sum(g[s] ** -power for s in range(t + 1, n)) for t in range(n)])
    return w / w.max()


def test_refined_schedule_of_a_constant_log_is_linear_decay() -> None:
    """The paper's closed form: constant gradient norms give w_t proportional to T - 1 - t."""
    for norm in ("l2", "l1"):
        refined = Schedule.refined(np.full(201, 3.7), norm=norm)
        np.testing.assert_allclose(refined.curve(260), Schedule("linear", steps=200).curve(260), rtol=0,
                                   atol=1e-14)  # equal up to the rounding of the cumulative sums


def test_refined_schedule_matches_the_papers_formula() -> None:
    g = np.exp(np.random.default_rng(0).normal(size=60)) * np.linspace(3, 1, 60)
    np.testing.assert_allclose(Schedule.refined(g).values, paper_refinement(g, 2.0), rtol=1e-12)
    np.testing.assert_allclose(Schedule.refined(g, norm="l1").values, paper_refinement(g, 1.0), rtol=1e-12)
    # warm-up and annealing emerge from the log: norms that fall early give a rising start
    rising = Schedule.refined(np.linspace(10, 1, 100))
    assert np.argmax(rising.values) > 0 and rising.values[-1] == 0.0


def test_median_filter_is_the_papers_padding_recipe() -> None:
    """The refinement paper's code: reflect-pad the end by 2 widths, scipy median filter with
    mode='nearest', drop the padding."""
    g = np.random.default_rng(1).lognormal(size=97)
    for tau in (0.05, 0.1, 0.3):
        width = 2 * (int(tau * len(g)) // 2) + 1
        pad = 2 * width
        want = scipy_median_filter(np.pad(g, (0, pad), mode="reflect"), size=width, mode="nearest")[:-pad]
        np.testing.assert_array_equal(median_filter(g, width), want)
        np.testing.assert_allclose(Schedule.refined(g, smoothing=tau).values, paper_refinement(want, 2.0),
                                   rtol=1e-12)


def test_round_trip_and_bad_schedules() -> None:
    for s in (Schedule("cosine", steps=30, warmup=5, final=0.2), Schedule.refined([3.0, 2.0, 1.0, 1.0]),
              Schedule("step", gamma=0.3, every=7)):
        again = Schedule.from_dict(json.loads(json.dumps(s.to_dict())))
        assert again == s and np.array_equal(again.curve(50), s.curve(50))
    for bad, match in [(dict(kind="triangle"), "kind must be one of"),
                       (dict(kind="step", gamma=1.5), "gamma"),
                       (dict(kind="linear", final=-0.1), "final"), (dict(kind="cosine", steps=0), "steps"),
                       (dict(kind="refined"), "needs its values"), (dict(warmup=-1), "warmup")]:
        with pytest.raises(ValueError, match=match):
            Schedule(**bad)
    with pytest.raises(ValueError, match="unknown schedule field"):
        Schedule.from_dict({"kind": "linear", "horizon": 10})
    with pytest.raises(ValueError, match="positive gradient norms"):
        Schedule.refined([1.0, 0.0, 2.0])


# -- in runs ---------------------------------------------------------------------------------------

BOWL = get_landscape("quadratic", dim=2, kappa=10.0)  # f = 1/2 (x^2 + 10 y^2)


def run_of(*lanes: LaneConfig, **kw) -> Run:
    return Run(BOWL, RunConfig(lanes=lanes, device="cpu", **kw))


def test_scheduled_sgd_takes_the_scheduled_steps() -> None:
    """Gradient descent on the bowl with lr_t = 0.05 (1 - t/20), written out by hand."""
    sched = Schedule("linear", steps=20)
    run = run_of(LaneConfig("sgd", {"lr": 0.05}, schedules={"lr": sched}))
    records = run.run(25)
    x = BOWL.x0().numpy()
    for t, r in enumerate(records):
        lr_t = 0.05 * max(0.0, 1 - t / 20)
        assert r.hyperparameters["lr"] == pytest.approx(lr_t, abs=1e-17)
        np.testing.assert_allclose(r.position[0], x, rtol=1e-13)
        x = x - lr_t * np.array([1.0, 10.0]) * x
    assert records[-1].hyperparameters["lr"] == 0.0 and records[-1].update_norm[0] == 0.0


def test_a_schedule_anneals_below_the_range_to_zero_without_complaint() -> None:
    """The issue's case: Adam at lr 1e-3 decayed linearly passes 5e-07 (below the range's 1e-6) and
    ends at exactly 0; the base is still checked."""
    run = run_of(LaneConfig("adam", {"lr": 1e-3}, schedules={"lr": Schedule("linear", steps=2000)}))
    records = run.run(2001)
    lrs = [r.hyperparameters["lr"] for r in records]
    assert min(v for v in lrs if v > 0) < 1e-6 and lrs[-1] == 0.0
    with pytest.raises(HyperparameterError, match="outside its allowed range"):
        run.apply(SetHyperparameter(0, "lr", 1e-9))


def test_set_hyperparameter_on_a_scheduled_lane_rescales_the_schedule() -> None:
    sched = Schedule("exponential", gamma=0.9)
    run = run_of(LaneConfig("sgd", {"lr": 0.01}, schedules={"lr": sched}))
    run.run(5)
    assert run.apply(SetHyperparameter(0, "lr", 0.02)) == 0.02  # the base
    records = run.run(3)
    assert [r.hyperparameters["lr"] for r in records] == pytest.approx([0.02 * 0.9**t for t in (5, 6, 7)],
                                                                      rel=1e-14)


def test_set_schedule_event_and_removing_it() -> None:
    run = run_of(LaneConfig("momentum", {"lr": 0.01, "momentum": 0.5}))
    run.run(3)
    run.apply(SetSchedule(0, "momentum", Schedule("step", gamma=0.5, every=2).to_dict()))
    assert [r.hyperparameters["momentum"] for r in run.run(3)] == [0.25, 0.125, 0.125]  # steps 3, 4, 5
    run.apply(SetSchedule(0, "momentum", None))
    assert run.step()[0].hyperparameters["momentum"] == 0.5
    with pytest.raises(ValueError, match="only real-valued hyperparameters can be scheduled"):
        Run(get_landscape("rosenbrock"), RunConfig(lanes=(LaneConfig(
            "bcd_cyclic", schedules={"block_size": Schedule("linear")}),), device="cpu"))
    with pytest.raises(HyperparameterError, match="no hyperparameter 'beta9'"):
        run.apply(SetSchedule(0, "beta9", Schedule("linear").to_dict()))


def test_probes_follow_the_live_value_down_to_zero() -> None:
    """The stability threshold is 2/lr_t at the scheduled lr; at lr = 0 it is infinite, not an error."""
    run = run_of(LaneConfig("sgd", {"lr": 0.05}, schedules={"lr": Schedule("linear", steps=4)}),
                 probes=ProbeConfig(every=1))
    thresholds = [r.curvature.threshold.value for r in run.run(6)]
    assert thresholds[:4] == pytest.approx([2 / (0.05 * (1 - t / 4)) for t in range(4)], rel=1e-12)
    assert thresholds[4:] == [math.inf, math.inf]


def test_schedules_replay_exactly_from_the_json_log() -> None:
    config = RunConfig(lanes=(LaneConfig("adam", {"lr": 0.05}, schedules={"lr": Schedule("cosine", steps=12,
                                                                                          warmup=3)}),
                              {"optimizer": "sgd", "hyperparameters": {"lr": 0.02},
                               "schedules": {"lr": {"kind": "step", "gamma": 0.5, "every": 4}}}),
                       n_starts=2, seed=4, device="cpu")
    run = Run(get_landscape("rosenbrock"), config)
    records = run.run(5)
    run.apply(SetHyperparameter(0, "lr", 0.02))
    run.apply(SetSchedule(1, "lr", Schedule.refined(np.linspace(4, 1, 10)).to_dict()))
    records += run.run(8)
    log = json.loads(json.dumps(run.event_log()))
    again_config = RunConfig.from_dict(log["config"])
    assert again_config == config
    _, again = Run.replay(get_landscape("rosenbrock"), again_config,
                          [LoggedEvent.from_dict(e) for e in log["events"]], log["ticks"])
    assert len(again) == len(records) and all(a.same_values(b) for a, b in zip(records, again, strict=True))
    assert len({r.hyperparameters["lr"] for r in records if r.lane == 1}) > 3  # the schedules acted


def test_records_carry_live_values_on_per_row_optimizers_too() -> None:
    """A closure-driven lane (one optimizer per start) gets the scheduled value in every optimizer."""
    run = Run(get_landscape("rosenbrock"), RunConfig(
        lanes=(LaneConfig("zo_sgd", {"lr": 1e-3}, schedules={"lr": Schedule("linear", steps=4)}),),
        n_starts=3, device="cpu"))
    records = run.run(2)
    lane = run.lanes[0]
    assert [opt.param_groups[0]["lr"] for opt in lane.optimizers] == pytest.approx([1e-3 * 0.75] * 3)
    assert [r.hyperparameters["lr"] for r in records] == pytest.approx([1e-3, 0.75e-3])
    assert torch.is_tensor(lane.points())
