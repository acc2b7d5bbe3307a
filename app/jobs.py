"""Long actions (export, measured peaks, slices, memory accounting) off the server's event loop,
with progress and a way to cancel. Never imports Panel.

A :class:`Job` runs its work on its own :class:`engine.cancel.CancellableThread`; the work reports
``job.progress(fraction, message)`` and the engine's own checkpoints (a replay's steps, a probe's
products) or ``job.check()`` stop it once cancelled. The page reads the job's fields on its periodic
refresh (single values written by one thread), so no other session waits for it and the document
is only ever touched on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from engine.cancel import CancellableThread, Cancelled, checkpoint

log = logging.getLogger(__name__)


class Job:
    """One long action: ``work(job) -> result`` on a thread; ``job.progress(...)`` and
    ``job.check()`` inside it."""

    def __init__(self, title: str, work: Callable[[Job], Any]) -> None:
        self.title = title
        self.fraction = 0.0
        self.message = "starting…"
        self.result: Any = None
        self.error = ""
        self.done = False
        self.started = time.monotonic()
        self._work = work
        self._thread = CancellableThread(self._run, name=f"optiscope-job-{title}")

    def start(self) -> Job:
        self._thread.start()
        return self

    # -- called by the work ---------------------------------------------------------------------
    def progress(self, fraction: float, message: str = "") -> None:
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if message:
            self.message = message

    @staticmethod
    def check() -> None:
        """Raise :class:`engine.cancel.Cancelled` if the job was cancelled."""
        checkpoint()

    # -- called by the page -----------------------------------------------------------------------
    def cancel(self) -> None:
        self._thread.cancel()

    @property
    def cancelled(self) -> bool:
        return self._thread.cancelled

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    @property
    def status(self) -> str:
        """One line: what it is doing, how far, for how long so far."""
        if self.done:
            return self.error or f"{self.title}: done"
        return f"{self.title}: {self.message} ({self.fraction:.0%}, {time.monotonic() - self.started:.0f} s)"

    def _run(self) -> None:
        try:
            self.result = self._work(self)
            self.fraction = 1.0
        except Cancelled:
            self.error = f"{self.title} cancelled"
        except Exception as exc:  # shown in the page, never lost in a thread
            log.exception("%s failed", self.title)
            self.error = f"{self.title} failed: {exc}"
        finally:
            self.done = True
