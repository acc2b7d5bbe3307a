"""Run: batched races equal independent runs, divergence is caught at the right step, events act
at the next step and are logged, and a replay from config + log reproduces every record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.clipping import Clip, clip_
from engine.device import resolve_device
from engine.events import (
    AddLane,
    LoggedEvent,
    Pause,
    RemoveLane,
    Reset,
    Resume,
    SetClip,
    SetHyperparameter,
    SetSchedule,
    SwitchOptimizer,
)
from engine.export import records_frame
from engine.instruments import ProbeConfig
from engine.problem import Bounds, Problem
from engine.records import OracleCounts, make_record, parse_statuses, status_step, statuses
from engine.registry import HyperparameterError, available, get_spec, register_optimizer, unregister
from engine.run import LaneConfig, Run, RunConfig
from engine.schedules import Schedule
from landscapes import get_landscape, get_network


class Valley:
    """f(x) = 1/2 (x_0^2 + 10 x_1^2) + 1/4 x_0^4: elongated, non-quadratic, minimum 0 at 0."""

    name = "valley"
    dim = 2
    latex = r"\tfrac12(x^2 + 10y^2) + \tfrac14 x^4"
    bounds = Bounds((-2.0, -2.0), (2.0, 2.0))
    minima = ()

    def x0(self) -> torch.Tensor:
        return torch.tensor([1.5, -1.0], dtype=torch.float64)

    def loss(self, x: torch.Tensor, batch: object = None) -> torch.Tensor:
        return 0.5 * (x[:, 0] ** 2 + 10 * x[:, 1] ** 2) + 0.25 * x[:, 0] ** 4

    def sample_batch(self, generator: torch.Generator) -> None:
        return None


class NoisyValley(Valley):
    """Valley plus a random linear term drawn per step: a stochastic problem with a batch."""

    name = "noisy-valley"

    def sample_batch(self, generator: torch.Generator) -> torch.Tensor:
        return 0.1 * torch.randn(2, generator=generator, dtype=torch.float64)

    def loss(self, x: torch.Tensor, batch: torch.Tensor | None = None) -> torch.Tensor:
        return super().loss(x) + (x @ batch if batch is not None else 0.0)


def config(*lanes: tuple[str, dict], **kw: object) -> RunConfig:
    return RunConfig(lanes=tuple(LaneConfig(n, h) for n, h in lanes), device="cpu", **kw)


def test_problem_protocol_is_satisfied_by_test_problem() -> None:
    assert isinstance(Valley(), Problem)


@pytest.mark.parametrize("name", available())
def test_race_rows_equal_independent_runs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of one lane are exactly the runs one would get one start at a time (a seeded optimizer
    gets the same seed in every row here, so that its random draws are the same too)."""
    monkeypatch.setattr("engine.run.trajectory_seed", lambda seed, lane, row: 123)
    if get_spec(name).requires:  # Sophia-G and SSO need a network, the bilevel methods a bilevel problem
        problem = (get_landscape("bilevel_toy") if "lower_loss" in get_spec(name).requires
                   else get_network("logistic_regression"))
        race = Run(problem, config((name, {}), n_starts=3, seed=3))
        batched = race.run(4)
        for i, start in enumerate(race.starts):
            single = Run(problem, config((name, {}), start=tuple(start.tolist())))
            for rb, rs in zip(batched, single.run(4), strict=True):
                np.testing.assert_allclose(rb.loss[i], rs.loss[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(race.positions(0)[i], single.positions(0)[0], rtol=1e-12, atol=1e-14)
        return
    problem = Valley()
    race = Run(problem, config((name, {}), n_starts=4, seed=3))
    batched = race.run(6)
    for i, start in enumerate(race.starts.tolist()):
        single = Run(problem, config((name, {}), start=tuple(start))).run(6)
        for rb, rs in zip(batched, single, strict=True):
            np.testing.assert_allclose(rb.loss[i], rs.loss[0], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(rb.position[i], rs.position[0], rtol=1e-12, atol=1e-14)


def test_lanes_are_independent_of_each_other() -> None:
    problem = Valley()
    names = [("adam", {"lr": 0.05}), ("momentum", {"lr": 0.02}), ("adamp", {})]
    race = Run(problem, config(*names, n_starts=2)).run(5)
    for k, lane in enumerate(names):
        alone = Run(problem, config(lane, n_starts=2)).run(5)
        mine = [r for r in race if r.lane == k]
        for a, b in zip(mine, alone, strict=True):
            np.testing.assert_allclose(a.position, b.position, rtol=1e-13)


def expected_divergence_step(lr: float, start: tuple[float, float], factor: float | None = 1e6) -> int:
    """Gradient descent on Valley written out in numpy: the first step whose loss is not finite or,
    with a ``factor``, exceeds ``factor`` x max(|f(x_0)|, 1) (the run's divergence rule)."""
    x, y = start
    f0 = None
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(10_000):
            f = 0.5 * (x**2 + 10 * y**2) + 0.25 * x**4
            f0 = f if f0 is None else f0
            gx, gy = x + x**3, 10 * y
            if not (np.isfinite(f) and np.isfinite(gx) and np.isfinite(gy)):
                return t
            if factor is not None and abs(f) > factor * max(abs(f0), 1.0):
                return t
            x, y = x - lr * gx, y - lr * gy
    raise AssertionError("did not diverge")


@pytest.mark.parametrize("factor", [1e6, 1e3, None])
def test_diverging_rows_are_frozen_and_others_continue(factor: float | None) -> None:
    lr, start = 0.25, (1.5, -1.0)  # |1 - 10 lr| = 1.5 > 1: the y coordinate blows up
    t_div = expected_divergence_step(lr, start, factor)
    run = Run(Valley(), config(("sgd", {"lr": lr}), ("adam", {"lr": 0.05}), start=start,
                               divergence_factor=factor))
    records = run.run(t_div + 20)
    sgd = [r for r in records if r.lane == 0]
    adam = [r for r in records if r.lane == 1]
    assert sgd[t_div - 1].status == ("running",)
    reason = "loss not finite" if factor is None else f"|loss| {sgd[t_div].loss[0]:.3g} > {factor:g} x start"
    assert sgd[t_div].status == (f"diverged at step {t_div}: {reason}",)
    assert np.isfinite(sgd[t_div].loss[0]) == (factor is not None)
    frozen = sgd[t_div].position
    np.testing.assert_array_equal(sgd[-1].position, frozen)
    assert sgd[-1].update_norm[0] == 0.0
    assert adam[-1].status == ("running",) and np.isfinite(adam[-1].loss[0])
    assert adam[-1].loss[0] < adam[0].loss[0]


def test_a_start_with_a_non_finite_loss_diverges_at_step_0() -> None:
    run = Run(Valley(), config(("sgd", {}), ("adam", {}), start=(1e100, 0.0)))  # x^4 / 4 overflows
    assert [r.status for r in run.run(2)][-2:] == [("diverged at step 0: loss not finite",)] * 2


def test_default_divergence_rule_catches_a_huge_finite_loss() -> None:
    """The issue's case: SGD at a loss of ~1e230 is diverged, not "running" (old rule: only NaN/Inf)."""
    t_div = expected_divergence_step(0.25, (1.5, -1.0))
    run = Run(Valley(), config(("sgd", {"lr": 0.25}), start=(1.5, -1.0)))
    assert RunConfig.from_dict(run.config.to_dict()).divergence_factor == 1e6
    records = run.run(t_div + 1)
    assert records[-1].status[0].startswith(f"diverged at step {t_div}: |loss|")
    assert 1e6 * 7.390625 < records[-1].loss[0] < 1e300  # f(x_0) = 6.125 + 1.265625 (> 1), finite
    assert status_step(records[-1].status[0]) == t_div


def test_divergence_in_a_non_separable_lane_freezes_only_that_row() -> None:
    """The per-row path (one tensor per start) freezes exactly the rows that blow up."""
    register_optimizer(torch.optim.SGD, name="sgd-per-row", row_separable=False)
    try:
        lr = 0.25
        run = Run(Valley(), config(("sgd-per-row", {"lr": lr}), start=(1.5, 0.0), n_starts=3, seed=4))
        starts = run.starts.tolist()
        expected = [expected_divergence_step(lr, tuple(s)) if s[1] != 0 else None for s in starts]
        last = run.run(max(e for e in expected if e is not None) + 100)[-1]
        assert last.status[0] == "running" and last.loss[0] < 1e-12  # y = 0 keeps it stable
        for i in (1, 2):
            assert last.status[i].startswith(f"diverged at step {expected[i]}: |loss|")
    finally:
        unregister("sgd-per-row")


def test_set_hyperparameter_acts_at_next_step_and_is_logged() -> None:
    run = Run(Valley(), config(("sgd", {"lr": 0.01})))
    run.run(3)
    run.apply(SetHyperparameter(0, "lr", 0.05))
    (rec,) = run.step()
    x = rec.position[0]
    grad = np.array([x[0] + x[0] ** 3, 10 * x[1]])
    assert rec.hyperparameters["lr"] == 0.05
    np.testing.assert_allclose(rec.update_norm[0], 0.05 * np.linalg.norm(grad), rtol=1e-12)
    assert run.log[-1].tick == 3 and run.log[-1].event == SetHyperparameter(0, "lr", 0.05)


def test_invalid_events_raise_clearly_and_are_not_logged() -> None:
    run = Run(Valley(), config(("adam", {})))
    with pytest.raises(HyperparameterError, match=r"lr=-0\.1 is outside its allowed range"):
        run.apply(SetHyperparameter(0, "lr", -0.1))
    with pytest.raises(HyperparameterError, match=r"beta1=1\.0 is outside its allowed range \[0, 1\)"):
        run.apply(SetHyperparameter(0, "beta1", 1.0))
    with pytest.raises(HyperparameterError, match="no hyperparameter 'momentum'"):
        run.apply(SetHyperparameter(0, "momentum", 0.5))
    with pytest.raises(HyperparameterError, match="unknown optimizer 'adamm'"):
        run.apply(SwitchOptimizer(0, "adamm"))
    with pytest.raises(ValueError, match="no lane 7"):
        run.apply(SetHyperparameter(7, "lr", 0.1))
    assert run.log == []
    assert get_spec("adam").read(run.lanes[0].optimizer)["lr"] == 1e-3  # nothing was lost


def test_invalid_run_config_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(HyperparameterError, match="eps"):
        Run(Valley(), config(("adam", {"eps": -1.0})))
    with pytest.raises(ValueError, match="n_starts"):
        config(("adam", {}), n_starts=0)
    with pytest.raises(ValueError, match="start has 3 coordinates"):
        Run(Valley(), config(("adam", {}), start=(0.0, 1.0, 2.0)))


def test_switch_optimizer_keeps_position_or_restarts() -> None:
    run = Run(Valley(), config(("sgd", {"lr": 0.02})))
    run.run(5)
    here = run.positions(0).copy()
    run.apply(SwitchOptimizer(0, "adam", {"lr": 0.1}))
    (rec,) = run.step()
    assert rec.optimizer == "adam" and rec.step == 5
    np.testing.assert_array_equal(rec.position, here)
    # Adam's first step from fresh state moves every coordinate by exactly lr (m/sqrt(v) = sign(g)).
    np.testing.assert_allclose(np.abs(run.positions(0) - here), 0.1, rtol=1e-6)
    run.apply(SwitchOptimizer(0, "momentum", keep_position=False))
    (rec,) = run.step()
    assert rec.step == 0
    np.testing.assert_array_equal(rec.position, run.starts.numpy())


def test_reset_add_remove_lanes() -> None:
    run = Run(Valley(), config(("sgd", {})))
    run.run(3)
    lane = run.apply(AddLane("lion", {"lr": 0.01}))
    assert lane == 1
    recs = run.step()
    assert [(r.lane, r.step) for r in recs] == [(0, 3), (1, 0)]
    run.apply(Reset())
    recs = run.step()
    assert [(r.lane, r.step) for r in recs] == [(0, 0), (1, 0)]
    np.testing.assert_array_equal(recs[0].position, run.starts.numpy())
    run.apply(RemoveLane(0))
    assert [r.lane for r in run.step()] == [1]


def test_counts_and_wall_time_accumulate() -> None:
    run = Run(Valley(), config(("adam", {})))
    recs = run.run(4)
    assert recs[-1].counts.gradients == 4 and recs[-1].counts.function_values == 4
    assert recs[-1].counts.hvps == 0
    walls = [r.wall_time for r in recs]
    assert walls == sorted(walls) and walls[0] > 0


def test_records_are_immutable_plain_data() -> None:
    (rec,) = Run(Valley(), config(("adam", {}))).step()
    with pytest.raises(ValueError):
        rec.loss[0] = 0.0
    with pytest.raises(TypeError):
        rec.hyperparameters["lr"] = 1.0  # type: ignore[index]
    assert isinstance(rec.loss, np.ndarray) and not isinstance(rec.loss, torch.Tensor)


@pytest.mark.parametrize("problem", [Valley(), NoisyValley()], ids=lambda p: p.name)
def test_replay_from_config_and_json_event_log_is_exact(problem: Valley) -> None:
    cfg = config(("sgd", {"lr": 0.02}), ("adam", {"lr": 0.05}), ("adamp", {}), n_starts=3, seed=11)
    run = Run(problem, cfg)
    records = run.run(5)
    run.apply(SetHyperparameter(1, "beta1", 0.5))
    run.apply(Pause())
    records += run.run(2)  # a user pressing Step while paused
    run.apply(Resume())
    run.apply(SwitchOptimizer(0, "nesterov", {"momentum": 0.8}))
    records += run.run(4)
    run.apply(AddLane("rmsprop", schedules={"lr": {"kind": "linear", "steps": 4}}, clip={"threshold": 0.5}))
    run.apply(SetClip(1, {"kind": "value", "threshold": 0.3}))
    run.apply(SetSchedule(0, "momentum", {"kind": "exponential", "gamma": 0.9}))
    records += run.run(3)
    run.apply(Reset())
    run.apply(RemoveLane(2))
    records += run.run(3)

    log = json.loads(json.dumps(run.event_log()))  # what an export file would hold
    replayed_run, replayed = Run.replay(problem, RunConfig.from_dict(log["config"]),
                                        [LoggedEvent.from_dict(e) for e in log["events"]], log["ticks"])
    assert len(replayed) == len(records)
    assert all(a.same_values(b) for a, b in zip(records, replayed, strict=True))
    assert replayed_run.tick == run.tick


def test_seeded_starts_are_reproducible_and_seed_dependent() -> None:
    a = Run(Valley(), config(("sgd", {}), n_starts=5, seed=1)).starts
    b = Run(Valley(), config(("sgd", {}), n_starts=5, seed=1)).starts
    c = Run(Valley(), config(("sgd", {}), n_starts=5, seed=2)).starts
    assert torch.equal(a, b) and not torch.equal(a[1:], c[1:])
    assert torch.equal(a[0], Valley().x0())
    assert ((a >= -2) & (a <= 2)).all()


def test_device_is_resolved_once_and_honestly() -> None:
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_an_optimizer_refuses_a_problem_without_what_it_needs() -> None:
    with pytest.raises(ValueError, match="Sophia-G cannot run on valley: it needs a network with a"):
        Run(Valley(), config(("sophia_g", {})))
    run = Run(Valley(), config(("sgd", {})))
    with pytest.raises(ValueError, match="needs a network"):
        run.apply(SwitchOptimizer(0, "sophia_g"))
    assert run.lanes[0].spec.name == "sgd" and run.log == []


# -- what wraps an optimizer: clipping, diagnostics --------------------------------------------------

def valley_gradient(x: np.ndarray) -> np.ndarray:
    return np.stack([x[..., 0] + x[..., 0] ** 3, 10 * x[..., 1]], axis=-1)


def test_norm_clipping_acts_per_row_before_the_step() -> None:
    """SGD with |g| clipped at 5: each row moves by lr * g * min(1, 5/|g|), by hand, and records the
    clipped fraction per row (1 where its gradient was rescaled; |g| at the starts: 11.1, 13.1, 13.1,
    15.6, 8.3, 0.38)."""
    run = Run(Valley(), RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.01}, clip=Clip("norm", 5.0)),),
                                  n_starts=6, seed=1, device="cpu"))
    x = run.starts.numpy().copy()
    for rec in run.run(3):
        g = valley_gradient(x)
        norm = np.linalg.norm(g, axis=1)
        np.testing.assert_allclose(rec.position, x, rtol=1e-13)
        np.testing.assert_array_equal(rec.diagnostics["clipped_fraction"], (norm > 5.0).astype(float))
        np.testing.assert_allclose(rec.grad_norm, norm, rtol=1e-13)  # the true gradient, before clipping
        x = x - 0.01 * g * np.minimum(1.0, 5.0 / norm)[:, None]
    assert rec.diagnostics["clipped_fraction"].tolist() == [1, 1, 1, 1, 1, 0]  # rows are clipped alone


