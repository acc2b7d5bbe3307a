"""Shared helpers of the app tests: build explorers and sessions, wait for the worker thread, and
find a page's widgets by their names (never by position)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import panel as pn
import pytest

from app.explorer import Explorer
from app.model import RaceSession


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def pump_until(ex: Explorer, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Pump the explorer (as its periodic callback would) until ``cond()`` holds."""
    def check() -> bool:
        ex.pump()
        return cond()
    wait_for(check, timeout)


def steps(ex: Explorer, n: int) -> None:
    """``n`` single steps, each awaited (a paused explorer, as a presenter drives it)."""
    if ex.session.running:
        ex.session.pause()
    for _ in range(n):
        # the worker answers a call after every command queued before it: a step that was under way
        # when Pause was asked has reached the tick by then (read before it, the tick was one short)
        tick = ex.worker.call(lambda run: run.tick).result(timeout=10)
        ex.session.step()
        pump_until(ex, lambda tick=tick: ex.worker.tick == tick + 1)
    ex.pump()


def widget(root: object, name: str, kind: type = pn.widgets.Widget) -> pn.widgets.Widget:
    """The one widget called ``name`` under ``root`` (a label or a button's text)."""
    found = [w for w in pn.panel(root).select(kind)
             if name in (getattr(w, "name", None), getattr(w, "label", None))]
    assert len(found) == 1, f"{len(found)} widgets called {name!r}"
    return found[0]


@pytest.fixture
def explorer() -> Iterator[Explorer]:
    ex = Explorer(landscape="quadratic", optimizers=["sgd", "adam"], speed=500)
    yield ex
    ex.close()


@pytest.fixture
def session() -> Iterator[RaceSession]:
    s = RaceSession(problem="quadratic", optimizers=["sgd", "adam"], speed=500)
    yield s
    s.close()
