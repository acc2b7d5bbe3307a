"""Drive a :class:`~engine.run.Run` on a background thread, so no UI thread ever computes.

Other threads talk to the worker only through its thread-safe methods: :meth:`submit` queues an
event (applied between steps, in order), :meth:`step_once` asks for one step, :meth:`drain`
takes the records produced so far, :meth:`stop` ends the thread. Pause takes effect before the
next step: the worker re-reads its queue between every two steps and sleeps on an event that a
new command wakes.
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
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"optiscope-run-{next(_counter)}",
                                        daemon=True)
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

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        while True:  # nobody may wait forever on a call the thread will never answer
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                break
            if isinstance(cmd, _Call):
                cmd.future.cancel()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

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
                try:
                    cmd.future.set_result(cmd.fn(self.run))
                except Exception as exc:
                    cmd.future.set_exception(exc)
                continue
            try:
                self.run.apply(cmd)
            except Exception as exc:  # invalid input: say so, keep everything else going
                self._errors.append(str(exc))
            self.paused = self.run.paused

    def _loop(self) -> None:
        deadline = time.perf_counter()
        while not self._stopping.is_set():
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
