"""Drive a :class:`~engine.run.Run` on a background thread, so no UI thread ever computes.

Other threads talk to the worker only through its thread-safe methods: :meth:`submit` queues an
event (applied between steps, in order), :meth:`step_once` asks for one step, :meth:`drain`
takes the records produced so far, :meth:`stop` ends the thread. Pause takes effect before the
next step: the worker re-reads its queue between every two steps and sleeps on an event that a
new command wakes.

Stopping never blocks the caller: :meth:`stop` cancels the worker's token and returns. The thread
computes under that token (:mod:`engine.cancel`), so a step ends at its next checkpoint -- between
lanes, between the Hessian-vector products of a probe -- and the thread is gone within a fraction
of a second even mid-way through a long probe; :meth:`join` waits for it where a caller must
know (tests). A stopped step is abandoned, not finished: its run is not used again.

Many workers in one process (a server with a class on it) share the CPU through one
:class:`StepBudget`: each running worker gets an equal share of a stated fraction of a core and
steps at ``min(asked, share / cost of its steps)``, so twenty races degrade together instead of
some stalling, and a costly race (a network) gets fewer steps of the same CPU time as a cheap one.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from engine.cancel import CancellableThread, Cancelled
from engine.events import Event, Pause, Resume
from engine.records import Record
from engine.run import Run

log = logging.getLogger(__name__)

_STEP = object()  # command: take exactly one step even while paused


class _Call:
    """Command: run ``fn(run)`` on the worker thread between two steps, answer through a future."""

    def __init__(self, fn: Callable[[Run], Any]) -> None:
        self.fn = fn
        self.future: Future[Any] = Future()
_counter = itertools.count()


class StepBudget:
    """A process-wide budget of ``cores`` (CPU seconds per second) for stepping, shared equally by
    the workers running now: a worker whose steps cost ``c`` CPU seconds each may take
    ``cores / n_running / c`` steps per second (never fewer than ``floor``). Thread-safe."""

    def __init__(self, cores: float, floor: float = 1.0) -> None:
        if cores <= 0:
            raise ValueError(f"a step budget needs a positive number of cores, not {cores}")
        self.cores = cores
        self.floor = floor
        self._running: set[int] = set()
        self._lock = threading.Lock()

    def running(self, worker: object, on: bool) -> None:
        with self._lock:
            (self._running.add if on else self._running.discard)(id(worker))

    @property
    def n_running(self) -> int:
        return len(self._running)

    def share(self) -> float:
        """CPU seconds per second each running worker may use."""
        return self.cores / max(1, len(self._running))

    def cap(self, step_seconds: float) -> float:
        """Steps per second for a worker whose steps take ``step_seconds`` of CPU each."""
        return max(self.floor, self.share() / max(step_seconds, 1e-6))


THREAD_PREFIX = "optiscope-run-"
"""Every run worker's thread name starts so (a server tells its race threads from its own by it)."""