def test_value_clipping_on_a_per_row_lane() -> None:
    register_optimizer(torch.optim.SGD, name="sgd-per-row", row_separable=False)
    try:
        lane = LaneConfig("sgd-per-row", {"lr": 0.01}, clip={"kind": "value", "threshold": 2.0})
        run = Run(Valley(), RunConfig(lanes=(lane,), n_starts=3, seed=2, device="cpu"))
        x = run.starts.numpy().copy()
        for rec in run.run(3):
            g = valley_gradient(x)
            np.testing.assert_allclose(rec.position, x, rtol=1e-13)
            np.testing.assert_array_equal(rec.diagnostics["clipped_fraction"], (np.abs(g) > 2.0).mean(1))
            x = x - 0.01 * np.clip(g, -2.0, 2.0)
    finally:
        unregister("sgd-per-row")


class ValueProbe(torch.optim.Optimizer):
    """A closure-driven toy: it moves each coordinate by -lr * 3 (a stand-in for an estimate of the
    gradient, built from one function value) and takes no clip."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, dict(lr=lr))

    def estimate(self, oracles) -> list[torch.Tensor]:
        oracles()  # one function value
        return [torch.full_like(p, 3.0) for p in oracles.params]

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for p, e in zip(closure.params, self.estimate(closure), strict=True):
            p.sub_(self.param_groups[0]["lr"] * e)


class ClippedValueProbe(ValueProbe):
    """The same toy that honours the run's clip on its estimate and reports the clipped fraction."""

    clip: Clip | None = None

    @torch.no_grad()
    def step(self, closure=None) -> None:
        est = self.estimate(closure)
        self.fraction = float(clip_(est, self.clip)) if self.clip is not None else 0.0
        for p, e in zip(closure.params, est, strict=True):
            p.sub_(self.param_groups[0]["lr"] * e)

    def diagnostics(self) -> dict[str, float]:
        return {"clipped_fraction": self.fraction}


