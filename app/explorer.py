"""The live explorer: a race of optimizers on a landscape, controlled while it runs.

``Explorer`` is a ``pn.viewable.Viewer`` on a :class:`app.model.RaceSession` (the model, which
never imports Panel): the served app (``app/main.py``) and the notebooks embed the very same
object. The sidebar (:mod:`app.controls`) changes the session; the panels (:data:`app.views.VIEWS`)
show it. A worker thread computes; a periodic pump (30 Hz, a background callback: it never turns
the page's busy indicator on) drains its records into the views as one message. Closing the page
stops the pump, the worker and every slow action.

Layout for a laptop or a projector (1280 x 720): the race and its loss curve side by side, the
active instrument in a tab under the curve, everything else in the sidebar's cards.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import wait as wait_for
from typing import Any

import panel as pn
import param
from bokeh.models import LogScale
from panel.pane.markup import HTMLBasePane

from app import sharing
from app.axes import AxisControls, find, set_axes
from app.batch import AXES, Batch
from app.controls import Sidebar, inline_math
from app.keys import Shortcuts
from app.lanes import MAX_LANES  # one home: the palette's size
from app.model import DEFAULT_RACE, RaceSession
from app.presets import presets
from app.sharing import CUSTOM
from app.sockets import quiet_closed_sockets
from app.stream import merge
from app.views import VIEWS, View, applies, build, deferred, live, on_page, repaint, streams

log = logging.getLogger(__name__)

PUMP_MS = 33
"""30 Hz at most, for >= 20 screen updates a second of an 8-lane race (a pump is one message, painted
at the next animation frame; ``benchmarks/stream.py``: 20.9-21.7 Hz, 19.3 with 40 ms). A class gets no
more messages: :data:`app.load.PUMPS_PER_SECOND` bounds them over all pages."""
REFRESH_EVERY = 10
"""Pumps between two refreshes of each thing not streamed (a table, a text, a range): 3 Hz, each pump
one of them in turn (a pump that did them all took ~3x a plain one and made the next ones late)."""
COUNTER_S = 0.25
"""Seconds between two updates of a running race's step counter (it moves with the curves, ~4 Hz)."""
RACE_EVERY = 4
"""Pumps between updates of the race's picture while it runs (7.5 Hz; the page's costliest repaint:
heatmap, contours, every path; the curves carry the pace). Paused, it is updated at every pump."""
__all__ = ["CUSTOM", "DEFAULT_RACE", "MAX_LANES", "Explorer"]


