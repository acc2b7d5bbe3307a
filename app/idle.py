"""Work a served page leaves for when its server process has nothing better to do.

Twenty pages opened at once are built one after another by one interpreter, and each waits for the
builds before it: a page's first build should hold only what its first screen shows. What the first
screen does not show (the spare lane cards a lane added later takes, open lane cards below the fold,
closed settings cards, closed streaming tabs) is queued here with :func:`later` and built after the
page has loaded, one piece a tick, and only while no page of this process is being built or waiting
for its document to be pulled (:func:`arrive`, :func:`loaded`): a class's pages all load before any
of them gets its extras.

A piece must also be buildable on demand: a click that needs it before its turn builds it then (the
callers' own business: each piece checks whether it is still to be done when its turn comes).

Off a served page (a notebook, a test, the warm-up page) :func:`later` runs the work at once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

GAP_S = 0.02
"""Seconds between two pieces of idle work (a page's GET or a click gets in between)."""
BUSY_S = 0.25
"""Seconds before looking again while pages are being built or pulled."""
QUIET_S = 1.0
"""Seconds a piece waits after it was queued: what a click queues (a closed card's widgets for a lane
it added) runs after the click's effect and the pumps that show it, not between them."""
WAIT_MAX_S = 15.0
"""A page waiting longer than this for its browser (never pulled) stops holding the others' extras."""

_queue: deque[tuple[Any, Callable[[], None], float]] = deque()  # (doc, work, not before)
_waiting: dict[int, float] = {}  # id(page) -> when its build began (time.monotonic)
_scheduled = False


def served(doc: Any) -> bool:
    """Whether ``doc`` is a served page's document (a server session), so work can wait."""
    return doc is not None and getattr(doc, "session_context", None) is not None


def connected(doc: Any) -> bool:
    """Whether a served page is still there: a page closed before its idle work came is left alone
    (its messages would be written to a closed socket; its session ends soon)."""
    session = getattr(getattr(doc, "session_context", None), "_session", None)
    return served(doc) and getattr(session, "connection_count", 1) > 0


def arrive(page: object) -> bool:
    """A served page's first build starts (call at its start): idle work waits until it has loaded
    (:func:`loaded`). Whether it is one (elsewhere nothing is recorded)."""
    import panel as pn

    if not served(pn.state.curdoc) or pn.state.loaded:
        return False
    _waiting[id(page)] = time.monotonic()
    return True


def loaded(page: object) -> None:
    """The page has loaded (its document was pulled) or closed."""
    if _waiting.pop(id(page), None) is not None and _queue:
        _kick(GAP_S)


def busy() -> bool:
    """Whether a page of this process is being built or waits for its document to be pulled."""
    now = time.monotonic()
    return any(now - t < WAIT_MAX_S for t in _waiting.values())


def later(doc: Any, work: Callable[[], None]) -> None:
    """``work`` on ``doc``'s session (its lock held, one message), when the process is idle; at once
    off a served page. ``work`` checks for itself whether it is still to be done."""
    if not served(doc):
        work()
        return
    _queue.append((doc, work, time.monotonic() + QUIET_S))
    _kick(QUIET_S)


def pending() -> int:
    """Pieces of idle work waiting."""
    return len(_queue)


def _kick(delay: float) -> None:
    global _scheduled
    if _scheduled:
        return
    from tornado.ioloop import IOLoop

    _scheduled = True
    IOLoop.current().call_later(delay, _run)


def _run() -> None:
    global _scheduled
    _scheduled = False
    if not _queue:
        return
    if busy():
        _kick(BUSY_S)
        return
    if (wait := _queue[0][2] - time.monotonic()) > 0:
        _kick(wait)
        return
    doc, work, _ = _queue.popleft()
    if not connected(doc):  # its page closed
        _kick(0)
        return

    def tick() -> None:
        import panel as pn

        if not connected(doc):
            _kick(0)
            return
        try:
            with pn.io.hold(doc, freeze=True):
                work()
        except Exception:  # one page's extras never stop the others'
            log.exception("optiscope: idle work failed")
        finally:
            _kick(GAP_S)

    try:
        doc.add_next_tick_callback(tick)
    except Exception:  # the document's session has gone
        _kick(0)


def drain() -> int:
    """Run every piece waiting now, each on its page's document (tests; a page's work checks itself
    whether it is still to be done). Returns how many ran."""
    import panel as pn
    from panel.io.state import set_curdoc

    done = 0
    while _queue:
        doc, work, _ = _queue.popleft()
        with set_curdoc(doc), pn.io.hold(doc, freeze=True):
            work()
        done += 1
    _waiting.clear()
    return done
