"""The sidebar: run buttons, presets, the problem, the lanes (each rendered from its ``param``
object by ``pn.Param``: its widgets are generated from the optimizer's spec) and the race settings.

A log-scale hyperparameter gets a slider over a log-spaced grid (1, 1.5, 2, 3, 5, 7 per decade)
that shows the value itself, a choice a drop-down of its options; sliders report on release
(``value_throttled``), so a drag sends one event, not fifty.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import panel as pn
import param

from app.lanes import MAX_LANES, Lane
from app.model import RaceSession
from app.presets import presets
from app.sharing import CUSTOM
from app.wrapper_controls import WrapperControls
from engine.registry import available, get_spec
from landscapes import available_landscapes, available_networks

_MANTISSAS = (1, 1.5, 2, 3, 5, 7)
_OPEN_END = 1e-6  # keeps a slider off an excluded end of its range, e.g. beta < 1


def inline_math(tex: str) -> str:
    r"""``tex`` as inline math for a LaTeX pane. ``<`` and ``>`` become ``\lt`` / ``\gt``: the pane's
    text passes through HTML, where ``_{i<q}`` opens a ``<q>`` tag and KaTeX gets half a formula."""
    return "$" + tex.replace("<", r"\lt ").replace(">", r"\gt ") + "$"


def log_grid(lo: float, hi: float, value: float) -> list[float]:
    """1, 1.5, 2, 3, 5, 7 x 10^k inside [lo, hi], plus ``value`` itself (a default off the grid)."""
    grid = {value}
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        grid.update(float(f"{m}e{k}") for m in _MANTISSAS)
    return sorted(v for v in grid if lo <= v <= hi)


def _span(hp: Any) -> tuple[float, float]:
    lo = hp.low if hp.low is not None else -10.0
    hi = hp.high if hp.high is not None else 10.0
    if not hp.include_low:
        lo += _OPEN_END * max(1.0, abs(lo))
    if not hp.include_high:
        hi -= _OPEN_END * max(1.0, abs(hi))
    return lo, hi


class LogGridSlider(pn.widgets.DiscreteSlider):
    """A ``DiscreteSlider`` whose label ("lr: 0.003") the page alone writes.

    Panel's writes it twice: in the page (a link from the slider's position) and from the server on
    each value it processes. Under load the server's write for an older key press or drag position
    can reach the page after a newer one: the page then shows the old value while the run has the
    new one, and nothing corrects it (the server believes the page shows its newest label). Here
    the server keeps the label's text for itself (a page built later gets it) without sending it:
    the page's link rewrites the label whenever the slider moves, by the user or by the server."""

    def _update_value(self, event: param.parameterized.Event) -> None:
        with param.parameterized.discard_events(self._text):
            super()._update_value(event)


def widget_specs(lane: Lane) -> dict[str, dict[str, Any]]:
    """``pn.Param`` widget settings for a lane's hyperparameters (types and grids from the spec)."""
    out: dict[str, dict[str, Any]] = {}
    for hp in lane.spec.hyperparameters:
        value = getattr(lane.hyperparameters, hp.name)
        if hp.kind == "bool":
            out[hp.name] = {"type": pn.widgets.Checkbox}
            continue
        if hp.kind == "choice":
            out[hp.name] = {"type": pn.widgets.Select}
            continue
        lo, hi = _span(hp)
        if hp.kind == "int":
            out[hp.name] = {"type": pn.widgets.IntSlider, "start": int(lo), "end": int(hi), "throttled": True}
        elif hp.log:
            grid = log_grid(lo, hi, float(value))
            out[hp.name] = {"type": LogGridSlider, "options": {f"{v:.3g}": v for v in grid},
                            "throttled": True}
        else:  # up to 4 decimals: beta2 = 0.999 must not read "1"
            out[hp.name] = {"type": pn.widgets.FloatSlider, "start": lo, "end": hi, "step": (hi - lo) / 1000,
                            "format": "0.[0000]", "throttled": True}
    return out


