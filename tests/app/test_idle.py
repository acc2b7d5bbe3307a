"""A served page's first build holds what its first screen shows; the rest (spare lane cards, open
lane cards below the fold, closed settings cards, closed streaming tabs) is built when the server is
idle (app/idle.py), and a click that needs a piece before then gets it built in the click."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import panel as pn
import pytest
from bokeh.document import Document
from panel.io.state import set_curdoc

from app import idle
from app.explorer import Explorer
from app.lanes import MAX_LANES
from app.views import GradView, LossView
from tests.app.conftest import pump_until, widget


@contextmanager
def served(optimizers: list[str]) -> Iterator[tuple[Document, Explorer]]:
    """A page as ``panel serve`` builds it (a session context), before it has loaded."""
    idle.drain()
    doc = Document()
    session = SimpleNamespace(id="idle", request=SimpleNamespace(arguments={}, cookies={}, headers={}))
    doc._session_context = lambda: session
    with set_curdoc(doc):
        ex = Explorer(landscape="quadratic", optimizers=optimizers, speed=500, autostart=True)
        ex.start_streaming()
    try:
        yield doc, ex
    finally:
        ex.close()
        idle.drain()


def shown(ex: Explorer) -> list[str]:
    return [c.title for c in ex.sidebar.lanes.objects if c.visible]


@pytest.mark.timeout(120)
def test_spare_cards_and_closed_tabs_come_when_idle_and_a_tab_built_then_has_every_step() -> None:
    with served(["sgd", "adam"]) as (doc, ex):
        grad = next(v for v in ex.views if isinstance(v, GradView))
        assert len(ex.sidebar.lanes.objects) == 2 and not grad.built and idle.pending() >= 2
        assert idle.busy()  # the page has not loaded: the process's idle work waits for it
        pn.state._on_load(doc)
        assert not idle.busy()
        pump_until(ex, lambda: ex.worker.tick > 30, timeout=60)
        ex.session.pause()
        ex.pump()
        assert idle.drain() >= 2
        assert len(ex.sidebar.lanes.objects) == MAX_LANES and shown(ex) == ["SGD", "Adam"]
        loss = next(v for v in ex.views if isinstance(v, LossView))
        assert grad.built
        for lane in ex.session.lanes:
            steps = loss.slots.sources[lane.slot].data["step"]
            assert grad.slots.sources[lane.slot].data["step"] == steps and len(steps) > 30


@pytest.mark.timeout(120)
def test_a_lane_added_and_a_tab_opened_before_the_idle_work_are_built_in_their_click() -> None:
    with served(["sgd"]) as (doc, ex):
        pn.state._on_load(doc)
        ex.sidebar.add_select.value = "adam"  # before the spare cards exist
        assert shown(ex) == ["SGD", "Adam"] and len(ex.sidebar.lanes.objects) == 2
        card = ex.sidebar.cards[ex.session.lanes[1].id]
        assert widget(card.card, "lr").value == pytest.approx(ex.session.lanes[1].hyperparameters.lr)
        titles = list(ex.instruments._names)
        ex.instruments.active = titles.index(GradView.title)  # a deferred tab opened
        grad = next(v for v in ex.views if isinstance(v, GradView))
        assert grad.built and ex.instruments.active == titles.index(GradView.title)
        idle.drain()  # the idle work finds them built: cards up to eight, the tab as it was
        assert len(ex.sidebar.lanes.objects) == MAX_LANES and shown(ex) == ["SGD", "Adam"]
        assert next(v for v in ex.views if isinstance(v, GradView)) is grad


@pytest.mark.timeout(120)
def test_a_closed_lane_cards_widgets_are_built_when_it_is_opened_before_or_after_the_idle_work() -> None:
    with served(["sgd", "adam", "rmsprop", "adagrad", "lion"]) as (doc, ex):  # > 3 lanes: cards closed
        pn.state._on_load(doc)
        cards = [ex.sidebar.cards[lane.id] for lane in ex.session.lanes]
        assert all(c.card.collapsed and not c.body.objects for c in cards)
        cards[0].card.collapsed = False  # opened before the idle work: built in the click
        assert widget(cards[0].card, "lr")
        idle.drain()
        assert not any(c.body.objects for c in cards[1:])  # not while idle (see LaneCard.bind)
        cards[1].card.collapsed = False
        assert widget(cards[1].card, "lr").value == pytest.approx(ex.session.lanes[1].hyperparameters.lr)


def test_off_a_served_page_everything_is_built_at_once() -> None:
    ex = Explorer(landscape="quadratic", optimizers=["sgd"], speed=500)
    try:
        assert len(ex.sidebar.lanes.objects) == MAX_LANES and idle.pending() == 0
        assert next(v for v in ex.views if isinstance(v, GradView)).built
    finally:
        ex.close()


@pytest.mark.timeout(120)
def test_the_closed_settings_cards_get_their_widgets_when_opened_or_idle() -> None:
    with served(["sgd"]) as (doc, ex):
        pn.state._on_load(doc)
        cards = {c.title: c for c in ex.sidebar.panel if isinstance(c, pn.Card)}
        settings, probes = cards["Race settings"], cards["Curvature probes"]
        assert not settings.objects and not probes.objects
        settings.collapsed = False  # opened before the idle work
        widget(settings, "seed").value = 7
        assert ex.session.seed == 7
        idle.drain()
        assert widget(probes, "every n steps").value == ex.session.probe_every
        assert widget(settings, "seed").value == 7  # opened before: kept, not built twice


@pytest.mark.timeout(120)
def test_open_cards_below_the_first_screen_get_their_widgets_when_idle() -> None:
    with served(["sgd", "adam", "rmsprop"]) as (doc, ex):  # three lanes: their cards open
        cards = [ex.sidebar.cards[lane.id] for lane in ex.session.lanes]
        assert not any(c.card.collapsed for c in cards)
        assert [bool(c.body.objects) for c in cards] == [True, False, False]
        pn.state._on_load(doc)
        idle.drain()
        for card, lane in zip(cards, ex.session.lanes, strict=True):
            assert widget(card.card, "lr").value == pytest.approx(lane.hyperparameters.lr)


@pytest.mark.timeout(120)
def test_a_switch_shows_its_optimizer_first_and_its_widgets_on_the_next_tick() -> None:
    with served(["sgd"]) as (doc, ex):
        pn.state._on_load(doc)
        lane = ex.session.lanes[0]
        card = ex.sidebar.cards[lane.id]
        ticks: list = []
        doc.add_next_tick_callback = ticks.append  # the server's next tick, run below
        with set_curdoc(doc):
            widget(card.card, "switch this lane to").value = "lion"
        assert lane.optimizer == "lion" and card.card.title == "Lion" and len(ticks) == 1
        assert card.body.objects[0].object is not lane.hyperparameters  # SGD's, for one tick
        with set_curdoc(doc):
            ticks.pop()()
        assert card.body.objects[0].object is lane.hyperparameters and card.body.visible
