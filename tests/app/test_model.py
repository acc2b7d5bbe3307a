"""The race session without a page: lanes as param objects, one rebuild per change of the run's
settings, build first and swap after, events carried to the engine, replayed events mirrored."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from app.lanes import PALETTE, Lane, hyperparameter_class
from app.model import RaceSession
from app.sharing import RaceSpec, RunParams, lanes_of
from engine.events import AddLane, LoggedEvent, Reset, SetHyperparameter, SwitchOptimizer
from engine.registry import get_spec
from tests.app.conftest import wait_for


def drain_until(s: RaceSession, cond, timeout: float = 10.0) -> list:
    batches = []

    def check() -> bool:
        batches.append(s.drain())
        return cond()
    wait_for(check, timeout)
    return batches


def test_the_models_never_import_panel() -> None:
    code = ("import sys, app.model, app.lanes, app.sharing, app.batch, app.jobs, app.ranking, app.presets; "
            "print(sorted(m for m in ('panel', 'bokeh', 'holoviews') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_lanes_hyperparameters_are_parameters_built_from_its_spec() -> None:
    spec = get_spec("adam")
    hp = hyperparameter_class(spec)()
    for h in spec.hyperparameters:
        p = hp.param[h.name]
        assert getattr(hp, h.name) == h.default and p.bounds == (h.low, h.high)
        assert p.inclusive_bounds == (h.include_low, h.include_high)
    assert hyperparameter_class(spec).log_scale == {h.name for h in spec.hyperparameters if h.log}
    with pytest.raises(ValueError, match="lr"):
        hp.lr = -1.0  # outside [low, high]: refused by the parameter itself
    assert hp.lr == get_spec("adam").defaults()["lr"]


def test_the_learning_rate_lives_on_the_lane_and_travels_as_one_event(session: RaceSession) -> None:
    """The lane's parameter is the only home of the value: setting it sends one engine event, which
    takes effect at the next step and is logged; the record carries the new value."""
    adam = session.lanes[1]
    session.step()
    wait_for(lambda: session.worker.tick == 1)
    adam.hyperparameters.lr = 0.05
    session.step()
    recs = drain_until(session, lambda: adam.id in session.latest and session.latest[adam.id].step == 1)
    log = session.worker.call(lambda run: list(run.log)).result(timeout=10)
    assert [(e.tick, e.event) for e in log if isinstance(e.event, SetHyperparameter)] == \
        [(1, SetHyperparameter(adam.engine_id, "lr", 0.05))]
    assert session.latest[adam.id].hyperparameters["lr"] == 0.05
    marks = [m.label for b in recs for m in b.marks]
    assert marks == ["Adam: lr 0.001 → 0.05"]


def test_run_settings_changed_together_build_one_run(session: RaceSession) -> None:
    before, worker = session.revision, session.worker
    session.param.update(seed=3, n_starts=4, problem="himmelblau")
    assert session.revision == before + 1 and session.worker is not worker
    assert worker.join(2.0)  # the old worker ended
    run = session.worker.run
    assert (run.config.seed, run.config.n_starts, run.problem.name) == (3, 4, "himmelblau")
    assert [ln.label for ln in session.lanes] == ["SGD", "Adam"]  # the same lanes went on


def test_a_rejected_setting_leaves_the_running_race_exactly_as_it_was(session: RaceSession) -> None:
    session.play()
    wait_for(lambda: session.worker.tick > 5)
    worker, revision = session.worker, session.revision
    session.param.update(problem="custom: type f(x, y)", expression="sin(x")
    assert "column" in session.message and session.worker is worker and worker.alive
    assert (session.problem, session.revision) == ("quadratic", revision)  # the settings say what runs
    tick = worker.tick
    wait_for(lambda: worker.tick > tick + 5)  # and it is still running


def test_reset_keeps_the_lanes_their_ids_and_colours(session: RaceSession) -> None:
    ids = [(ln.id, ln.slot) for ln in session.lanes]
    session.play()
    wait_for(lambda: session.worker.tick > 20)
    session.drain()
    session.reset()
    batches = drain_until(session, lambda: session.origin > 0)
    assert batches[-1].reset and [(ln.id, ln.slot) for ln in session.lanes] == ids
    assert session.origin > 0 and any(isinstance(e.event, Reset) for e in session.worker.run.log)
    drain_until(session, lambda: all(k in session.latest for k, _ in ids))
    for lane_id, _ in ids:  # the race's x-axis counts from the reset
        assert session.latest[lane_id].tick >= session.origin


def test_an_added_lane_starts_at_the_step_it_joined_with_a_marker(session: RaceSession) -> None:
    for _ in range(5):
        session.step()
    wait_for(lambda: session.worker.tick == 5)
    session.drain()
    lion = session.add_lane("lion")
    assert lion.color == PALETTE[2]  # the first free slot
    session.step()
    batches = drain_until(session, lambda: lion.id in session.latest)
    first = session.latest[lion.id]
    assert first.step == 0 and first.tick == 5  # its own step 0 at the race's step 5
    marks = [m for b in batches for m in b.marks]
    assert [(m.label, m.at["step"]) for m in marks] == [("+ Lion", 5)]
    assert any(isinstance(e.event, AddLane) for e in session.worker.run.log)


def test_a_removed_lane_leaves_and_its_colour_is_not_handed_on_at_once(session: RaceSession) -> None:
    sgd = session.lanes[0]
    session.remove_lane(sgd)
    assert [ln.label for ln in session.lanes] == ["Adam"]
    lion = session.add_lane("lion")
    assert lion.slot not in (sgd.slot, session.lanes[0].slot)


def test_a_switch_the_problem_cannot_run_is_refused_and_the_lane_keeps_its_optimizer() -> None:
    s = RaceSession(problem="rosenbrock", optimizers=["sgd"])
    try:
        assert not s.switch_optimizer(s.lanes[0], "sophia_g")
        assert "Sophia-G" in s.message and s.lanes[0].optimizer == "sgd"
        assert s.worker.call(lambda run: run.lanes[0].spec.name).result(timeout=10) == "sgd"
    finally:
        s.close()


def test_a_switch_is_a_new_segment_of_the_lane(session: RaceSession) -> None:
    lane = session.lanes[0]
    assert session.switch_optimizer(lane, "lion")
    assert (lane.optimizer, lane.segment, lane.label) == ("lion", 1, "Lion")
    assert lane.values() == get_spec("lion").defaults()
    ev = session.worker.call(lambda run: [e.event for e in run.log]).result(timeout=10)
    assert ev == [SwitchOptimizer(lane.engine_id, "lion", get_spec("lion").defaults(), keep_position=True)]


def test_a_replayed_race_mirrors_its_events_into_the_lanes_without_sending_them_back() -> None:
    events = (LoggedEvent(10, SetHyperparameter(0, "lr", 0.02)), LoggedEvent(20, AddLane("adam",
                                                                                         {"lr": 0.01})))
    spec = RaceSpec(RunParams(problem="quadratic"), lanes_of([("sgd", {"lr": 0.01})]), events, ticks=30)
    s = RaceSession(problem="quadratic", optimizers=["sgd"], speed=1000)
    try:
        assert s.load(spec)
        s.play()
        drain_until(s, lambda: len(s.lanes) == 2 and s.lanes[1].id in s.latest)
        assert s.lanes[0].hyperparameters.lr == 0.02 and s.lanes[1].optimizer == "adam"
        log = s.worker.call(lambda run: [e.event for e in run.log]).result(timeout=10)
        assert sum(isinstance(e, SetHyperparameter) for e in log) == 1  # not sent again by the mirror
        assert s.latest[s.lanes[1].id].tick >= 20
    finally:
        s.close()


def test_a_replay_of_a_race_saved_paused_says_paused_where_it_stopped() -> None:
    spec = RaceSpec(RunParams(problem="quadratic"), lanes_of([("sgd", {})]), ticks=25, paused=True)
    s = RaceSession(problem="quadratic", optimizers=["sgd"], speed=1000)
    try:
        assert s.load(spec)
        s.play()
        drain_until(s, lambda: not s.running)
        time.sleep(0.1)
        assert s.worker.tick == 25
    finally:
        s.close()


def test_a_lane_whose_optimizer_raises_is_shown_stopped_and_the_others_go_on() -> None:
    import torch

    from engine.registry import register, unregister
    from engine.specs import OptimizerSpec

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("the broken optimizer broke")

    base = get_spec("sgd")
    register(OptimizerSpec("t_broken", lambda params, **hp: Broken(params, **hp), base.hyperparameters),
             replace=True)
    s = RaceSession(problem="quadratic", lanes=[("t_broken", {}), ("sgd", {})], speed=500)
    try:
        s.play()
        drain_until(s, lambda: s.lanes[1].id in s.latest and s.latest[s.lanes[1].id].step > 10)
        broken = s.latest.get(s.lanes[0].id)
        assert s.running and broken is not None
        assert broken.status[0].startswith("stopped at step 0") and "broke" in broken.status[0]
    finally:
        s.close()
        unregister("t_broken")


def test_lane_objects_mirror_values_without_an_event() -> None:
    sent = []
    lane = Lane("sgd", {"lr": 0.01}, slot=0, on_change=lambda *a: sent.append(a[1:]))
    lane.mirror("lr", 0.02)
    lane.hyperparameters.lr = 0.03
    assert sent == [("lr", 0.02, 0.03)] and np.isclose(lane.values()["lr"], 0.03)