def test_a_closure_driven_lane_is_clipped_by_its_optimizer_or_refused() -> None:
    from engine.registry import Oracle

    register_optimizer(ValueProbe, name="value-probe", oracle=Oracle.VALUES)
    register_optimizer(ClippedValueProbe, name="clipped-probe", oracle=Oracle.VALUES)
    try:
        with pytest.raises(ValueError, match="value-probe cannot be clipped: it builds its own step from "
                                             "values and does not take a clip"):
            Run(Valley(), RunConfig(lanes=(LaneConfig("value-probe", clip=Clip("norm", 1.0)),), device="cpu"))
        run = Run(Valley(), RunConfig(lanes=(LaneConfig("value-probe"),), device="cpu"))
        with pytest.raises(ValueError, match="cannot be clipped"):
            run.apply(SetClip(0, Clip("norm", 1.0).to_dict()))
        assert run.log == []
        lane = LaneConfig("clipped-probe", {"lr": 0.1}, clip=Clip("norm", 1.5))
        run = Run(Valley(), RunConfig(lanes=(lane,), n_starts=2, device="cpu"))
        assert all(opt.clip == Clip("norm", 1.5) for opt in run.lanes[0].optimizers)
        start = run.starts.numpy().copy()
        rec, _ = run.run(2)
        # the estimate (3, 3) has norm 4.24 > 1.5: rescaled to norm 1.5 in each row
        np.testing.assert_allclose(run.positions(0), start - 2 * 0.1 * 1.5 / np.sqrt(2), rtol=1e-13)
        np.testing.assert_array_equal(rec.diagnostics["clipped_fraction"], [1.0, 1.0])
        run.apply(SetClip(0, None))
        assert run.lanes[0].optimizers[0].clip is None and "clipped_fraction" not in run.step()[0].diagnostics
        clipped = LaneConfig("sgd", clip=Clip("value", 1.0))
        clipped_sgd = Run(Valley(), RunConfig(lanes=(clipped,), device="cpu"))
        with pytest.raises(ValueError, match="value-probe cannot be clipped"):  # the lane keeps its clip
            clipped_sgd.apply(SwitchOptimizer(0, "value-probe"))
        assert clipped_sgd.lanes[0].spec.name == "sgd" and clipped_sgd.log == []
    finally:
        unregister("value-probe")
        unregister("clipped-probe")


