"""Run: batched races equal independent runs, divergence is caught at the right step, events act
at the next step and are logged, and a replay from config + log reproduces every record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.device import resolve_device
from engine.events import (
    AddLane,
    LoggedEvent,
    Pause,
    RemoveLane,
    Reset,
    Resume,
    SetHyperparameter,
    SwitchOptimizer,
)
from engine.problem import Bounds, Problem
from engine.records import status_step
from engine.registry import HyperparameterError, available, get_spec, register_optimizer, unregister
from engine.run import LaneConfig, Run, RunConfig, _Lane
from landscapes import get_network


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
    monkeypatch.setattr(_Lane, "_row_seed", lambda self, row: 123)
    if get_spec(name).requires:  # Sophia-G samples labels: it needs a network
        problem = get_network("logistic_regression")
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
    run.apply(AddLane("rmsprop"))
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
