"""The background worker: steps off the calling thread, pauses before the next step, applies
events in order between steps, reports bad input without dying, and stops on request."""

from __future__ import annotations

import time

import numpy as np
import pytest

from engine.events import SetHyperparameter
from engine.run import LaneConfig, Run, RunConfig
from engine.worker import RunWorker
from tests.engine.test_run import Valley


def wait_for(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def make_worker(**kw: float) -> RunWorker:
    run = Run(Valley(), RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.01}),), device="cpu"))
    return RunWorker(run, **kw).start()


def test_worker_starts_paused_and_steps_once_on_request() -> None:
    w = make_worker()
    try:
        time.sleep(0.05)
        assert w.tick == 0 and w.drain() == []
        w.step_once()
        wait_for(lambda: w.tick == 1)
        time.sleep(0.05)
        assert w.tick == 1 and [r.step for r in w.drain()] == [0]
    finally:
        w.stop()


def test_pause_stops_stepping_within_one_step() -> None:
    w = make_worker(steps_per_second=2000)
    try:
        w.resume()
        wait_for(lambda: w.tick > 20)
        w.pause()
        wait_for(lambda: w.paused)
        frozen = w.tick
        time.sleep(0.1)
        assert w.tick == frozen
        ticks = [r.tick for r in w.drain()]
        assert ticks == list(range(frozen))  # every step was published, in order, none lost
    finally:
        w.stop()


def test_events_apply_between_steps_and_bad_ones_are_reported() -> None:
    w = make_worker()
    try:
        w.submit(SetHyperparameter(0, "lr", -1.0))
        w.submit(SetHyperparameter(0, "lr", 0.05))
        w.step_once()
        wait_for(lambda: w.tick == 1)
        (rec,) = w.drain()
        assert rec.hyperparameters["lr"] == 0.05
        x = rec.position[0]
        np.testing.assert_allclose(rec.update_norm[0], 0.05 * np.hypot(x[0] + x[0] ** 3, 10 * x[1]))
        (err,) = w.errors()
        assert "lr=-1.0 is outside its allowed range" in err
        assert w.alive
    finally:
        w.stop()


def test_stop_ends_the_thread_even_while_running() -> None:
    w = make_worker(steps_per_second=1000)
    w.resume()
    wait_for(lambda: w.tick > 5)
    w.stop()
    assert w.join(5.0) and not w.alive


def test_call_runs_between_steps_and_answers_while_paused() -> None:
    w = make_worker()
    try:
        w.step_once()
        future = w.call(lambda run: (run.tick, run.positions(0).copy()))
        tick, pos = future.result(timeout=5)
        assert tick == 1 and pos.shape == (1, 2)
        failing = w.call(lambda run: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failing.result(timeout=5)
        assert w.alive
    finally:
        w.stop()