class Reporting(torch.optim.SGD):
    """SGD that reports the mean |grad| it saw (a stand-in for Sophia's clipped fraction)."""

    def step(self, closure=None):
        self.seen = float(torch.stack([p.grad.abs().mean() for p in self.param_groups[0]["params"]]).mean())
        return super().step(closure)

    def diagnostics(self) -> dict[str, float]:
        return {"mean_abs_grad": self.seen} if hasattr(self, "seen") else {}


@pytest.mark.parametrize("per_trajectory", [False, True])
def test_declared_diagnostics_reach_the_records(per_trajectory: bool) -> None:
    """One optimizer over every row reports one value for the lane (repeated per row); one optimizer
    per start reports each row's own."""
    from engine.registry import Hyperparameter, OptimizerSpec, register

    register(OptimizerSpec(name="reporting", factory=Reporting, row_separable=not per_trajectory,
                           per_trajectory=per_trajectory, diagnostics={"mean_abs_grad": "mean |g_i|"},
                           hyperparameters=(Hyperparameter("lr", 0.01, 1e-6, 1.0, log=True),)))
    try:
        run = Run(Valley(), RunConfig(lanes=(LaneConfig("reporting"),), n_starts=3, seed=5, device="cpu"))
        x = run.starts.numpy()
        (rec,) = run.step()
        per_row = np.abs(valley_gradient(x)).mean(1)
        want = per_row if per_trajectory else np.full(3, per_row.mean())
        np.testing.assert_allclose(rec.diagnostics["mean_abs_grad"], want, rtol=1e-13)
    finally:
        unregister("reporting")


# -- issue 12's "wrong today" ---------------------------------------------------------------------

def test_every_computed_probe_and_metric_reaches_a_record() -> None:
    """ProbeConfig(every=10) and run(100, record_every=10): records at steps 0, 10, ..., 90, each
    with its probe and metrics, and the counted HVPs equal the recorded ones (old code: records at
    9, 19, ... with no probe, while 21 HVP-costing probes ran)."""
    problem = get_network("logistic_regression")
    run = Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.5}),), device="cpu", metrics_every=10,
                                 probes=ProbeConfig(every=10, tol=1e-8)))
    records = run.run(100, record_every=10)
    assert [r.step for r in records] == list(range(0, 100, 10))
    assert all(r.curvature is not None and r.curvature.step == r.step and r.metrics for r in records)
    assert records[-1].counts.hvps == sum(r.curvature.hvps for r in records) > 0
    # a schedule that does not line up with record_every still loses nothing
    run = Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.5}),), device="cpu", metrics_every=7,
                                 probes=ProbeConfig(every=6)))
    records = run.run(30, record_every=10)
    assert [r.step for r in records if r.curvature is not None] == [0, 6, 12, 18, 24]
    assert [r.step for r in records if r.metrics] == [0, 7, 14, 21, 28]
    assert {0, 10, 20} <= {r.step for r in records}
    assert records[-1].counts.hvps == sum(r.curvature.hvps for r in records if r.curvature is not None)


class SplitGame:
    """The bilinear game x^T y, x, y in R^3, declared as two parameter tensors (like a network's layers)."""

    name = "split-game"
    dim = 6
    latex = ""
    bounds = Bounds((-2.0,) * 6, (2.0,) * 6)
    minima = ()
    param_shapes = ((3,), (3,))
    ascent = (False,) * 3 + (True,) * 3

    def x0(self) -> torch.Tensor:
        return torch.tensor([1.5, -0.5, 1.0, 1.0, 0.5, -1.0], dtype=torch.float64)

    def loss(self, x: torch.Tensor, batch: object = None) -> torch.Tensor:
        return (x[:, :3] * x[:, 3:]).sum(-1)

    def sample_batch(self, generator: torch.Generator) -> None:
        return None


