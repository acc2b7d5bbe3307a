"""The sidebar: run buttons, presets, the problem, the lanes (one card each: :mod:`app.cards`) and
the race settings.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import panel as pn

from app import idle
from app.cards import LaneCard, optimizer_groups, widget_specs
from app.lanes import MAX_LANES, Lane
from app.model import RaceSession
from app.presets import presets
from app.sharing import CUSTOM
from landscapes import available_landscapes, available_networks

FIRST_SCREEN_CARDS = 1
"""Open lane cards whose widgets a served page's first build makes: at 1280 x 720 the second card
starts below the sidebar's fold; the others get theirs when the server is idle (app/idle.py)."""

__all__ = ["LaneCard", "Sidebar", "inline_math", "update_rules", "widget_specs"]


def inline_math(tex: str) -> str:
    r"""``tex`` as inline math for a LaTeX pane. ``<`` and ``>`` become ``\lt`` / ``\gt``: the pane's
    text passes through HTML, where ``_{i<q}`` opens a ``<q>`` tag and KaTeX gets half a formula."""
    return "$" + tex.replace("<", r"\lt ").replace(">", r"\gt ") + "$"



def update_rules(lanes: list[Lane]) -> list[pn.Row]:
    """The presenter view's update rule of each lane, one line per equation (the rules separate them
    with ",\\;"): on one line Adam's three ran past a 1024-px projector's edge in big type."""
    return [pn.Row(pn.pane.Markdown(f"**{lane.label}**", width=200, styles={"color": lane.color}),
                   pn.Column(*[pn.pane.LaTeX(inline_math(eq.strip()), margin=(2, 10))
                               for eq in lane.spec.update_rule.split(r",\;")], sizing_mode="stretch_width"),
                   sizing_mode="stretch_width") for lane in lanes]

