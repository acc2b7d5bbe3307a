"""A class on one server (app/load.py, app/page.py): a page being built comes first, and a server
process warms up without leaving a race or a session behind. Behaviour only, never a speed
(benchmarks/load.py measures the figures)."""

from __future__ import annotations

import threading
import time

import pytest

from app import load
from app.explorer import Explorer
from app.page import warm
from engine.worker import THREAD_PREFIX, RunWorker
from tests.app.conftest import wait_for


def _cap_in_thread(budget: load.ServerBudget, name: str) -> threading.Event:
    """Ask ``budget`` for a rate from a thread called ``name``; the event is set once it has one."""
    done = threading.Event()
    threading.Thread(target=lambda: (budget.cap(0.01), done.set()), name=name, daemon=True).start()
    return done


def test_a_run_worker_waits_while_a_page_is_built_and_goes_on_when_it_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "BUILD_WAIT_S", 30.0)
    budget = load.ServerBudget(0.8)
    with budget.page_build():
        with budget.page_build():  # two pages at once: the races wait for both
            waiting = _cap_in_thread(budget, f"{THREAD_PREFIX}7")
            assert budget.cap(0.01) == pytest.approx(80.0)  # the page's own thread never waits
            assert not waiting.wait(0.2)
        assert budget.building and not waiting.wait(0.2)
    assert not budget.building
    assert waiting.wait(10), "the run worker still waits after the builds ended"
    assert _cap_in_thread(budget, f"{THREAD_PREFIX}8").wait(10)  # no build: no wait


def test_a_run_worker_waits_for_a_build_at_most_build_wait_s(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "BUILD_WAIT_S", 0.05)
    budget = load.ServerBudget(0.8)
    with budget.page_build():  # a build that never ends (a page that never loads)
        assert _cap_in_thread(budget, f"{THREAD_PREFIX}9").wait(10)


def test_a_racing_explorer_steps_no_more_while_a_page_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load, "BUILD_WAIT_S", 30.0)
    budget = load.ServerBudget(4.0)
    monkeypatch.setattr(RunWorker, "budget", budget)
    ex = Explorer(landscape="quadratic", optimizers=["sgd"], speed=200, autostart=True)
    try:
        assert ex.worker._thread.name.startswith(THREAD_PREFIX)  # the name the gate knows
        wait_for(lambda: ex.worker.tick > 2)
        with budget.page_build():
            time.sleep(0.1)  # a step under way when the build began ends, then the worker waits
            held = ex.worker.tick
            time.sleep(0.4)
            assert ex.worker.tick == held
        wait_for(lambda: ex.worker.tick > held + 2)
    finally:
        ex.close()


def test_warming_up_builds_a_page_and_leaves_no_race_session_or_thread_behind() -> None:
    before = {t.name for t in threading.enumerate()}
    assert warm() > 0
    wait_for(lambda: not [t for t in threading.enumerate()
                          if t.name.startswith(THREAD_PREFIX) and t.name not in before])
    assert load.sessions() == 0 and not load.BUDGET.building and load.BUDGET.n_running == 0


class _Session:
    """What a pump sees of Bokeh's ServerSession: its connections and the expiration request."""

    def __init__(self) -> None:
        self.connection_count = 0
        self.expiration_requested = False

    def request_expiration(self) -> None:
        self.expiration_requested = True


class _Page:
    """An explorer as :func:`app.load.throttled` sees it: a pump, a session, a close."""

    def __init__(self) -> None:
        self.session = _Session()
        self._doc = type("Doc", (), {"session_context": type("Ctx", (), {"_session": self.session})()})()
        self.pumped = 0
        self.closed = False

    def _connected(self) -> bool:
        return self.session.connection_count > 0

    def pump(self) -> int:
        self.pumped += 1
        return 1

    def close(self) -> None:
        self.closed = True


def test_a_page_that_has_gone_closes_its_explorer_and_asks_bokeh_to_end_its_session_now() -> None:
    page = _Page()
    call = load.throttled(page)
    call()  # not connected yet (a page still loading): nothing ends
    assert not page.closed and not page.session.expiration_requested
    page.session.connection_count = 1
    call()
    assert not page.closed and page.pumped >= 1
    page.session.connection_count = 0  # the websocket closed
    assert call() == 0
    assert page.closed and page.session.expiration_requested


def test_a_slot_renderer_draws_what_bokehs_plotting_api_draws_without_the_glyph_copies() -> None:
    """Each colour slot's renderer: the glyph ``fig.line`` / ``fig.segment`` would make (compared
    property by property with theirs), and no nonselection or muted copy (BokehJS derives them)."""
    from bokeh.models import Segment
    from bokeh.plotting import figure

    from app.figures import Slots, glyph_renderer, make_figure

    def props(glyph: object) -> dict:
        return glyph.properties_with_values(include_defaults=False)  # type: ignore[attr-defined]

    fig = make_figure("t", 200)
    slots = Slots(("loss",))
    lines = slots.line(fig, "step", "loss", line_width=2, line_dash="dashed")
    ref = figure().line("step", "loss", source=slots.sources[3], line_color=lines[3].glyph.line_color,
                        line_width=2, line_dash="dashed")
    assert props(lines[3].glyph) == props(ref.glyph)
    assert lines[3].data_source is slots.sources[3] and lines[3] in fig.renderers and not lines[3].visible
    seg = glyph_renderer(fig, Segment(x0="x0", y0="y0", x1="x1", y1="y1", line_color="red", line_alpha=0.35),
                         slots.sources[0])
    ref_seg = figure().segment("x0", "y0", "x1", "y1", source=slots.sources[0], line_color="red",
                               line_alpha=0.35)
    assert props(seg.glyph) == props(ref_seg.glyph)
    for r in (*lines, seg):
        assert r.nonselection_glyph == "auto" and r.muted_glyph == "auto"  # Bokeh's API makes both
        assert {type(m).__name__ for m in r.references()} & {"Line", "Segment"} <= {type(r.glyph).__name__}
    assert sum(isinstance(m, type(lines[0].glyph)) for m in lines[0].references()) == 1