@pytest.mark.parametrize("optimizer", ["sgd", "adamp", "optimistic_md"])
def test_a_game_with_several_parameter_tensors_splits_its_ascent_mask(optimizer: str) -> None:
    """Old code: 'The size of tensor a (6) must match the size of tensor b (3)'. The split game must
    step exactly as the same game declared flat (GDA for sgd: z <- z - lr (y, -x))."""
    flat = SplitGame()
    flat_problem = type("FlatGame", (SplitGame,), {"param_shapes": None, "name": "flat-game"})()
    cfg = RunConfig(lanes=(LaneConfig(optimizer, {"lr": 0.1}),), n_starts=2, seed=1, device="cpu")
    split_records = Run(flat, cfg).run(5)
    flat_records = Run(flat_problem, cfg).run(5)
    for a, b in zip(split_records, flat_records, strict=True):
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-14)
        np.testing.assert_allclose(a.update_norm, b.update_norm, rtol=1e-14)
    if optimizer == "sgd":  # gradient descent-ascent by hand: z <- z - lr (y, -x)
        z = flat.x0().numpy()
        for _ in range(5):
            z = z - 0.1 * np.concatenate([z[3:], -z[:3]])
        run = Run(flat, cfg)
        run.run(5)
        np.testing.assert_allclose(run.positions(0)[0], z, rtol=1e-13)


class ScalarLoss(Valley):
    name = "scalar-loss"

    def loss(self, x: torch.Tensor, batch: object = None) -> torch.Tensor:
        return super().loss(x).sum()  # the bug: one number for the whole batch


class ShortStart(Valley):
    name = "short-start"

    def x0(self) -> torch.Tensor:
        return torch.tensor([1.0], dtype=torch.float64)


class IntegerLoss(Valley):
    name = "integer-loss"

    def loss(self, x: torch.Tensor, batch: object = None) -> torch.Tensor:
        return super().loss(x).round().long()


class BrokenLoss(Valley):
    name = "broken-loss"

    def loss(self, x: torch.Tensor, batch: object = None) -> torch.Tensor:
        return x[:, 5]


def test_the_problem_contract_is_checked_when_the_run_starts() -> None:
    """Old code: 'slice() cannot be applied to a 0-dim tensor' deep in run.py, at the first step."""
    cases = [(ScalarLoss(), r"scalar-loss: loss\(x\) must return one loss per row, shape \[B\] for x of "
                            r"shape \[B, 2\]; for x of shape \[2, 2\] it returned shape \[\]"),
             (ShortStart(), r"short-start: x0\(\) must return a tensor of shape \[dim\] = \[2\], got \[1\]"),
             (IntegerLoss(), r"integer-loss: loss\(x\) must return floating-point values, got torch.int64"),
             (BrokenLoss(), r"broken-loss: loss\(x\) failed on points x of shape \[2, 2\]: index 5 is out")]
    for problem, match in cases:
        with pytest.raises(ValueError, match=match):
            Run(problem, config(("sgd", {})))


class Flaky(torch.optim.SGD):
    """SGD that raises at its fourth step (step 3)."""

    def step(self, closure=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 4:
            raise RuntimeError("the preconditioner is singular")
        return super().step(closure)


def test_a_raising_lane_stops_alone_with_its_message() -> None:
    register_optimizer(Flaky, name="flaky", row_separable=True)
    try:
        cfg = config(("flaky", {"lr": 0.01}), ("adam", {"lr": 0.05}), n_starts=2)
        run = Run(Valley(), cfg)
        records = run.run(6)
        flaky = [r for r in records if r.lane == 0]
        adam = [r for r in records if r.lane == 1]
        message = "stopped at step 3: flaky failed: the preconditioner is singular"
        assert [r.step for r in flaky] == [0, 1, 2, 3] and flaky[-1].status == (message, message)
        assert flaky[-1].update_norm.tolist() == [0.0, 0.0]
        np.testing.assert_array_equal(run.positions(0), flaky[-1].position)  # where step 3 began
        assert [r.step for r in adam] == list(range(6)) and adam[-1].status == ("running", "running")
        assert run.stopped == {0: message} and not run.paused
        log = json.loads(json.dumps(run.event_log()))
        _, again = Run.replay(Valley(), RunConfig.from_dict(log["config"]), [], log["ticks"])
        assert all(a.same_values(b) for a, b in zip(records, again, strict=True))
        run.apply(Reset())  # a fresh optimizer: the lane goes on
        assert run.stopped == {} and [r.status[0] for r in run.step()] == ["running", "running"]
    finally:
        unregister("flaky")


def test_a_lane_that_does_not_use_gradients_measures_them_on_a_schedule(monkeypatch) -> None:
    """ZO-SGD's gradient norm is an instrument: measured every grad_norm_every lane steps (NaN between),
    equal to the true norm there; no backward pass on other steps (old code: one every step)."""
    problem = get_landscape("rosenbrock")
    real_grad = torch.autograd.grad
    calls = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or real_grad(*a, **k))
    run = Run(problem, RunConfig(lanes=(LaneConfig("zo_sgd", {"lr": 1e-3}),), n_starts=2, seed=0,
                                 device="cpu", grad_norm_every=5))
    records = run.run(12)
    assert len(calls) == 3  # steps 0, 5, 10
    for r in records:
        measured = np.isfinite(r.grad_norm)
        assert measured.all() == (r.step % 5 == 0) and measured.any() == measured.all()
        if r.step % 5 == 0:
            x = torch.tensor(r.position, requires_grad=True)
            (g,) = real_grad(problem.loss(x).sum(), x)
            np.testing.assert_allclose(r.grad_norm, g.norm(dim=1).numpy(), rtol=1e-13)
    assert 0 < records[-1].compute_time < records[-1].wall_time and run.instrument_time > 0
    assert RunConfig.from_dict(run.config.to_dict()).grad_norm_every == 5
    none = Run(problem, RunConfig(lanes=(LaneConfig("zo_sgd"),), device="cpu", grad_norm_every=None)).run(3)
    assert all(np.isnan(r.grad_norm).all() for r in none)


def test_mixed_lanes_step_as_they_would_alone() -> None:
    """Splitting the batched pass by need (gradient lanes, zeroth-order lanes) changes no trajectory."""
    problem = get_network("moons_mlp", batch_size=32)
    lanes = (LaneConfig("zo_sgd", {"lr": 1e-2}), LaneConfig("adam", {"lr": 1e-2}))
    both = Run(problem, RunConfig(lanes=lanes, device="cpu", seed=3)).run(6)
    for k, lane in enumerate(lanes):
        alone = Run(problem, RunConfig(lanes=(lane,), device="cpu", seed=3)).run(6)
        for a, b in zip([r for r in both if r.lane == k], alone, strict=True):
            np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12)