def optimizer_groups() -> dict[str, list[str]]:
    """Every registered optimizer, grouped by family (first-order, zeroth-order, ...)."""
    groups: dict[str, list[str]] = {}
    for name in available():
        groups.setdefault(get_spec(name).family, []).append(name)
    return groups


_HIDDEN = ["card", "lane-off"]  # a Card's visible=False did not hide it on the served page: a rule does


class LaneCard:
    """One lane in the sidebar: a card in its colour with its hyperparameters (``pn.Param``), the
    optimizer it runs (switch it here) and a remove button.

    A card is a place that shows a lane (:meth:`bind`) or nothing (:meth:`hide`); the sidebar has
    :data:`MAX_LANES` from the start: adding or removing a lane changes properties of models the page
    has. A card put in or taken out made Bokeh walk the whole document (50-250 ms) in the click."""

    def __init__(self, session: RaceSession, lane: Lane | None, collapsed: bool,
                 later: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.session = session
        self.lane: Lane | None = None
        self._later = later or (lambda f: f())
        self._watchers: list[Any] = []
        self._binding = False
        # a hidden card gets the optimizers when it first shows a lane (a page's spare cards cost less)
        self.switch = pn.widgets.Select(label="switch this lane to", options=[], width=165)
        self.switch._debounce = 0  # a pick is one change: no 50 ms wait for more (Panel's, for typing)
        self.switch.param.watch(self._switch, "value")
        self.remove = pn.widgets.Button(label="✕ remove", width=75, margin=(22, 0, 5, 5))
        self.remove.on_click(lambda _: self.lane is not None and session.remove_lane(self.lane))
        # a collapsed card builds its widgets when first opened (8 lanes of sliders cost the page ~1 s)
        self.body = pn.Column(sizing_mode="stretch_width", margin=0)
        self.wrappers: WrapperControls | None = None
        self.card = pn.Card(self.body, pn.Row(self.switch, self.remove), title="", collapsed=collapsed,
                            header_color="white", sizing_mode="stretch_width", margin=(3, 0), visible=False,
                            css_classes=_HIDDEN, stylesheets=[":host(.lane-off) {display: none !important;}"])
        self.card.param.watch(self._opened, "collapsed")
        if lane is not None:
            self.bind(lane, collapsed)

    def bind(self, lane: Lane, collapsed: bool) -> None:
        """Show ``lane`` here (a card of no lane, or of one that left). The widgets of an open card
        follow on the next tick: the card and the race show the change first."""
        self._unwatch()
        self.lane, self.wrappers = lane, None
        self._watchers = [lane.param.watch(self._relabel, "label"),
                          lane.param.watch(self._new_optimizer, "hyperparameters")]
        self._binding = True
        try:
            if not self.switch.groups:
                self.switch.groups = optimizer_groups()
            self.switch.value = lane.optimizer
            self.card.param.update(title=lane.label, header_background=lane.color, collapsed=collapsed,
                                   visible=True, css_classes=["card"])
        finally:
            self._binding = False
        if self.body.objects:  # another lane's widgets: never shown for this one
            self.body.visible = False
        if not collapsed:
            self._later(lambda: self.lane is lane and not self.card.collapsed and self._build(force=True))

    def hide(self) -> None:
        """No lane here any more (its lane left): out of sight, its widgets kept until it shows another."""
        self._unwatch()
        self.lane = None
        self.card.param.update(visible=False, title="", css_classes=_HIDDEN)

    def _unwatch(self) -> None:
        if self.lane is not None:
            for watcher in self._watchers:
                self.lane.param.unwatch(watcher)
        self._watchers = []

    def _opened(self, event: Any) -> None:
        if not event.new and not self._binding and self.lane is not None:
            self._build()

    def _build(self, force: bool = False) -> None:
        if self.body.objects and self.body.visible and not force:
            return
        if self.wrappers is None:  # one per lane shown: its widgets are bound to the lane's wrappers
            self.wrappers = WrapperControls(self.lane, self.session.is_network)
        else:
            self.wrappers.show()
        self.body.objects = [pn.Param(self.lane.hyperparameters, widgets=widget_specs(self.lane),
                                      show_name=False, sizing_mode="stretch_width", margin=0),
                             self.wrappers.panel]
        self.body.visible = True

    def refresh(self) -> None:
        if self.wrappers is not None and not self.card.collapsed and self.body.visible:
            self.wrappers.refresh(self.session.latest.get(self.lane.id))

    def _switch(self, event: Any) -> None:
        lane = self.lane
        if lane is None or self._binding or event.new == lane.optimizer:
            return
        if not self.session.switch_optimizer(lane, event.new):
            self.switch.value = lane.optimizer  # refused (message shown): show what runs

    def _relabel(self, event: Any) -> None:
        self.card.title = event.new

    def _new_optimizer(self, _: Any) -> None:
        if not self.card.collapsed:
            self._build(force=True)
        else:
            self.body.objects = []
        if self.switch.value != self.lane.optimizer:
            self.switch.value = self.lane.optimizer


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
        self.lanes = pn.Column(sizing_mode="stretch_width", margin=0)
        self.presenter = w.Checkbox(label="presenter view (big type, update rules, one step per click)")
        network = s.param.problem.rx().rx.pipe(lambda v: v in available_networks())
        settings = pn.Card(
            pn.Row(w.FloatInput.from_param(s.param.start_x, label="start x", width=110),
                   w.FloatInput.from_param(s.param.start_y, label="start y",
                                           width=110), visible=network.rx.not_()),
            pn.Row(w.IntInput.from_param(s.param.n_starts, label="starts M", width=110),
                   w.IntInput.from_param(s.param.seed, label="seed", width=110)),
            w.IntInput.from_param(s.param.batch_size, label="batch size (0: full batch)", visible=network),
            w.RadioButtonGroup.from_param(s.param.on_switch, label="on switch"),
            self.presenter,
            title="Race settings", collapsed=True, sizing_mode="stretch_width", margin=(3, 0))
        probe_now = w.Button(label="Probe now", color="primary", width=100)
        probe_now.on_click(lambda _: s.probe_now())
        probes = pn.Card(
            pn.pane.Markdown("preset (Cockpit's: more detail costs more run time)", margin=(0, 5)),
            w.Select.from_param(s.param.probe_preset, name="preset", width=150),  # 5 buttons overflow 330 px
            w.RadioButtonGroup.from_param(s.param.probe_schedule, label="schedule"),
            w.IntInput.from_param(s.param.probe_every, label="every n steps", width=120),
            w.IntSlider.from_param(s.param.probe_top_k, label="top-k eigenvalues"),
            pn.Row(w.Checkbox.from_param(s.param.probe_density, label="density"),
                   w.Checkbox.from_param(s.param.probe_trace, label="trace")),
            probe_now, title="Curvature probes", collapsed=True, sizing_mode="stretch_width", margin=(3, 0))
        self.buttons = pn.Row(self.run_button, self.pause_button, self.step_button, self.reset_button)
        self.panel = pn.Column(
            self.buttons, self.counter, self.error, self.preset_select, self.problem_select,
            w.TextInput.from_param(s.param.expression, label="f(x, y) (custom landscape)",
                                   visible=s.param.problem.rx() == CUSTOM),
            w.FloatSlider.from_param(s.param.speed, label="speed (steps/s)", step=1),
            self.add_select, self.lanes, settings, probes, sizing_mode="stretch_width")

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
        fresh = [LaneCard(self.session, None, collapsed, self._later) for _ in range(MAX_LANES - len(free))]
        plan = [held.get(lane) or (free or fresh).pop(0) for lane in lanes]
        spare = free + fresh
        self._slots = plan + spare[:max(MAX_LANES - len(lanes), 0)]
        self.lanes.objects = [c.card for c in self._slots]
        return plan

    def _later(self, build: Callable[[], None]) -> None:
        """``build`` at the served page's next tick (the click's effect first); now off a loaded page."""
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None or not pn.state.loaded:
            build()
            return

        def later() -> None:
            with pn.io.hold(doc, freeze=True):
                build()
        doc.add_next_tick_callback(later)