def test_a_server_process_checks_its_warm_up_page_and_then_no_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bokeh's integrity checks (which only log) run once per server process, on the warm-up page,
    not on every page a student opens; ``BOKEH_VALIDATE_DOC`` set by hand still decides."""
    from bokeh.document import Document
    from bokeh.settings import settings

    from app import server_lifecycle

    checked = []
    monkeypatch.setattr(Document, "validate", lambda doc: checked.append(len(doc.roots)))
    monkeypatch.delenv("BOKEH_VALIDATE_DOC", raising=False)
    try:
        server_lifecycle.on_server_loaded(None)
        assert len(checked) == 1 and checked[0] > 0  # the warm-up page, with its roots
        assert settings.perform_document_validation() is False  # Bokeh skips every page after it
        settings.perform_document_validation.unset_value()
        monkeypatch.setenv("BOKEH_VALIDATE_DOC", "true")
        server_lifecycle.check_pages_once()
        assert settings.perform_document_validation() is True
    finally:
        settings.perform_document_validation.unset_value()


def test_the_processes_sockets_pick_one_socket_per_client_address() -> None:
    """Two processes' listening sockets on one port (app/sockets.py): every connection from one
    address reaches the same socket, the (address mod 2)-th in bind order, so a page's GET and its
    websocket reach the process that built it; two addresses a socket each."""
    import ipaddress
    import select
    import socket

    from app.sockets import listeners

    first = listeners(socket.AF_INET, "127.0.0.1", 0, 2)[0]
    port = first.getsockname()[1]
    second = listeners(socket.AF_INET, "127.0.0.1", port, 2)[0]
    group = (first, second)
    try:
        for s in group:
            s.setblocking(False)

        def reached(source: str) -> int:
            with socket.socket() as client:
                client.bind((source, 0))
                client.connect(("127.0.0.1", port))
                ready, _, _ = select.select(group, [], [], 5)
                assert len(ready) == 1
                conn, (address, _) = ready[0].accept()
                conn.close()
                assert address == source
                return group.index(ready[0])

        sources = ["127.0.0.2", "127.0.0.3", "127.0.0.10", "127.0.0.11", "127.0.0.2", "127.0.0.11"] * 2
        for source in sources:
            assert reached(source) == int(ipaddress.IPv4Address(source)) % 2
    finally:
        for s in group:
            s.close()


def test_the_warm_up_race_steps_probes_and_is_drawn_then_paused() -> None:
    """The warm-up page's race takes its steps (probes included) and is drawn once, so what the first
    steps and draws make once per process is made before any student's session (app/page.py)."""
    from app.page import _race
    from app.views.curvature import CurvatureView
    from app.views.curves import LossView

    ex = Explorer()
    try:
        assert ex.worker.tick == 0 and not ex.running
        _race(ex, 10)
        assert ex.worker.tick >= 10 and not ex.running
        loss = ex.view(LossView)
        drawn = [len(src.data["loss"]) for src in loss.slots.sources]
        assert sum(drawn) >= 3 * 10, drawn  # three lanes, every step drawn
        probed = [len(src.data["sharpness"]) for src in ex.view(CurvatureView).slots.sources]
        assert sum(probed) >= 3 * 2, probed  # a probe every 5 steps: two per lane at least
    finally:
        ex.close()


def test_the_races_of_all_server_processes_share_one_step_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STEP_CORES`` is what all races together may take, over the ``--num-procs`` processes: each
    race gets an equal share of it wherever it runs. Each process had taken all of it (1.6 of 2
    cores with two), then half of it whatever its races (a class behind one address, all on one
    process, stepped at half the rate while the other process idled)."""
    from multiprocessing.sharedctypes import RawArray

    from app import sockets

    counts = RawArray("i", 2)  # what the processes share (made before the fork)
    monkeypatch.setattr(sockets, "_running", counts)
    here = {"index": 0}
    monkeypatch.setattr(sockets, "_index", lambda: here["index"])
    first, second = load.ServerBudget(load.STEP_CORES), load.ServerBudget(load.STEP_CORES)
    workers = [object() for _ in range(8)]
    for w in workers[:6]:  # the whole class in the first process
        first.running(w, True)
    assert list(counts) == [6, 0]
    assert first.share() == pytest.approx(load.STEP_CORES / 6)  # all of it: nothing runs elsewhere
    here["index"] = 1
    for w in workers[6:]:
        second.running(w, True)
    assert list(counts) == [6, 2] and second.share() == pytest.approx(load.STEP_CORES / 8)
    here["index"] = 0
    assert first.share() == pytest.approx(load.STEP_CORES / 8)
    for w in workers[:6]:
        first.running(w, False)
    here["index"] = 1
    assert list(counts) == [0, 2] and second.share() == pytest.approx(load.STEP_CORES / 2)
    # one process (not forked): its own races only
    monkeypatch.setattr(sockets, "_running", None)
    assert second.share() == pytest.approx(load.STEP_CORES / 2)