def test_clips_and_schedules_replay_exactly_from_events() -> None:
    problem = NoisyValley()
    first = LaneConfig("sgd", {"lr": 0.02}, schedules={"lr": Schedule("linear", steps=8)},
                       clip=Clip("norm", 2.0))
    run = Run(problem, RunConfig(lanes=(first, LaneConfig("adam", {"lr": 0.05})), n_starts=3, seed=5,
                                 device="cpu"))
    records = run.run(3)
    run.apply(SetClip(1, {"kind": "coordinate", "fraction": 0.5}))
    run.apply(AddLane("momentum", {"lr": 0.01}, schedules={"lr": {"kind": "exponential", "gamma": 0.8}},
                      clip={"kind": "value", "threshold": 1.0}))
    run.apply(SwitchOptimizer(0, "nesterov", {"lr": 0.01}, schedules={"lr": {"kind": "cosine", "steps": 5}}))
    records += run.run(4)
    run.apply(SetSchedule(2, "momentum", {"kind": "linear", "steps": 3}))
    records += run.run(3)
    log = json.loads(json.dumps(run.event_log()))
    _, again = Run.replay(problem, RunConfig.from_dict(log["config"]),
                          [LoggedEvent.from_dict(e) for e in log["events"]], log["ticks"])
    assert len(again) == len(records) and all(a.same_values(b) for a, b in zip(records, again, strict=True))
    last = {r.lane: r for r in records}
    assert set(last[1].diagnostics) == {"clipped_fraction"}
    assert last[0].diagnostics  # the switch kept the lane's clip
    assert last[2].hyperparameters["momentum"] == 0.0


def test_events_refuse_unknown_fields_in_plain_words() -> None:
    with pytest.raises(ValueError, match=r"a 'pause' event has no field 'lane'; it takes no fields"):
        LoggedEvent.from_dict({"tick": 0, "kind": "pause", "lane": 3})
    with pytest.raises(ValueError, match=r"a 'set_hyperparameter' event needs 'value'"):
        LoggedEvent.from_dict({"tick": 0, "kind": "set_hyperparameter", "lane": 0, "name": "lr"})
    with pytest.raises(ValueError, match="schedule kind must be one of"):
        LoggedEvent.from_dict({"tick": 0, "kind": "set_schedule", "lane": 0, "name": "lr",
                               "schedule": {"kind": "zigzag"}})


def test_the_readme_engine_example_runs() -> None:
    """The README's engine example, executed as written (its output checked loosely: it is a demo)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### The engine in a few lines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    adam = [r for r in scope["records"] if r.lane == 0]
    assert len(adam) == 300 and all("clipped_fraction" in r.diagnostics for r in adam)
    lrs = [r.hyperparameters["lr"] for r in adam]
    assert lrs[0] == 0.0 and lrs[20] == 0.05 and lrs[-1] < 1e-5  # warm-up, then cosine decay


def test_a_removed_lane_keeps_no_trajectory_or_probe_state() -> None:
    """Adding and removing lanes for a whole class session must not grow the run's memory."""
    problem = get_network("moons_mlp", width=4, depth=1)
    run = Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.1}),), device="cpu",
                                 snapshot_every=1, probes=ProbeConfig(every=1, tol=1e-3)))
    for _ in range(5):
        lane = run.apply(AddLane("adam", {"lr": 0.01}))
        run.run(2)
        run.apply(RemoveLane(lane))
    assert set(run._snapshots) == {0} and set(run._warm) == {0}


# -- records as columns, the divergence check on whole arrays, fused kernels, networks by parts ---

def old_status_rule(diverged_at: list[int], reasons: dict[int, str], stopped: str | None) -> tuple[str, ...]:
    """The per-row rule records followed when each carried a tuple of texts (written out here)."""
    out = []
    for i, s in enumerate(diverged_at):
        if s >= 0:
            out.append(f"diverged at step {s}: {reasons[i]}")
        else:
            out.append(stopped if stopped is not None else "running")
    return tuple(out)


@pytest.mark.parametrize("stopped", [None, "stopped at step 7: flaky failed: singular"])
def test_status_texts_come_from_the_columns_as_the_old_rule_wrote_them(stopped: str | None) -> None:
    rng = np.random.default_rng(0)
    diverged_at = np.where(rng.random(50) < 0.3, rng.integers(0, 9, 50), -1)
    reasons = {int(i): ["loss not finite", "gradient not finite", "|loss| 2.5e+07 > 1e+06 x start"][i % 3]
               for i in np.flatnonzero(diverged_at >= 0)}
    expected = old_status_rule(diverged_at.tolist(), reasons, stopped)
    assert tuple(statuses(diverged_at, reasons, stopped)) == expected
    fields = dict(tick=0, lane=0, optimizer="x", step=9, loss=np.zeros(50), grad_norm=np.zeros(50),
                  update_norm=np.zeros(50), position=None, hyperparameters={}, counts=OracleCounts(),
                  wall_time=0.0)
    built = make_record(**fields, diverged_at=diverged_at, reasons=reasons, stopped=stopped)
    parsed = make_record(**fields, status=expected)  # the old way of making one still works
    assert built.status == expected and parsed.status == expected and built.same_values(parsed)
    assert parsed.diverged_at.tolist() == diverged_at.tolist() and dict(parsed.reasons) == reasons
    assert parse_statuses(expected) == (pytest.approx(diverged_at), reasons, stopped)
    with pytest.raises(ValueError, match="not a status"):
        parse_statuses(("running", "exploded"))


def test_each_row_of_a_separable_lane_diverges_at_its_own_step() -> None:
    """Rows that blow up at different steps (some while others are frozen already) are each marked
    at the step the numpy reference finds, and stay where they were; the rest run on."""
    lr = 0.22
    run = Run(Valley(), config(("sgd", {"lr": lr}), n_starts=8, seed=5))
    starts = run.starts.tolist()
    expected = []
    for s in starts:
        try:
            expected.append(expected_divergence_step(lr, tuple(s)))
        except AssertionError:
            expected.append(-1)
    assert len({e for e in expected if e >= 0}) >= 3  # several distinct steps
    records = run.run(max(expected) + 5)
    last = records[-1]
    assert last.diverged_at.tolist() == expected
    for i, t in enumerate(expected):
        if t >= 0:
            assert last.status[i].startswith(f"diverged at step {t}: |loss|")
            np.testing.assert_array_equal(last.position[i], records[t].position[i])  # frozen there
            assert records[t - 1].status[i] == "running"
        else:
            assert last.status[i] == "running"
    frame = records_frame(records)
    want = [old_status_rule([t if 0 <= t <= r.step else -1 for t in expected],
                            {i: r.reasons.get(i, "") for i in range(len(expected))}, None)[i]
            for r in records for i in range(len(expected))]
    assert frame["status"].tolist() == want


