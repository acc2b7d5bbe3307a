"""A page builds only the views it shows (app.views.deferred): what is built when, and that a view
built late joins the page where it is (its run, lanes, presenter view, the axis controls)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import panel as pn

from app.explorer import Explorer
from app.views import (
    VIEWS,
    ConnectivityView,
    GameView,
    GradView,
    LandscapeView,
    LossView,
    MemoryView,
    NetworkView,
    ShareView,
    View,
    applies,
    build,
    deferred,
    live,
    on_page,
    streams,
)
from tests.app.conftest import pump_until


class Counting(View):
    """A view that counts its constructions and needs its own state to say whether it applies."""

    made = 0

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        type(self).made += 1
        self.panel = pn.pane.Markdown("built")
        self.wanted = session.wanted

    def applies(self) -> bool:
        return self.wanted


def test_a_shell_is_its_class_unbuilt_and_building_it_fills_its_frame_once() -> None:
    Counting.made = 0
    session = SimpleNamespace(wanted=True)
    view = deferred(Counting, session, lambda text: None)
    assert isinstance(view, Counting) and not view.built and Counting.made == 0
    assert live([view]) == [] and on_page(view) is view.frame and list(view.frame.objects) == []
    assert applies(view)  # its applies reads its own state: it is built to answer
    assert view.built and Counting.made == 1 and list(view.frame.objects) == [view.panel]
    assert not build(view) and Counting.made == 1  # once
    assert live([view]) == [view] and on_page(view) is view.frame


def test_which_views_stream_the_race() -> None:
    streaming = {cls.__name__ for cls in VIEWS if streams(cls.__new__(cls))}
    assert {"LandscapeView", "NetworkView", "LossView", "GradView", "CurvatureView", "DiagnosticsView",
            "LeaderboardView"} <= streaming
    assert not streaming & {"MemoryView", "ShareView", "ExperimentsView", "BilevelView", "GameView",
                            "ConnectivityView", "SliceView", "LearnedView"}


def built(ex: Explorer) -> set[str]:
    return {type(v).__name__ for v in ex.views if v.built}


def test_the_default_race_builds_what_it_shows_and_a_tab_when_it_is_opened() -> None:
    ex = Explorer(optimizers=["sgd", "adam"], speed=1000)
    try:
        # on the page: the landscape, the curves, the rate meter; the tabs that stream the race
        assert built(ex) == {"LandscapeView", "LossView", "RateView", "LeaderboardView", "GradView",
                             "CurvatureView", "DiagnosticsView"}
        assert not any(v.built for v in ex.views if isinstance(v, (NetworkView, GameView, ConnectivityView,
                                                                   MemoryView, ShareView)))
        assert "memory" in ex.instruments._names  # its tab is there, with an empty frame
        memory = next(v for v in ex.views if isinstance(v, MemoryView))
        assert ex.instruments[ex.instruments._names.index("memory")] is memory.frame
        ex.session.play()
        pump_until(ex, lambda: ex.worker.tick > 5)
        ex.instruments.active = ex.instruments._names.index("memory")  # opened: built, told the race
        assert memory.built and list(memory.frame.objects) == [memory.panel]
        pump_until(ex, lambda: memory.refresh() or set(memory.source.data["lane"]) == {"SGD", "Adam"}, 30)
        assert "one step's memory" in str(ex.axes.plot.options)  # the axis controls list its figure
    finally:
        ex.close()


def test_a_view_that_comes_to_apply_is_built_at_the_new_run_and_streams_it_from_its_start() -> None:
    ex = Explorer(optimizers=["adam"], speed=1000)
    try:
        network = next(v for v in ex.views if isinstance(v, NetworkView))
        assert not network.built and not ex.view(GradView).session.is_network
        ex.session.problem = "moons_mlp"
        assert network.built and list(ex.race_area.objects) == [network.frame]
        ex.session.play()
        pump_until(ex, lambda: len(network.slots.sources[0].data["step"]) > 2, 30)
        assert network.slots.sources[0].data["step"][0] == 0  # from its first record on
    finally:
        ex.close()


def test_view_builds_on_demand_and_a_late_view_joins_the_presenter_view() -> None:
    ex = Explorer(optimizers=["sgd"], speed=1000)
    try:
        ex.presenter = True
        game = next(v for v in ex.views if isinstance(v, GameView))
        assert not game.built
        presented = []
        game_present = GameView.present
        GameView.present = lambda self, big: presented.append(big) or game_present(self, big)  # type: ignore
        try:
            assert ex.view(GameView) is game and game.built and presented == [True]
        finally:
            GameView.present = game_present  # type: ignore[method-assign]
        assert ex.view(LandscapeView).built and ex.view(LossView).built
    finally:
        ex.close()
