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

import numpy as np
import pytest
import torch

from engine import instruments
from engine.events import SetHyperparameter
from engine.instruments import ProbeConfig
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
from engine.worker import RunWorker
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