class Steep:
    """f(x) = 1e160 (x_0 + x_1): a finite loss whose gradient (1e160, 1e160) has an infinite norm."""

    name = "steep"
    dim = 2
    bounds = None
    minima = ()

    def x0(self) -> torch.Tensor:
        return torch.zeros(2, dtype=torch.float64)

    def loss(self, x: torch.Tensor, batch: object = None) -> torch.Tensor:
        return 1e160 * x.sum(-1)

    def sample_batch(self, generator: torch.Generator) -> None:
        return None


def test_an_overflowing_gradient_norm_alone_is_not_divergence() -> None:
    """Whole-array checks flag a row whose gradient norm is not finite; the exact check then finds
    its gradient and loss finite and lets it run (the rule is about the gradient, not its norm)."""
    run = Run(Steep(), config(("sgd", {"lr": 1e-6})))
    first, second = run.step(), run.step()
    assert first[0].grad_norm[0] == np.inf and first[0].loss[0] == 0.0 and first[0].status == ("running",)
    assert second[0].status == ("diverged at step 1: loss not finite",)  # x moved by -1e154


def test_records_keep_their_values_as_the_run_goes_on() -> None:
    """Records share the run's fresh arrays rather than copying them: nothing the run does later
    (steps, divergence, a stop, a reset, a switch) may change a record it handed out."""
    register_optimizer(Flaky, name="flaky", row_separable=True)
    try:
        run = Run(Valley(), config(("sgd", {"lr": 0.22}), ("flaky", {"lr": 0.01}), n_starts=4, seed=5))
        records = run.run(6)
        snapshot = [(r.loss.copy(), r.grad_norm.copy(), r.update_norm.copy(), r.position.copy(),
                     r.diverged_at.copy(), dict(r.reasons), r.status) for r in records]
        run.run(30)
        run.apply(SwitchOptimizer(0, "adam"))
        run.run(3)
        run.apply(Reset())
        run.run(3)
        for r, (loss, gnorm, unorm, pos, div, reasons, status) in zip(records, snapshot, strict=True):
            for a, b in ((r.loss, loss), (r.grad_norm, gnorm), (r.update_norm, unorm), (r.position, pos),
                         (r.diverged_at, div)):
                np.testing.assert_array_equal(a, b)
                with pytest.raises(ValueError):
                    a[0] = 1.0
            assert dict(r.reasons) == reasons and r.status == status
    finally:
        unregister("flaky")


def plain_adam(cls: type[torch.optim.Optimizer], starts: torch.Tensor, steps: int,
               **kw: object) -> torch.Tensor:
    x = starts.clone().requires_grad_(True)
    opt = cls([x], **kw)
    for _ in range(steps):
        (g,) = torch.autograd.grad(Valley().loss(x).sum(), [x])
        x.grad = g
        opt.step()
    return x.detach()


@pytest.mark.parametrize(("name", "cls", "hp"), [
    ("adam", torch.optim.Adam, {"lr": 0.05}),
    ("adamw", torch.optim.AdamW, {"lr": 0.05, "weight_decay": 0.1}),
    ("amsgrad", torch.optim.Adam, {"lr": 0.05, "amsgrad": True}),
])
def test_fused_lanes_step_exactly_as_torchs_fused_kernel_and_unfused_as_its_single_tensor_path(
        name: str, cls: type[torch.optim.Optimizer], hp: dict) -> None:
    engine_hp = {k: v for k, v in hp.items() if k != "amsgrad"}
    for fused, flags in ((True, {"fused": True}), (False, {"foreach": False})):
        run = Run(Valley(), config((name, engine_hp), n_starts=6, seed=2, fused=fused))
        run.run(40)
        assert bool(run.lanes[0].optimizer.param_groups[0]["fused"]) is fused
        want = plain_adam(cls, run.starts, 40, **hp, **flags)
        assert torch.equal(torch.as_tensor(run.positions(0)), want), (name, fused)
    assert RunConfig.from_dict({**config(("adam", {})).to_dict()}).fused is True
    with pytest.raises(ValueError, match="fused must be True or False"):
        config(("adam", {}), fused="yes")


def test_a_lane_of_another_kind_is_never_fused() -> None:
    """SGD and Adagrad, and a subclass of Adam (whose step may differ), keep their own step."""
    class MyAdam(torch.optim.Adam):
        pass

    register_optimizer(MyAdam, name="my-adam", row_separable=True)
    try:
        run = Run(Valley(), config(("sgd", {}), ("adagrad", {}), ("my-adam", {})))
        fused = [bool(lane.optimizer.param_groups[0].get("fused")) for lane in run.lanes.values()]
        assert fused == [False] * 3
    finally:
        unregister("my-adam")


