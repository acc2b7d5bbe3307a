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


class RunWorker:
    """One thread stepping one run at ``steps_per_second`` (paused until :meth:`resume`)."""

    def __init__(self, run: Run, steps_per_second: float = 30.0, *, max_records: int = 200_000) -> None:
        self.run = run  # touch only from the worker thread while it is alive
        self.steps_per_second = steps_per_second
        self._commands: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._records: deque[Record] = deque(maxlen=max_records)
        self._errors: deque[str] = deque(maxlen=50)
        self._wake = threading.Event()
        self._thread = CancellableThread(self._loop, name=f"optiscope-run-{next(_counter)}",
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
        try:
            self._records.extend(self.run.step())
        except Exception as exc:  # a broken step pauses the run and reports; it never kills the thread
            log.exception("run step failed")
            self.run.apply(Pause())
            self._errors.append(f"step failed and the run was paused: {exc}")
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
            self._cancel_calls()  # commands that came after stop()

    def _pace(self) -> None:
        deadline = time.perf_counter()
        while not self._thread.cancelled:
            self._apply_commands()
            if self.run.paused:
                self._wake.wait(0.5)
                self._wake.clear()
                deadline = time.perf_counter()
                continue
            self._step()
            interval = 1.0 / max(self.steps_per_second, 1e-3)
            deadline = max(deadline + interval, time.perf_counter() - 0.25)  # don't bank a backlog
            remaining = deadline - time.perf_counter()
            if remaining > 0:
                self._wake.wait(remaining)
                self._wake.clear()