class Explorer(pn.viewable.Viewer):
    """Race up to eight optimizers from one or many starts on a landscape or a small network."""

    presenter = param.Boolean(default=False, doc="big type, every update rule, one step per click with "
                                                 "the update vectors drawn")

    def __init__(self, *, lanes: Any = None, optimizers: Any = None, autostart: bool = False,
                 **params: Any) -> None:
        own = {k: params.pop(k) for k in list(params) if k in type(self).param}
        if "landscape" in params:  # the name notebooks and links have always used
            params["problem"] = params.pop("landscape")
        super().__init__(**own)
        self.session = s = RaceSession(lanes=lanes, optimizers=optimizers, **params)
        # built when first shown (app.views.deferred): the curves and the status meter always are
        self.views: list[View] = [cls(s, self.show_error) if cls.area in ("curves", "status")
                                  else deferred(cls, s, self.show_error) for cls in VIEWS]
        self.sidebar = Sidebar(s, self.apply_preset)
        self.sidebar.presenter.link(self, value="presenter", bidirectional=True)
        self.sidebar.reset_button.on_click(lambda _: self._reset_shown())
        self.preset_note = pn.pane.Alert("", alert_type="info", visible=False, margin=(0, 0),
                                         css_classes=["preset-claim"],
                                         sizing_mode="stretch_width", styles={"font-size": "0.85em"})
        self.formula = pn.pane.LaTeX("", styles={"font-size": "1.05em"}, margin=(0, 10))
        self.description = pn.pane.Markdown("", margin=(0, 10), styles={"font-size": "0.85em"},
                                            sizing_mode="stretch_width",
                                            visible=self.preset_note.param.visible.rx.not_())
        self.rules = pn.Column(sizing_mode="stretch_width", visible=False)
        # eleven tabs do not fit one row beside the race at 1280 px: the headers wrap onto a second
        # row instead of scrolling out of sight (a preset's tab, e.g. connectivity, was off-screen)
        self.instruments = pn.Tabs(dynamic=True, sizing_mode="stretch_width", margin=(0, 0),
                                   stylesheets=[":host .bk-headers-wrapper {flex-wrap: wrap;}"])
        self.instruments.param.watch(lambda _: self._show_tab(), "active")
        self.race_area = pn.Column(sizing_mode="stretch_width", margin=0)
        self.main = pn.Column(
            self.preset_note, pn.Row(self.formula, self.description, sizing_mode="stretch_width"), self.rules,
            pn.Row(self.race_area, pn.Column(*[v.panel for v in self._area("curves")], self.instruments,
                                             sizing_mode="stretch_width", margin=0),
                   sizing_mode="stretch_width"), sizing_mode="stretch_width")
        self.controls = self.sidebar.panel
        status = pn.Row(*[v.panel for v in self._area("status")], margin=0)
        self.controls.insert(2, status)
        self.shortcuts = Shortcuts(self.on_key)  # space: run / pause; right arrow: one step
        self.axes = AxisControls(self.figures)
        self.controls.extend([self.axes.panel, self.shortcuts])
        self._callback: Any = None
        self._preset_axes: list[tuple[Any, bool]] = []  # (figure, was log) a preset changed
        self._doc: Any = None
        self._pumps = 0
        self._counted_at = 0.0  # when the step counter was last brought up to date (time.monotonic)
        self._later: dict[int, Batch] = {}  # id(view) -> drained, not yet sent to it (see pump)
        self._closed = False
        s.param.watch(lambda _: self._new_run(), "revision")
        s.param.watch(lambda e: self._show_lanes(), "lanes")
        s.param.watch(lambda e: self._show_message(e.new), "message")
        s.param.watch(lambda e: self._set_x(), "x_axis")
        s.param.watch(lambda e: self._update_counter(), "running")
        self._new_run()
        if autostart:  # a served page steps once it has loaded (start_streaming); elsewhere at once
            doc = pn.state.curdoc
            if doc is None or doc.session_context is None or pn.state.loaded:
                s.play()
            else:  # held: a link opened before the page loads must not replay past its pause first
                s.held, s.running = True, True

    # -- names the notebooks and tests use ---------------------------------------------------------
    @property
    def worker(self) -> Any:
        return self.session.worker

    @property
    def problem(self) -> Any:
        return self.session.problem_obj

    @property
    def message(self) -> str:
        return self.session.message

    @property
    def running(self) -> bool:
        return self.session.running

    def view(self, cls: type) -> Any:
        """The page's view of class ``cls`` (e.g. ``explorer.view(MemoryView)``), built if it was not."""
        view = next(v for v in self.views if isinstance(v, cls))
        self._build(view)
        return view

    def figures(self) -> list[Any]:
        """The Bokeh figures of the views on the page now (for the axis controls)."""
        shown = [v for v in live(self.views) if v.applies()]
        return [p.object for v in shown for p in v.panel.select(pn.pane.Bokeh)
                if hasattr(p.object, "y_scale")]

    def _area(self, area: str) -> list[View]:
        return [v for v in self.views if v.area == area]

    def __panel__(self) -> pn.viewable.Viewable:
        self.start_streaming()
        return pn.Row(pn.Column(self.controls, width=330), self.main, sizing_mode="stretch_width")

    # -- reacting to the session -------------------------------------------------------------------
    def _new_run(self) -> None:
        """A new run is in: every view starts over on its problem; the page shows what applies."""
        self._later = {}  # the old race's records not yet sent: never drawn
        with self._hold(freeze=True):
            s = self.session
            for v in self.views:  # a view that streams the race is built when it applies: it misses nothing
                if not v.built and (v.area == "race" or streams(v)) and applies(v):
                    build(v)
            for v in live(self.views):
                v.set_problem()
            self._show_lanes()
            self._set_x()
            shown = [on_page(v) for v in self._area("race") if applies(v)]  # only these are on the page
            if list(self.race_area.objects) != shown:
                self.race_area.objects = shown
            self.race_area.visible = bool(shown)
            tabs = [(v.title, on_page(v)) for v in self._area("instrument") if applies(v)]
            if [t for t, _ in tabs] != list(self.instruments._names):
                active = self.instruments.active
                self.instruments[:] = tabs
                self.instruments.active = min(active, len(tabs) - 1)
            self._build(self._tab())
            p = s.problem_obj
            self.formula.object = inline_math(p.latex) if getattr(p, "latex", "") else ""
            self.description.object = getattr(p, "description", "")
            self._show_rules()
            self._update_counter()
            self._fit_sliders()
            for fig, log in self._preset_axes:  # a preset's axes were for its own race
                set_axes(fig, log=log, auto=True)
            self._preset_axes = []

    def _fit_sliders(self) -> None:
        """A lane card reused for a new race (a preset, a link) keeps its sliders, whose log grids were
        made around the old values: one whose value is off its grid would show its first option
        (lr "1e-06" for 0.019) -- such a card's widgets are built again around the values now."""
        for card in self.sidebar.cards.values():
            values = card.lane.values()
            if any(values.get(w.name, w.value) not in w.values
                   for w in card.body.select(pn.widgets.DiscreteSlider)):
                card._build(force=True)

    def _tab(self) -> View | None:
        """The instrument whose tab is open."""
        tabs = [v for v in self._area("instrument") if applies(v)]
        return tabs[self.instruments.active] if 0 <= self.instruments.active < len(tabs) else None

    def _show_tab(self) -> None:
        """A tab opened: build its view if it was a shell, send it what waited (:meth:`pump`), draw it."""
        view = self._tab()
        self._build(view)
        waiting = self._later.pop(id(view), None)
        with self._hold():
            if view is not None and waiting:
                view.consume(waiting)
            self._refresh()

    def _build(self, view: View | None) -> None:
        """Build a shell (:func:`app.views.build`) and bring it to where the page is: its run, lanes,
        x-axis, presenter view; the axis controls then list its figures."""
        if view is None or view.built:
            return
        with self._hold(freeze=True):
            build(view)
            view.set_problem()
            view.show_lanes(list(self.session.lanes))
            label = self.session.x_axis
            view.set_x(AXES[label], label)
            if self.presenter:
                view.present(True)
        self.axes.list_plots()

    def _show_lanes(self) -> None:
        lanes = list(self.session.lanes)
        with self._hold(freeze=False):
            self.sidebar.show_lanes(lanes)
            for v in live(self.views):
                v.show_lanes(lanes)
            self._show_rules()

    def _set_x(self) -> None:
        label = self.session.x_axis
        for v in live(self.views):
            v.set_x(AXES[label], label)

    def show_error(self, text: str) -> None:
        self.session.message = text

    def _show_message(self, text: str) -> None:
        self.sidebar.error.object = text
        self.sidebar.error.visible = bool(text)

    def _update_counter(self) -> None:
        s = self.session
        state = "running" if s.running else "paused"
        drawn = [v for v in live(self.views) if hasattr(v, "points_drawn")]
        points = f" · {drawn[0].points_drawn:,} points drawn" if drawn and s.is_drawn else ""
        text = f"**step {s.worker.tick - s.origin}** · {state}{points}"
        if text != self.sidebar.counter.object:
            self.sidebar.counter.object = text

    def on_key(self, key: str) -> None:
        """A keyboard shortcut (:mod:`app.keys`): "space" runs or pauses, "right" takes one step."""
        s = self.session
        if key == "space":
            s.pause() if s.running else s.play()
        elif key == "right":
            s.step()

    # -- presets and links -------------------------------------------------------------------------
    def apply_preset(self, name: str) -> bool:
        """Load a classroom preset (``app/presets.toml``): problem, race, starts, speed, x-axis. On a
        live page its claim is shown at once, in a message of its own, and the race follows on the
        next tick (a new problem's plots take the browser seconds to lay out; the claim does not wait)."""
        preset = presets().get(name)
        if preset is None:
            self.show_error(f"unknown preset {name!r}; presets: {', '.join(presets())}")
            return False
        doc = self._doc
        if doc is None or doc.session_context is None or self._callback is None:
            return self._open_preset(preset)
        before = (self.preset_note.object, self.preset_note.visible)
        self._show_preset(preset)

        def later() -> None:
            with self._hold():
                if not self._open_preset(preset):
                    self.preset_note.object, self.preset_note.visible = before
        doc.add_next_tick_callback(later)
        return True

    def _show_preset(self, preset: Any) -> None:
        claim = f" **Watch: {preset.claim}**" if preset.claim else ""
        self.preset_note.object = f"**{preset.title}.**{claim} {preset.explanation}"
        self.preset_note.visible = True

    def _open_preset(self, preset: Any) -> bool:
        if not self.session.load(preset.spec(), f"the preset {preset.title!r}"):
            return False
        self._show_preset(preset)
        titles = list(self.instruments._names)
        if preset.tab in titles:
            self.instruments.active = titles.index(preset.tab)
        for prefix, axes in preset.axes.items():  # e.g. a linear sharpness axis over 2 .. 9
            fig = find(self.figures(), prefix)
            if fig is not None:
                self._preset_axes.append((fig, isinstance(fig.y_scale, LogScale)))
                set_axes(fig, log=axes.get("log"), y=axes.get("y"))
        self.axes.list_plots()
        return True

    def apply_query(self, query: dict[str, str]) -> bool:
        """Open a share link's race (its query parameters); a bad link says why and changes nothing."""
        if not query.get("race") and not query.get("problem"):
            return False
        try:
            spec = sharing.from_query(query)
        except sharing.RaceError as exc:
            self.show_error(f"this link cannot be opened: {exc}")
            return False
        if self.session.load(spec, "this link"):
            self.preset_note.visible = False
            return True
        return False

    # -- presenter view ----------------------------------------------------------------------------
    @param.depends("presenter", watch=True)
    def _on_presenter(self) -> None:
        big = self.presenter
        if big and self.session.running:
            self.session.pause()
        size = {"font-size": "1.3em"} if big else {"font-size": "1em"}
        self.controls.styles = size
        self.main.styles = size
        for v in live(self.views):
            v.present(big)
        self.sidebar.step_button.width = 140 if big else 60
        self.sidebar.step_button.label = "Step ▸" if big else "Step"
        self._show_rules()

    def _show_rules(self) -> None:
        self.rules.visible = self.presenter
        if self.presenter:
            # one line per equation (the rules separate them with ",\;"): on one line Adam's three
            # ran past a 1024-px projector's edge in big type
            self.rules.objects = [
                pn.Row(pn.pane.Markdown(f"**{lane.label}**", width=200, styles={"color": lane.color}),
                       pn.Column(*[pn.pane.LaTeX(inline_math(eq.strip()), margin=(2, 10))
                                   for eq in lane.spec.update_rule.split(r",\;")],
                                 sizing_mode="stretch_width"),
                       sizing_mode="stretch_width") for lane in self.session.lanes]

    # -- streaming ---------------------------------------------------------------------------------
    def start_streaming(self) -> None:
        """Start the pump once the page has loaded (idempotent), and end everything when the page
        closes. Why wait: updates sent while the browser still builds the page pile up in the
        websocket, and the page then shows the race seconds late."""
        if self._doc is not None or self._callback is not None:
            return
        self._doc = pn.state.curdoc
        if self._doc is not None and self._doc.session_context is not None:
            pn.state.on_session_destroyed(lambda _ctx: self.close())
            quiet_closed_sockets()
            repaint.install(self._doc)
        pn.state.onload(self._begin_streaming)

    def _begin_streaming(self) -> None:
        if self._callback is not None or self._closed:
            return
        # background: a periodic callback otherwise marks the page busy at every call (the spinner)
        self._callback = pn.io.callbacks.PeriodicCallback(callback=self.pump, period=PUMP_MS, background=True)
        self._callback.start()
        self.session.release()
        # a pane's first update sends more stylesheets than it was built with (Bokeh walks the page): now
        with self._hold(freeze=True):
            for pane in [*self.controls.select(HTMLBasePane), *self.main.select(HTMLBasePane)]:
                pane.param.trigger("object")

    def _hold(self, freeze: bool = False) -> Any:
        """One message for many changes (no-op without a session); ``freeze``: one walk over the models."""
        return pn.io.hold(self._doc, freeze=freeze)

    def pump(self) -> int:
        """Move what the worker produced into the views, as one message; returns the records moved. While
        the race runs, the race's picture gets what several pumps drained every :data:`RACE_EVERY` pumps,
        an instrument whose tab is closed every :data:`REFRESH_EVERY` pumps or when its tab opens (fewer,
        larger streams); paused, every view gets every pump's records. Paused and idle, it sends nothing."""
        if self._closed or not self._connected():
            return 0
        batch = self.session.drain()
        self._pumps += 1
        if batch.reset:  # a message of its own: a source emptied and streamed to in one message would be
            with self._hold():  # sent with its new rows twice (Bokeh serializes ``data`` when it sends)
                for v in live(self.views):
                    v.clear()
        running = self.session.running
        tab = self._tab() if running else None
        with self._hold():
            for v in live(self.views):
                every = 1 if not running else RACE_EVERY if v.area == "race" else \
                    REFRESH_EVERY if v.area == "instrument" and v is not tab else 1
                waiting = self._later.pop(id(v), None)
                if waiting is None and every == 1:
                    v.consume(batch)
                    continue
                waiting = merge(waiting or Batch(), batch)  # a reset drops what waited (the views cleared)
                if self._pumps % every:
                    self._later[id(v)] = waiting
                elif waiting.records or waiting.marks:
                    v.consume(waiting)
            self._refresh(self._pumps % REFRESH_EVERY)
            # the counter also by the clock: a reset or a paused race's step at once, a running race's
            # every COUNTER_S (its refresh turn alone took ~4 s under load: the counter looked frozen)
            now = time.monotonic()
            if batch.reset or (batch.records and (not running or now - self._counted_at >= COUNTER_S)):
                self._counted_at = now
                self._update_counter()
        return sum(len(r) for r in batch.records.values())

    def _reset_shown(self) -> None:
        """A reset shown in its click's message, not a pump later (the worker takes it between steps)."""
        if (pending := self.session._pending_reset) is not None:  # at most 0.1 s of the click's turn
            wait_for([pending], timeout=0.1)  # not taken in time: the pump shows it; cancelled: page closed
        self.pump()

    def _connected(self) -> bool:
        """Whether a page is there to send to: between a page's websocket closing and its session
        ending (seconds), a pump's message would be written to a closed socket."""
        context = getattr(self._doc, "session_context", None)
        session = getattr(context, "_session", None)
        return session is None or session.connection_count > 0

    def _refresh(self, part: int | None = None) -> None:
        """Redraw what is not streamed, for the views on screen: all of it, or only its ``part``-th
        share of :data:`REFRESH_EVERY` (a pump's turn)."""
        shown = [v for v in live(self.views) if v.area != "instrument"]
        tabs = [v for v in self._area("instrument") if applies(v)]
        if tabs and 0 <= self.instruments.active < len(tabs):
            shown.extend(live([tabs[self.instruments.active]]))
        redraws = [v.refresh for v in shown if v.applies()] + [self.sidebar.refresh, self._update_counter]
        for i, redraw in enumerate(redraws):
            if part is None or i % REFRESH_EVERY == part:
                redraw()

    def close(self) -> None:
        """Stop the pump, the worker and every slow action (the page closed). Touches no document."""
        self._closed = True
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        for v in live(self.views):
            v.close()
        self.session.close()