class Rebinding(torch.optim.Optimizer):
    """Gradient descent that gives each leaf new storage at every step (``p.data = ...``), as a
    person's own optimizer may."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.data = p.data - group["lr"] * p.grad


@pytest.mark.parametrize("lanes, n_starts", [
    ((("adam", {"lr": 0.01}), ("adamp", {"lr": 0.01}), ("sgd", {"lr": 0.1})), 1),
    ((("adam", {"lr": 0.01}), ("adamp", {"lr": 0.01}), ("sgd", {"lr": 0.1})), 3),
    ((("adam", {"lr": 0.01}),), 1),  # one lane, one start: its leaves in their own shapes (_Lane.twins)
    ((("rebinding", {"lr": 0.1}),), 1),  # ...which follow a leaf given new storage
])
def test_a_network_runs_on_its_parameters_as_they_are_exactly_as_on_the_flat_vector(
        lanes: tuple[tuple[str, dict], ...], n_starts: int) -> None:
    """``loss_parts`` (the leaves as one tensor per parameter) and ``loss_row`` (one start's leaves
    in their own shapes) give the very records the flat view ``loss([B, P])`` gives: losses,
    gradients, steps, metrics, for separable and per-row lanes."""
    def problem(flat: bool):
        p = get_network("digits_mlp", width=8, n_train=200, batch_size=32, l2=1e-3)
        if flat:
            p.loss_parts = p.loss_row = None  # the run then flattens the leaves, as it always did
        return p

    register_optimizer(Rebinding, name="rebinding", row_separable=True)
    try:
        cfg = config(*lanes, n_starts=n_starts, seed=3, metrics_every=4)
        by_parts, flat = Run(problem(False), cfg).run(9), Run(problem(True), cfg).run(9)
    finally:
        unregister("rebinding")
    assert len(by_parts) == len(flat) == 9 * len(lanes) and any(r.metrics for r in flat)
    assert len({float(r.loss[0]) for r in flat}) > 5  # the runs move
    assert all(a.same_values(b) for a, b in zip(by_parts, flat, strict=True))


def test_loss_parts_equals_the_flat_loss_and_its_gradient() -> None:
    p = get_network("digits_mlp", width=8, n_train=100, batch_size=None, l2=1e-2)
    flat = torch.stack([p.x0(), 0.5 * p.x0(), -p.x0()])
    for rows in (flat[:1], flat):
        pieces = rows.split([int(np.prod(s)) for s in p.param_shapes], dim=-1)
        parts = [t.reshape(len(rows), *s).clone().requires_grad_(True)
                 for t, s in zip(pieces, p.param_shapes, strict=True)]
        x = rows.clone().requires_grad_(True)
        a, b = p.loss_parts(parts), p.loss(x)
        assert torch.equal(a, b)
        ga = torch.autograd.grad(a.sum(), parts)
        (gb,) = torch.autograd.grad(b.sum(), x)
        assert torch.equal(torch.cat([g.reshape(len(rows), -1) for g in ga], dim=-1), gb)


def test_a_lane_that_stops_between_records_reports_where_its_step_began() -> None:
    """On steps that keep no record the run reuses one buffer for where each step began; the
    record of a stop there must keep its own copy (the lane goes on after a switch)."""
    register_optimizer(Flaky, name="flaky", row_separable=True)
    try:
        run = Run(Valley(), config(("flaky", {"lr": 0.01}), n_starts=3, seed=1))
        got = [r for _ in range(4) for r in run.step(record=False)]
        assert len(got) == 1 and got[0].step == 3 and got[0].status[0].startswith("stopped at step 3")
        began = run.positions(0).copy()
        np.testing.assert_array_equal(got[0].position, began)
        run.apply(SwitchOptimizer(0, "sgd", {"lr": 0.01}))
        for _ in range(5):
            run.step(record=False)
        assert not np.array_equal(run.positions(0), began)
        np.testing.assert_array_equal(got[0].position, began)
    finally:
        unregister("flaky")


def test_oracle_counts_add_every_field():
    """Counts add field by field: every field of OracleCounts, including any added later."""
    import dataclasses
    names = [f.name for f in dataclasses.fields(OracleCounts)]
    a = OracleCounts(**{n: i + 1 for i, n in enumerate(names)})
    b = OracleCounts(**{n: 10 * (i + 1) for i, n in enumerate(names)})
    assert (a + b).as_dict() == {n: 11 * (i + 1) for i, n in enumerate(names)}


def test_network_loss_without_functional_call_matches_the_module():
    """A network's loss puts the run's tensors in the module's own slots (not functional_call): values
    and gradients equal functional_call's, for one row and for several (vmapped), and the module
    keeps its own parameters."""
    import torch.nn.functional as F
    problem = get_network("digits_mlp")
    own = [p.detach().clone() for p in problem.module.parameters()]
    idx = torch.arange(64)
    X, y = problem.X_train[idx], problem.y_train[idx]
    for x in (problem.x0()[None], torch.stack([problem.x0(), problem.x0() * 0.5])):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.loss(x, idx).sum(), x)
        for row in range(len(x)):
            theta = x[row].detach().clone().requires_grad_(True)
            out = torch.func.functional_call(problem.module, problem.unflatten(theta), (X,))
            ref = F.cross_entropy(out, y)
            (g_ref,) = torch.autograd.grad(ref, theta)
            assert float(problem.loss(x[row].detach()[None], idx)[0]) == float(ref)
            # one row: the same kernels; several: vmap's batched ones (rounded differently)
            torch.testing.assert_close(g[row], g_ref, rtol=0 if len(x) == 1 else 1e-12, atol=1e-16)
    assert all(torch.equal(p, q) for p, q in zip(problem.module.parameters(), own, strict=True))
    assert all(isinstance(p, torch.nn.Parameter) for p in problem.module.parameters())


class HalfWay(torch.optim.SGD):
    """SGD that takes its third step and then raises (its parameters moved before the error)."""

    def step(self, closure=None):
        self.calls = getattr(self, "calls", 0) + 1
        out = super().step(closure)
        if self.calls == 3:
            raise RuntimeError("diverging preconditioner")
        return out


def test_a_raising_lane_goes_back_where_its_step_began_on_steps_without_records() -> None:
    """Steps that yield no record keep no copy of x_t for torch's own optimizers (which raise
    before they write); a lane still ends where its failing step began: for one of torch's (its step
    made to raise), and for an optimizer that wrote before raising (a copy is kept for it)."""
    register_optimizer(HalfWay, name="halfway", row_separable=True)
    try:
        for problem, lane in ((Valley(), ("adam", {"lr": 0.05})), (get_network("digits_mlp"), ("adam", {})),
                              (Valley(), ("halfway", {"lr": 0.01}))):
            run = Run(problem, config(lane, n_starts=2 if isinstance(problem, Valley) else 1))
            assert run.lanes[0].atomic is (lane[0] == "adam")
            run.run(2, record_every=100)  # no records kept (but a network's metrics at step 0)
            if lane[0] == "adam":
                def fail(*args, **kwargs):
                    raise RuntimeError("diverging preconditioner")
                run.lanes[0].optimizer.step = fail
            before = run.positions(0).copy()
            (rec,) = run.step(record=False)  # the stop yields a record
            assert rec.step == 2 and rec.stopped.startswith("stopped at step 2: ")
            assert rec.stopped.endswith(" failed: diverging preconditioner")
            np.testing.assert_array_equal(run.positions(0), before)
            if rec.position is not None:
                np.testing.assert_array_equal(rec.position, before)
    finally:
        unregister("halfway")