class Sidebar:
    """The controls column, on a race session."""

    def __init__(self, session: RaceSession, on_preset: Callable[[str], None]) -> None:
        self.session = s = session
        w = pn.widgets
        self.run_button = w.Button(label="▶ Run", color="success", width=64)
        self.pause_button = w.Button(label="Pause", color="warning", width=64)
        self.step_button = w.Button(label="Step", color="primary", width=58)
        self.reset_button = w.Button(label="Reset", color="danger", width=58)
        self.run_button.on_click(lambda _: s.play())
        self.pause_button.on_click(lambda _: s.pause())
        self.step_button.on_click(lambda _: s.step())
        self.reset_button.on_click(lambda _: s.reset())
        self.counter = pn.pane.Markdown("", css_classes=["step-counter"], margin=(0, 10))
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, margin=(5, 0),
                                   sizing_mode="stretch_width")
        choices = {"choose a preset…": "", **{p.title: n for n, p in presets().items()}}
        self.preset_select = w.Select(label="Classroom presets", options=choices)
        self.preset_select._debounce = 0  # as a card's switch
        self.preset_select.param.watch(lambda e: e.new and on_preset(e.new), "value")
        self.problem_select = w.Select(label="Problem", value=s.problem, groups={
            "2-D landscapes": [*available_landscapes(), CUSTOM], "networks": available_networks()})
        self.problem_select.param.watch(lambda e: setattr(s, "problem", e.new), "value")
        s.param.watch(lambda e: setattr(self.problem_select, "value", e.new), "problem")
        self.add_select = w.Select(label=f"add an optimizer (up to {MAX_LANES})",
                                   groups={"": ["choose…"], **optimizer_groups()}, value="choose…")
        self.add_select._debounce = 0
        self.add_select.param.watch(self._add, "value")
        self.cards: dict[int, LaneCard] = {}
        """The card of each lane now (by lane id)."""
        self._slots: list[LaneCard] = []  # every card on the page, in its order (hidden ones too)
        # a served page's first screen has its lanes' cards; the spare ones follow when the server is
        # idle (app/idle.py); a lane added before then gets a card made in its click
        doc = pn.state.curdoc
        served = idle.served(doc) and not pn.state.loaded
        self._idle = (lambda work: idle.later(doc, work)) if served else None
        self._spares_made = self._idle is None
        self._opened_now = 0  # open cards whose widgets the first build made
        if self._idle is not None:
            self._idle(self._make_spares)
        self.lanes = pn.Column(sizing_mode="stretch_width", margin=0)
        self.presenter = w.Checkbox(label="presenter view (big type, update rules, one step per click)")
        network = s.param.problem.rx().rx.pipe(lambda v: v in available_networks())
        settings = self._closed_card(
            pn.Row(w.FloatInput.from_param(s.param.start_x, label="start x", width=110),
                   w.FloatInput.from_param(s.param.start_y, label="start y",
                                           width=110), visible=network.rx.not_()),
            pn.Row(w.IntInput.from_param(s.param.n_starts, label="starts M", width=110),
                   w.IntInput.from_param(s.param.seed, label="seed", width=110)),
            w.IntInput.from_param(s.param.batch_size, label="batch size (0: full batch)", visible=network),
            w.RadioButtonGroup.from_param(s.param.on_switch, label="on switch"),
            self.presenter,
            title="Race settings", sizing_mode="stretch_width", margin=(3, 0))
        probe_now = w.Button(label="Probe now", color="primary", width=100)
        probe_now.on_click(lambda _: s.probe_now())
        probes = self._closed_card(
            pn.pane.Markdown("preset (Cockpit's: more detail costs more run time)", margin=(0, 5)),
            w.RadioButtonGroup.from_param(s.param.probe_preset, label="preset"),
            w.RadioButtonGroup.from_param(s.param.probe_schedule, label="schedule"),
            w.IntInput.from_param(s.param.probe_every, label="every n steps", width=120),
            w.IntSlider.from_param(s.param.probe_top_k, label="top-k eigenvalues"),
            pn.Row(w.Checkbox.from_param(s.param.probe_density, label="density"),
                   w.Checkbox.from_param(s.param.probe_trace, label="trace")),
            probe_now, title="Curvature probes", sizing_mode="stretch_width", margin=(3, 0))
        self.buttons = pn.Row(self.run_button, self.pause_button, self.step_button, self.reset_button)
        self.panel = pn.Column(
            self.buttons, self.counter, self.error, self.preset_select, self.problem_select,
            w.TextInput.from_param(s.param.expression, label="f(x, y) (custom landscape)",
                                   visible=s.param.problem.rx() == CUSTOM),
            w.FloatSlider.from_param(s.param.speed, label="speed (steps/s)", step=1),
            self.add_select, self.lanes, settings, probes, sizing_mode="stretch_width")

    def _closed_card(self, *objects: Any, **kw: Any) -> pn.Card:
        """A collapsed card; on a served page its widgets enter the page when it is first opened or
        when the server is idle (a first build holds what the first screen shows)."""
        if self._idle is None:
            return pn.Card(*objects, collapsed=True, **kw)
        card = pn.Card(collapsed=True, **kw)

        def fill() -> None:
            if not card.objects:
                card.objects = list(objects)
        card.param.watch(lambda e: e.new or fill(), "collapsed")
        self._idle(fill)
        return card

    def fit_sliders(self) -> None:
        """A lane card reused for a new race (a preset, a link) keeps its sliders, whose log grids were
        made around the old values: one whose value is off its grid would show its first option
        (lr "1e-06" for 0.019) -- such a card's widgets are built again around the values now."""
        for card in self.cards.values():
            values = card.lane.values()
            if any(values.get(w.name, w.value) not in w.values
                   for w in card.body.select(pn.widgets.DiscreteSlider)):
                card._build(force=True)

    def _add(self, event: Any) -> None:
        if event.new != "choose…":
            self.session.add_lane(event.new)
            self.add_select.value = "choose…"

    def refresh(self) -> None:
        """The live values on the open lane cards (the page's refresh, a few times a second)."""
        for card in self.cards.values():
            card.refresh()

    def show_lanes(self, lanes: list[Lane]) -> None:
        """Cards for the lanes, in order: a lane keeps its card (its widgets stay), a new lane takes a
        hidden card after the one before it, a lane gone hides its card; laid out again only when no
        such card exists (lanes reordered, a new lane before a kept one)."""
        collapsed = len(lanes) > 3
        slots, wanted = self._slots, set(lanes)
        held = {card.lane: card for card in slots if card.lane is not None}
        plan: list[LaneCard] = []
        at = 0
        for lane in lanes:
            card = held.get(lane) or next(
                (c for c in slots[at:] if c.lane not in wanted and c not in plan), None)
            if card is None or slots.index(card) < at:
                plan = self._lay_out(lanes, held, collapsed)
                break
            plan.append(card)
            at = slots.index(card) + 1
        for lane, card in zip(lanes, plan, strict=True):
            if card.lane is not lane:
                card.bind(lane, collapsed)
        for card in self._slots:
            if card not in plan and card.lane is not None:
                card.hide()
        self.cards = {lane.id: card for lane, card in zip(lanes, plan, strict=True)}

    def _lay_out(self, lanes: list[Lane], held: dict[Lane, LaneCard], collapsed: bool) -> list[LaneCard]:
        """Every card placed again: the lanes' in order, then hidden ones up to :data:`MAX_LANES`."""
        free = [c for c in self._slots if c.lane not in set(lanes)]
        total = MAX_LANES if self._spares_made else len(lanes)
        fresh = [self._card(collapsed) for _ in range(max(total, len(lanes)) - len(self._slots))]
        plan = [held.get(lane) or (free or fresh).pop(0) for lane in lanes]
        spare = free + fresh
        self._slots = plan + spare[:max(total - len(lanes), 0)]
        self.lanes.objects = [c.card for c in self._slots]
        return plan

    def _card(self, collapsed: bool) -> LaneCard:
        return LaneCard(self.session, None, collapsed, self._later)

    def _make_spares(self) -> None:
        """The hidden cards up to :data:`MAX_LANES` (idle work after a served page has loaded)."""
        self._spares_made = True
        if len(self._slots) < MAX_LANES:
            self._slots += [self._card(True) for _ in range(MAX_LANES - len(self._slots))]
            self.lanes.objects = [c.card for c in self._slots]

    def _later(self, build: Callable[[], None]) -> None:
        """``build`` at the served page's next tick (the click's effect first); now off a loaded page."""
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None or not pn.state.loaded:
            first = self._idle is not None and doc is not None and doc.session_context is not None
            if first and self._opened_now >= FIRST_SCREEN_CARDS:
                self._idle(build)  # a served page's first build: below its first screen, when idle
                return
            self._opened_now += first
            build()
            return

        def later() -> None:
            with pn.io.hold(doc, freeze=True):
                build()
        doc.add_next_tick_callback(later)
