"""The served page: its composition (``app/main.py`` builds one per session) and a server process's
warm-up (``app/server_lifecycle.py``: one page built and dropped when the process starts).

Warm-up: the first page a process builds imports most of the app (torch's and HoloViews' plotting
code, every view) and fills its class-level caches: ~400 MB and several seconds of CPU that, without
it, the first student of each server process pays, and that "idle" memory measured before any page
omits (so a class that has come and gone seemed to leave it behind). Its race also takes a few steps
and is drawn once (:data:`WARM_STEPS`), so that what a process's first steps, probes and draws make
once (operator objects, lazily made helpers) is made before any student's session and not among a
session's objects, where it would outlive the session and keep 1 MiB arenas of Python's allocator
from being returned. Measured: RSS after a class of 20 left +15-19 % over idle against +20-23 %
before (single runs, within their noise); tracemalloc found ~250 blocks made during sessions still
alive after them (in torch operator calls, HVP operators, record arrays): not all are one-time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, ClassVar

import panel as pn

from app.explorer import Explorer

log = logging.getLogger(__name__)

WARM_STEPS = 20
"""Steps the warm-up race takes (the default race probes its curvature every 5: four probes)."""


class Page(pn.template.VanillaTemplate):
    """Panel's plain template and design (``Native``), without the Lato font it would fetch from Google
    Fonts: a page loads nothing from elsewhere (a classroom may be offline; Fast and Material fetch
    fonts too). Not Bootstrap: with its design the page's style recalculations took 22-24% of its main
    thread while a race streams (5% with this one), and an 8-lane race reached 19.2 screen updates a
    second against 21.2 (benchmarks/stream.py --served-app, one minute each)."""

    _resources: ClassVar[dict[str, dict]] = {"css": {}, "js": {}, "js_modules": {}, "tarball": {}}


def template(explorer: Explorer) -> Page:
    """The page around an explorer."""
    return Page(
        title="Optiscope — optimizers racing, live",
        sidebar=[explorer.controls],
        main=[explorer.main],
        sidebar_width=330,
        header_background="#1f4e79",
        header_color="white",
    )


def frozen(doc: Any) -> contextlib.AbstractContextManager:
    """Bokeh's walk over the document's ~800 models done once at the end instead of once per model
    added: a page is built in ~2/3 of the CPU time."""
    return doc.models.freeze() if doc is not None else contextlib.nullcontext()


def warm() -> float:
    """Build one page into a throwaway document, check it (Bokeh's integrity checks, which log what
    they find), render its Bokeh models, and drop it; returns the seconds it took. The race never
    starts (no worker steps, no session is counted)."""
    from bokeh.document import Document

    from app import load

    t0 = time.perf_counter()
    doc = Document()
    with frozen(doc):
        explorer = Explorer()
        try:
            template(explorer).server_doc(doc)
        except BaseException:
            explorer.close()
            raise
    try:
        doc.validate()  # once per process, on this page; not on the pages after it (app/server_lifecycle.py)
        doc.to_json()  # what a page's first pull serializes
        _race(explorer, WARM_STEPS)
    finally:
        explorer.close()
        doc.clear()
    load.tidy()
    took = time.perf_counter() - t0
    log.info("optiscope: server process warmed up (one page built and dropped) in %.1f s", took)
    return took


def _race(explorer: Explorer, steps: int, timeout: float = 20.0) -> None:
    """Let ``explorer``'s race take ``steps`` steps on its worker, then draw them (one pump)."""
    session = explorer.session
    session.play()
    deadline = time.monotonic() + timeout
    while session.worker.tick < steps and time.monotonic() < deadline:
        time.sleep(0.02)
    session.pause()
    explorer.pump()
