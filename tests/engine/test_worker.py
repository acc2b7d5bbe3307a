"""The background worker: steps off the calling thread, pauses before the next step, applies
events in order between steps, reports bad input without dying, and stops on request: at once,
mid-way through a long probe, and when the interpreter exits."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from engine import instruments
from engine.events import SetHyperparameter
from engine.instruments import ProbeConfig
from engine.run import LaneConfig, Run, RunConfig
from engine.worker import RunWorker, StepBudget
from tests.engine.test_run import Valley


def wait_for(cond, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def make_worker(**kw: Any) -> RunWorker:
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


# -- stopping a busy worker (engine/cancel.py) ---------------------------------------------------


class CountingValley(Valley):
    """Valley that counts its loss evaluations (a probe's operator evaluates it once to set up)."""

    def __init__(self) -> None:
        self.calls = 0

    def loss(self, x: torch.Tensor, batch: object = None) -> torch.Tensor:
        self.calls += 1
        return super().loss(x, batch)


def long_probe_worker(monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[RunWorker, CountingValley]:
    """A worker whose first step probes with a million Hutchinson products (minutes of work); a 2-D
    problem would take the dense Hessian instead, so the dense path is switched off (for the test, or
    for good in a child process)."""
    if monkeypatch is None:
        instruments.EXACT_MAX_DIM = 0
    else:
        monkeypatch.setattr(instruments, "EXACT_MAX_DIM", 0)
    problem = CountingValley()
    probes = ProbeConfig(every=1, trace=True, trace_probes=10**6)
    run = Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.01}),), device="cpu", probes=probes))
    return RunWorker(run).start(), problem


def test_stop_ends_a_worker_mid_way_through_a_long_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    w, problem = long_probe_worker(monkeypatch)
    w.step_once()
    wait_for(lambda: problem.calls >= 2, timeout=30)  # the step's pass, then the probe's operator
    w.stop()
    assert w.join(5.0), "the thread kept computing after stop()"  # the probe had ~1e6 products to go
    assert not w.alive and w.tick == 0  # the step was abandoned between two products, never finished
    assert w.call(lambda run: run.tick).cancelled()  # a stopped worker answers no more calls


def test_stop_never_waits_for_the_work() -> None:
    w = make_worker()
    entered, release = threading.Event(), threading.Event()

    def busy(run: Run) -> None:
        entered.set()
        release.wait(60)

    w.call(busy)
    wait_for(entered.is_set)
    watchdog = threading.Timer(3.0, release.set)  # were stop() to wait for the call, this frees it
    watchdog.start()
    try:
        w.stop()
        assert not release.is_set() and w.alive  # stop() returned while the worker was still busy
    finally:
        release.set()
        watchdog.cancel()
    assert w.join(5.0)


EXIT_WHILE_BUSY = """
import sys, time
from engine.worker import RunWorker, StepBudget
from tests.engine.test_worker import long_probe_worker
w, problem = long_probe_worker()
w.step_once()
while problem.calls < 2:
    time.sleep(0.01)
print("exiting while the worker computes", flush=True)
"""


def test_the_interpreter_exits_cleanly_while_a_worker_computes() -> None:
    """Before: `terminate called without an active exception` and exit status 134 (abort)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", EXIT_WHILE_BUSY], capture_output=True, text=True, env=env,
                         cwd=root, timeout=120)
    assert "exiting while the worker computes" in out.stdout
    assert out.returncode == 0, out.stderr[-2000:]
    assert "terminate called" not in out.stderr


def test_a_step_budget_shares_its_cores_equally_among_running_workers() -> None:
    budget = StepBudget(0.6, floor=2.0)
    a, b, c = object(), object(), object()
    assert budget.share() == 0.6 and budget.cap(0.002) == pytest.approx(300.0)  # none running: all of it
    budget.running(a, True)
    budget.running(b, True)
    budget.running(b, True)  # said twice: still one worker
    budget.running(c, True)
    assert budget.n_running == 3 and budget.share() == pytest.approx(0.2)
    assert budget.cap(0.002) == pytest.approx(100.0)  # 0.2 CPU s/s at 2 ms a step
    assert budget.cap(1.0) == 2.0  # never below the floor
    budget.running(a, False)
    assert budget.cap(0.002) == pytest.approx(150.0)
    with pytest.raises(ValueError, match="positive number of cores"):
        StepBudget(0.0)


def test_a_worker_steps_at_the_lower_of_its_asked_rate_and_its_share() -> None:
    budget = StepBudget(0.05)
    w = make_worker(steps_per_second=30.0, budget=budget)  # paused: it counts itself once it runs
    others = [object(), object()]
    try:
        assert w.rate == 30.0  # no step measured yet: the asked rate
        w.step_seconds = 0.01  # 10 ms of CPU a step: alone, 0.05 / 0.01 = 5 steps/s
        assert w.rate == pytest.approx(5.0)
        budget.running(others[0], True)
        budget.running(others[1], True)
        assert w.rate == pytest.approx(2.5)  # its share of a budget two others use
        w.step_seconds = 1e-4
        assert w.rate == 30.0  # a cheap step: the asked rate binds
        w.resume()
        wait_for(lambda: budget.n_running == 3)
        w.pause()
        wait_for(lambda: budget.n_running == 2)
        w.resume()
        wait_for(lambda: budget.n_running == 3)
    finally:
        w.stop()
    assert w.join(5)
    assert budget.n_running == 2  # a stopped worker leaves the budget


def test_a_worker_measures_the_cpu_cost_of_its_steps() -> None:
    w = make_worker()
    try:
        for _ in range(5):
            w.step_once()
        wait_for(lambda: w.tick == 5)
        assert 0 < w.step_seconds < 1.0
        assert w.rate == 30.0 and w.budget is None  # no budget unless one is given (or set by a server)
    finally:
        w.stop()