class RunWorker:
    """One thread stepping one run at ``steps_per_second`` (paused until :meth:`resume`), or at
    its fair share of ``budget`` where that is lower (:attr:`rate`)."""

    budget: StepBudget | None = None
    """The budget workers share when none is given (None: each steps at its asked rate). A server
    sets it once (``app/main.py``); notebooks and tests leave it unset."""

    def __init__(self, run: Run, steps_per_second: float = 30.0, *, max_records: int = 200_000,
                 budget: StepBudget | None = None) -> None:
        self.run = run  # touch only from the worker thread while it is alive
        self.steps_per_second = steps_per_second
        if budget is not None:
            self.budget = budget
        self.step_seconds = 0.0  # CPU seconds per step (a moving average), for the budget
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._records: deque[Record] = deque(maxlen=max_records)
        self._errors: deque[str] = deque(maxlen=50)
        self._wake = threading.Event()
        self._thread = CancellableThread(self._loop, name=f"{THREAD_PREFIX}{next(_counter)}",
                                         on_cancel=self._wake.set)
        self.tick = run.tick  # last tick published (read by other threads)
        self.paused = True
        run.paused = True

    # -- thread-safe API -------------------------------------------------------------------------
    def start(self) -> RunWorker:
        self._thread.start()
        return self

    def submit(self, event: Event) -> None:
        self._commands.put(event)
        self._wake.set()

    def resume(self) -> None:
        self.submit(Resume())

    def pause(self) -> None:
        self.submit(Pause())

    def call(self, fn: Callable[[Run], Any]) -> Future[Any]:
        """Run ``fn(run)`` between two steps (so it sees a consistent state, e.g. a trajectory to
        slice) and return a future with its result; answered even while paused."""
        command = _Call(fn)
        self._commands.put(command)
        self._wake.set()
        if self.stopped:  # nobody will answer it: cancelled now rather than pending forever
            self._cancel_calls()
        return command.future

    def step_once(self) -> None:
        self._commands.put(_STEP)
        self._wake.set()

    def drain(self) -> list[Record]:
        out = []
        while self._records:
            out.append(self._records.popleft())
        return out

    def errors(self) -> list[str]:
        out = []
        while self._errors:
            out.append(self._errors.popleft())
        return out

    @property
    def rate(self) -> float:
        """Steps per second the worker aims at now: the asked rate, or its share of the budget."""
        asked = max(self.steps_per_second, 1e-3)
        if self.budget is None or not self.step_seconds:
            return asked
        return min(asked, self.budget.cap(self.step_seconds))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        """:meth:`stop` was called (the thread may still be on its way to a checkpoint)."""
        return self._thread.cancelled

    def stop(self) -> None:
        """Cancel the run's work and return at once: the thread ends at its next checkpoint."""
        self._thread.cancel()  # also wakes a sleeping loop
        self._cancel_calls()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end; True if it has."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _cancel_calls(self) -> None:
        while True:  # nobody may wait forever on a call the thread will never answer
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(cmd, _Call):
                cmd.future.cancel()

    # -- worker thread ---------------------------------------------------------------------------
    def _step(self) -> None:
        cpu = time.thread_time()
        try:
            self._records.extend(self.run.step())
        except Exception as exc:  # a broken step pauses the run and reports; it never kills the thread
            log.exception("run step failed")
            self.run.apply(Pause())
            self._errors.append(f"step failed and the run was paused: {exc}")
        cost = time.thread_time() - cpu  # this thread's CPU only: waiting for the GIL is not a cost
        self.step_seconds = cost if not self.step_seconds else 0.9 * self.step_seconds + 0.1 * cost
        self.tick = self.run.tick

    def _apply_commands(self) -> int:
        """Apply queued commands in order; return how many single steps were requested."""
        steps = 0
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return steps
            if cmd is _STEP:
                self._step()
                steps += 1
                continue
            if isinstance(cmd, _Call):
                if not cmd.future.set_running_or_notify_cancel():
                    continue
                try:
                    cmd.future.set_result(cmd.fn(self.run))
                except Exception as exc:
                    cmd.future.set_exception(exc)
                except Cancelled:
                    cmd.future.set_exception(RuntimeError("the run was stopped"))
                    raise
                continue
            try:
                self.run.apply(cmd)
            except Exception as exc:  # invalid input: say so, keep everything else going
                self._errors.append(str(exc))
            self.paused = self.run.paused

    def _loop(self) -> None:
        try:
            self._pace()
        except Cancelled:
            pass
        finally:
            if self.budget is not None:
                self.budget.running(self, False)
            self._cancel_calls()  # commands that came after stop()

    def _pace(self) -> None:
        deadline = time.perf_counter()
        while not self._thread.cancelled:
            self._apply_commands()
            if self.budget is not None:
                self.budget.running(self, not self.run.paused)
            if self.run.paused:
                self._wake.wait(0.5)
                self._wake.clear()
                deadline = time.perf_counter()
                continue
            self._step()
            interval = 1.0 / self.rate
            deadline = max(deadline + interval, time.perf_counter() - 0.25)  # don't bank a backlog
            remaining = deadline - time.perf_counter()
            if remaining > 0:
                self._wake.wait(remaining)
                self._wake.clear()
