"""Cooperative cancellation: long work stops between its pieces when whoever asked for it leaves.

A :class:`CancelToken` is a flag one thread sets and another reads. Work that may run long (a
step's lanes, every Hessian-vector product of a probe, an export's replayed steps) calls
:func:`checkpoint` between its pieces; it costs one context-variable read (~50 ns) and raises
:class:`Cancelled` once the token bound to the running context is cancelled. Code that knows
nothing about cancellation stays as it is: with no token bound, :func:`checkpoint` does nothing.

:class:`Cancelled` derives from ``BaseException`` (like ``asyncio.CancelledError``), so the
``except Exception`` that keeps a worker alive after a failed step, or that falls back from a
batched to a looped computation, does not swallow it. Work interrupted by it is abandoned: the
state it was changing (a half-taken step) is not meant to be used again.

Threads that compute (a run's worker, an export) are :class:`CancellableThread`\\ s: ``cancel()``
signals and returns at once, ``join(timeout)`` waits if a caller wants to, and every one still
alive when the interpreter exits is cancelled and joined first. A daemon thread left inside
torch's C++ code while the interpreter finalizes aborts the process ("terminate called without an
active exception"); joining it before finalization is what prevents that.

Usage::

    token = CancelToken()
    with cancellable(token):      # in the thread doing the work
        for piece in pieces:
            checkpoint()          # raises Cancelled once token.cancel() was called
            do(piece)
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["CancelToken", "CancellableThread", "Cancelled", "cancellable", "checkpoint", "current_token"]

EXIT_JOIN_SECONDS = 5.0
"""How long interpreter exit waits, in all, for cancelled threads to reach a checkpoint."""


class Cancelled(BaseException):
    """The work was cancelled by its owner (a closed page, a stopped worker): not a failure."""


class CancelToken:
    """A one-way flag: once :meth:`cancel` is called, every :func:`checkpoint` under it raises."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def wait(self, timeout: float | None = None) -> bool:
        """Sleep until cancelled or ``timeout`` seconds pass; True if cancelled (an interruptible
        ``time.sleep`` for pacing loops)."""
        return self._event.wait(timeout)


_current: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("optiscope_cancel",
                                                                              default=None)


def current_token() -> CancelToken | None:
    """The token bound to the running context (``None`` outside any :func:`cancellable` block)."""
    return _current.get()


def checkpoint() -> None:
    """Raise :class:`Cancelled` if the work running here was cancelled; otherwise return at once."""
    token = _current.get()
    if token is not None and token._event.is_set():
        raise Cancelled()


@contextlib.contextmanager
def cancellable(token: CancelToken) -> Iterator[CancelToken]:
    """Bind ``token`` to the running context for the block: :func:`checkpoint` calls inside it
    (on this thread, in any function) answer to this token."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


_live: weakref.WeakSet[CancellableThread] = weakref.WeakSet()
_live_lock = threading.Lock()


class CancellableThread(threading.Thread):
    """A daemon thread running ``target(*args)`` under its own :class:`CancelToken`.

    :meth:`cancel` never blocks; :class:`Cancelled` raised inside ``target`` ends the thread
    quietly. At interpreter exit every live one is cancelled and joined (see the module docstring).
    """

    def __init__(self, target: Callable[..., Any], *args: Any, name: str | None = None,
                 on_cancel: Callable[[], None] | None = None) -> None:
        """``on_cancel`` runs on the cancelling thread (e.g. to wake a worker sleeping on an event)."""
        super().__init__(name=name, daemon=True)
        self._work = target
        self._work_args = args
        self._on_cancel = on_cancel
        self.token = CancelToken()

    def run(self) -> None:
        with cancellable(self.token):
            try:
                self._work(*self._work_args)
            except Cancelled:
                pass
            finally:
                with _live_lock:
                    _live.discard(self)

    def start(self) -> None:
        with _live_lock:
            _live.add(self)
        super().start()

    def cancel(self) -> None:
        """Ask the work to stop at its next checkpoint; returns immediately."""
        self.token.cancel()
        if self._on_cancel is not None:
            self._on_cancel()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled


def live_threads() -> list[CancellableThread]:
    """The cancellable threads still running (a test's view, and what exit joins)."""
    with _live_lock:
        return [t for t in _live if t.is_alive()]


@atexit.register
def _cancel_all_at_exit() -> None:
    threads = live_threads()
    for t in threads:
        t.cancel()
    deadline = time.monotonic() + EXIT_JOIN_SECONDS
    for t in threads:
        if t is not threading.current_thread():
            t.join(max(0.0, deadline - time.monotonic()))
