"""A class on one server: the sessions of one ``panel serve`` process share its CPU fairly.

The server is one Python interpreter: every page's run worker, every page's pump (its Bokeh messages)
and every new page's document share one core's worth of GIL. Two server-wide budgets, computed here
and nowhere else, shrink each session's share as sessions join, so that all of them keep stepping
and answering instead of a few running at full speed while the rest stall:

- steps: :data:`BUDGET`, a :class:`engine.worker.StepBudget` of :data:`STEP_CORES` CPU seconds per
  second shared equally by the races running now in all the server's processes (each race steps at
  the lower of its asked rate and its share over the CPU cost of its steps);
- messages: the pumps of all sessions together run at most :data:`PUMPS_PER_SECOND` times per
  second; with more sessions, each page's pump skips calls (:func:`pump_every`).

A page being built comes first (:meth:`ServerBudget.page_build`): while one is, every race of the
process waits up to :data:`BUILD_WAIT_S` after each step, so the build has the interpreter to itself
(with 20 races at 0.8 core it got ~0.2 of it, and a page opened while a class raced took 5-6 s).

A page's rate meter shows the rate really taken (it measures the counter), so a shrunk share is
visible. When a session ends, its worker is stopped (:meth:`app.explorer.Explorer.close`) and,
shortly after the last of a burst of closes, the process collects its cycles and gives freed
memory back to the system (:func:`tidy`), so RSS and threads return to idle.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tornado.ioloop import IOLoop

from app.explorer import PUMP_MS
from app.sockets import publish_running, running_elsewhere
from engine.worker import THREAD_PREFIX, StepBudget

log = logging.getLogger(__name__)

STEP_CORES = float(os.environ.get("OPTISCOPE_STEP_CORES", "0.8"))
"""CPU seconds per second all races together may spend stepping (the rest: pumps, new pages), over
all the server's processes (:class:`ServerBudget`: each process's share follows its races).
Measured (benchmarks/load.py, 20 sessions, 2 cores, one process): 0.6 core gave 8.5-9.8 steps/s
each, 0.8 gave 9.7-11."""
PUMPS_PER_SECOND = float(os.environ.get("OPTISCOPE_PUMPS_PER_SECOND", "60"))
"""Pumps (Bokeh messages) per second over all sessions: 2 pages at 30 Hz, 20 pages at 3 Hz."""
PUMP_HZ = 1000.0 / PUMP_MS
"""The pump's own cadence (:data:`app.explorer.PUMP_MS`)."""
TIDY_AFTER_S = 2.0
"""Seconds after a session ends before the process collects and trims (one tidy per burst)."""
BUILD_WAIT_S = 1.0
"""Longest a race waits (after a step) for the pages being built: a race keeps stepping, at least
once a second, and a stopped worker ends within a second, whatever the builds."""


class ServerBudget(StepBudget):
    """:class:`engine.worker.StepBudget` over all the server's processes, that gives way to page
    builds. With ``--num-procs``, ``cores`` is shared by the races of every process
    (:func:`app.sockets.running_elsewhere`): each process had taken half of it, so a class behind
    one address (all on one process) stepped at half the rate while the other process idled. A run
    worker asking for its rate (after each step) while a page is being built waits until no page
    is, or :data:`BUILD_WAIT_S`. Only run workers' threads wait (a page reading a rate never does)."""

    def __init__(self, cores: float, floor: float = 1.0) -> None:
        super().__init__(cores, floor)
        self._builds = 0
        self._no_build = threading.Event()
        self._no_build.set()
        self._build_lock = threading.Lock()

    @contextmanager
    def page_build(self) -> Iterator[None]:
        """The races of this process wait while the block runs (a page is being built)."""
        with self._build_lock:
            self._builds += 1
            self._no_build.clear()
        try:
            yield
        finally:
            with self._build_lock:
                self._builds -= 1
                if not self._builds:
                    self._no_build.set()

    @property
    def building(self) -> bool:
        return not self._no_build.is_set()

    def running(self, worker: object, on: bool) -> None:
        with self._build_lock:  # the count published is the count after this change, in order
            super().running(worker, on)
            publish_running(self.n_running)

    def share(self) -> float:
        return self.cores / max(1, self.n_running + running_elsewhere())

    def cap(self, step_seconds: float) -> float:
        if threading.current_thread().name.startswith(THREAD_PREFIX):
            self._no_build.wait(BUILD_WAIT_S)
        return super().cap(step_seconds)


BUDGET = ServerBudget(STEP_CORES)
_live: set[int] = set()
_lock = threading.Lock()
_tidy_call: Any = None


def sessions() -> int:
    """Sessions of this process now."""
    return len(_live)


def pump_every(n: int | None = None) -> int:
    """Each page runs one pump call in this many, so that ``n`` pages pump at most
    :data:`PUMPS_PER_SECOND` times per second together."""
    n = sessions() if n is None else n
    return max(1, math.ceil(n * PUMP_HZ / PUMPS_PER_SECOND))


def throttled(explorer: Any) -> Callable[[], Any]:
    """The explorer's pump, run on one call in :func:`pump_every` (the others return 0 at once);
    once the page that was there has gone (its websocket closed), it closes the explorer at once:
    its worker stops now, and the server ends the session at its next check for unused sessions
    (a second) rather than ``--unused-session-lifetime`` later (20 s), so a class that has left gives
    its memory back within seconds. A page still waiting to connect keeps its session."""
    pump = explorer.pump
    calls = 0
    seen = False

    def call() -> Any:
        nonlocal calls, seen
        if explorer._connected():
            seen = True
        elif seen:
            explorer.close()
            session = getattr(getattr(explorer._doc, "session_context", None), "_session", None)
            if session is not None:
                session.request_expiration()  # Bokeh ends it once it has no connection
            return 0
        calls += 1
        if calls % pump_every() and calls > 1:
            return 0
        return pump()

    return call


def join(explorer: Any) -> None:
    """Count a served page's explorer among the sessions, throttle its pump, and let it go (and
    tidy up) when its session ends. Call before the page has loaded (the pump starts then)."""
    import panel as pn

    key = id(explorer)
    with _lock:
        _live.add(key)
    explorer.pump = throttled(explorer)  # the pump's periodic callback is made on load

    def leave(_context: Any) -> None:
        with _lock:
            _live.discard(key)
        schedule_tidy()  # the explorer's own hook (registered first) has stopped its worker

    pn.state.on_session_destroyed(leave)


def schedule_tidy(delay: float = TIDY_AFTER_S) -> None:
    """:func:`tidy` on the server's loop, ``delay`` seconds after the last call (a burst of closes:
    one tidy). Call on the loop's thread (a session-destroyed hook is)."""
    global _tidy_call
    loop = IOLoop.current()
    if _tidy_call is not None:
        loop.remove_timeout(_tidy_call)
    _tidy_call = loop.call_later(delay, tidy)


def tidy() -> None:
    """Collect reference cycles (a closed page's models, watchers and run) and return freed heap
    to the system (glibc keeps it otherwise, and RSS stays high after a class has left)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, just not returned
        pass
