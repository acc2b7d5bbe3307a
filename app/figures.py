"""Bokeh pieces the views share: one renderer per colour slot made once, change markers with
visible text, log axes with uncrowded ticks, presenter type sizes.

Why slots: BokehJS lays the whole page out again whenever a figure's renderers change (0.1-0.3 s
each on a small machine; a preset switch used to add ~50 of them). Each figure therefore gets its
renderers once, one per colour slot (:data:`app.lanes.PALETTE`), each on its own source; a lane
that joins takes a free slot (its colour for life), one that leaves empties it. Lanes coming,
going or switching change data and visibility, never the renderers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from bokeh.models import (
    BasicTicker,
    BasicTickFormatter,
    ColumnDataSource,
    CustomJSTicker,
    CustomJSTickFormatter,
    DataRange1d,
    Glyph,
    GlyphRenderer,
    HoverTool,
    LabelSet,
    Line,
    LinearScale,
    LogScale,
)
from bokeh.plotting import figure

from app.batch import AXES, Mark
from app.lanes import MAX_LANES, PALETTE

TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
FONTS = {False: ("12px", "10px", "11px", "10px"), True: ("22px", "17px", "17px", "14px")}
"""(title, ticks, labels, change markers) font sizes: normal and presenter (legible from the back of
a room; a marker's text, written up along its line, must fit the presenter's shorter plots: "SGD: lr
0.001 → 0.007" at 14 px is ~160 px)."""
X_COLUMNS = tuple(AXES.values())
FLOOR = 1e-16
"""Log axes cannot show 0: a value below this (a method that reached the minimum exactly) is drawn at
it, so one exact zero does not stretch the axis over 300 decades."""


def make_figure(title: str, height: int, *, log_y: bool = False, x_label: str = "step", y_label: str = "",
                tools: str = TOOLS, **kw: object) -> figure:
    # "auto", not "linear": a FactorRange y (the memory bars) then gets its categorical axis, named
    # bars, where a linear axis numbered them 0 .. 3
    fig = figure(height=height, sizing_mode="stretch_width", title=title, tools=tools,
                 toolbar_location="above", y_axis_type="log" if log_y else "auto", **kw)
    fig.xaxis.axis_label = x_label
    fig.yaxis.axis_label = y_label
    for auto in (fig.x_range, fig.y_range):  # the page fits them to the streamed data; the server
        if isinstance(auto, DataRange1d):  # reads none of their ends: not sent back (~15 a second)
            auto.syncable = False
    fig.toolbar.logo = None
    if log_y:
        quiet_log_ticks(fig)
    fig.min_border_left = 50
    scale_fonts(fig, False)
    return fig


def legend_below(fig: figure) -> None:
    """Move the figure's legend under the plot, in one row: inside, it covered points and whiskers
    (the tuned-vs-default picture), and no corner is safe for every data set."""
    if not fig.legend:
        return
    legend = fig.legend[0]
    fig.center = [r for r in fig.center if r is not legend]  # move it, not copy it
    legend.orientation = "horizontal"
    legend.location = "center"
    # as many columns as fit an instrument column (~400 px: a glyph and ~7 px a character), so 8
    # lanes wrap onto rows instead of running off the figure's right edge
    labels = [str(getattr(item.label, "value", item.label) or "") for item in legend.items]
    widest = 30 + 7 * max((len(t) for t in labels), default=0)
    legend.ncols = max(1, min(len(labels), 400 // widest))
    legend.click_policy = "hide"
    fig.add_layout(legend, "below")


_TICK_LABEL = """
  // two significant digits: 0.2, 0.25, 300 as they are; 1e-16, 2e5 beyond 1e-3 .. 1e4
  const v = Number(tick.toPrecision(2)), a = Math.abs(v);
  return a === 0 || (a >= 1e-3 && a < 1e4) ? String(v) : v.toExponential().replace("e+", "e");
"""


LOG_TICKS_JS = """
  // major ticks of a log axis: decades (every k-th, at most ~6) over more than 3 decades; else the
  // first of 1, 1-2-5, 1-2-3-5, 1..9 x 10^k that puts at least 3 ticks inside the range
  const lo = Math.min(cb_data.start, cb_data.end), hi = Math.max(cb_data.start, cb_data.end);
  if (!(lo > 0) || !isFinite(hi) || !(hi > lo)) return [];
  const k0 = Math.floor(Math.log10(lo)), k1 = Math.ceil(Math.log10(hi));
  const inside = (t) => t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9);
  if (k1 - k0 > 3) {
    const every = Math.ceil((k1 - k0) / 6), out = [];
    for (let k = Math.ceil(k0 / every) * every; k <= k1; k += every) out.push(Number(`1e${k}`));
    return out.filter(inside);
  }
  let out = [];
  for (const mantissas of [[1], [1, 2, 5], [1, 2, 3, 5], [1, 2, 3, 4, 5, 6, 7, 8, 9]]) {
    out = [];
    for (let k = k0; k <= k1; k++)
      for (const m of mantissas) out.push(Number(`${m}e${k}`));
    out = out.filter(inside);
    if (out.length >= 3) return out;
  }
  return out;
"""
LOG_MINOR_TICKS_JS = """
  // every mantissa up to 3 decades; beyond, the decades only: 8 ticks a decade over 5 decades of a
  // 260-px figure were 2 px apart, a black comb on the axis
  const lo = Math.min(cb_data.start, cb_data.end), hi = Math.max(cb_data.start, cb_data.end);
  if (!(lo > 0) || !isFinite(hi) || !(hi > lo)) return [];
  const k0 = Math.floor(Math.log10(lo)), k1 = Math.ceil(Math.log10(hi)), out = [];
  if (k1 - k0 > 30) return out;
  const mantissas = k1 - k0 > 3 ? [1] : [1, 2, 3, 4, 5, 6, 7, 8, 9];
  for (let k = k0; k <= k1; k++)
    for (const m of mantissas) out.push(Number(`${m}e${k}`));
  return out.filter((t) => t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9));
"""


def quiet_log_ticks(fig: figure) -> None:
    """A few labelled ticks on a log y-axis: decades (every k-th) over a wide range; over 3 decades
    or fewer 1, 2, 5 x 10^k (or finer) so that at least three are labelled. BokehJS's own
    log ticker turns linear under 2 decades: a loss from 0.04 to 0.9 was labelled 0.2, 0.4, 0.6,
    0.8 only, the bottom half of the plot unreadable; its log formatter labels powers of ten only."""
    axis = fig.yaxis[0]
    axis.ticker = CustomJSTicker(major_code=LOG_TICKS_JS, minor_code=LOG_MINOR_TICKS_JS)
    axis.formatter = CustomJSTickFormatter(code=_TICK_LABEL)


def set_log_y(fig: figure, log: bool) -> None:
    """Switch a figure's y-axis between log and linear in place (no new renderers)."""
    if log == isinstance(fig.y_scale, LogScale):
        return
    fig.y_scale = LogScale() if log else LinearScale()
    if log:
        quiet_log_ticks(fig)
    else:
        fig.yaxis[0].ticker = BasicTicker(desired_num_ticks=5)
        fig.yaxis[0].formatter = BasicTickFormatter()


def scale_fonts(fig: figure, big: bool) -> None:
    title, ticks, labels, marks = FONTS[big]
    fig.title.text_font_size = title
    for annotation in fig.center:  # change markers' text (:class:`Marks`)
        if isinstance(annotation, LabelSet):
            annotation.text_font_size = marks
    for axis in (*fig.xaxis, *fig.yaxis):
        axis.major_label_text_font_size = ticks
        axis.axis_label_text_font_size = labels
        if isinstance(axis.ticker, BasicTicker):  # big labels, fewer of them: "-2-1.5-1-0.5 0" ran together
            axis.ticker.desired_num_ticks = 4 if big else 6


def glyph_renderer(fig: figure, glyph: Glyph, source: ColumnDataSource, **kw: object) -> GlyphRenderer:
    """``glyph`` drawn from ``source`` on ``fig``, as ``fig.line(...)`` or ``fig.segment(...)`` draws it
    less the two copies of the glyph that Bokeh's plotting API adds to every renderer (a nonselection
    and a muted glyph; "auto" here: BokehJS derives them in the browser if a selection or a mute ever
    needs them, and no slot's data is ever selected or muted). Measured on the default page: 1,026 ->
    914 Bokeh models created, 586 -> 538 in its document (fewer to create, serialize and walk)."""
    renderer = GlyphRenderer(glyph=glyph, data_source=source, **kw)
    fig.renderers.append(renderer)
    return renderer


def empty(columns: Iterable[str]) -> dict[str, list]:
    return {c: [] for c in columns}


class Slots:
    """One source per colour slot, each with ``columns`` (and every x-axis column); renderers are
    added to figures once, per slot, by :meth:`line` (or :meth:`renderer` for other glyphs)."""

    def __init__(self, columns: Sequence[str], with_x: bool = True) -> None:
        self.columns = (*X_COLUMNS, *columns) if with_x else tuple(columns)
        self.sources = [ColumnDataSource(empty(self.columns)) for _ in range(MAX_LANES)]
        self.renderers: list[list[GlyphRenderer]] = [[] for _ in range(MAX_LANES)]
        self.lane: list[int | None] = [None] * MAX_LANES  # the lane id each slot shows

    def line(self, fig: figure, x: str, y: str, **kw: object) -> list[GlyphRenderer]:
        out = []
        for slot, src in enumerate(self.sources):
            r = glyph_renderer(fig, Line(x=x, y=y, line_color=PALETTE[slot], **kw), src, visible=False)
            self.renderers[slot].append(r)
            out.append(r)
        return out

    def renderer(self, make: object) -> list[GlyphRenderer]:
        """``make(slot, source, color) -> renderer`` for every slot."""
        out = []
        for slot, src in enumerate(self.sources):
            r = make(slot, src, PALETTE[slot])  # type: ignore[operator]
            r.visible = False
            self.renderers[slot].append(r)
            out.append(r)
        return out

    def show(self, lanes: Iterable[object]) -> list[int]:
        """Point the slots at ``lanes`` (objects with ``id`` and ``slot``); a slot whose lane changed
        is emptied. Returns the slots that were emptied."""
        wanted = {lane.slot: lane.id for lane in lanes}  # type: ignore[attr-defined]
        emptied = []
        for slot in range(MAX_LANES):
            lane = wanted.get(slot)
            if lane != self.lane[slot]:
                if self.lane[slot] is not None:
                    self.clear_slot(slot)
                    emptied.append(slot)
                self.lane[slot] = lane
            for r in self.renderers[slot]:
                if r.visible != (lane is not None):
                    r.visible = lane is not None
        return emptied

    def slot_of(self, lane_id: int) -> int | None:
        return self.lane.index(lane_id) if lane_id in self.lane else None

    def clear_slot(self, slot: int) -> None:
        if self.sources[slot].data.get(self.columns[0]):
            self.sources[slot].data = empty(self.columns)

    def clear(self) -> None:
        for slot in range(MAX_LANES):
            self.clear_slot(slot)

    def set_x(self, x: str) -> None:
        for rs in self.renderers:
            for r in rs:
                if hasattr(r.glyph, "x"):
                    r.glyph.x = x

    def visible(self) -> list[GlyphRenderer]:
        return [r for slot, rs in enumerate(self.renderers) if self.lane[slot] is not None for r in rs]


MERGE_TICKS = 90
"""Changes of one value closer than this (1.5 s at the default 60 steps/s: a few presses of an arrow
key on a slider) are drawn as one marker at the first, from the first value to the last ("Adam: lr
0.001 → 0.01"; the run's log keeps each): their texts would be written over each other, a pixel or
two apart."""


class Marks:
    """Change markers on a curve figure: a dashed vertical line and its text ("SGD: lr 0.001 →
    0.01"), written up along the line from the bottom of the plot, so it is read without hovering.
    Successive changes of one value within :data:`MERGE_TICKS` ticks share one marker."""

    def __init__(self, fig: figure) -> None:
        self._last: Mark | None = None  # the newest marker drawn (its first value, the latest after)
        self._last_tick = 0  # the tick of the newest change it holds
        self.source = ColumnDataSource(empty((*X_COLUMNS, "label")))
        self.fig = fig
        self.span = fig.vspan(x="step", source=self.source, line_color="#555", line_dash="dashed",
                              line_alpha=0.7)
        # read upwards from just above the x-axis (screen y counts from the frame's bottom): aligned
        # right, the text ran down out of the frame and only its last character showed
        self.labels = LabelSet(x="step", y=4, y_units="screen", text="label", source=self.source,
                               angle=np.pi / 2, text_font_size=FONTS[False][3], text_color="#333",
                               x_offset=-3, text_align="left", background_fill_color="white",
                               background_fill_alpha=0.6)
        fig.add_layout(self.labels)
        fig.add_tools(HoverTool(renderers=[self.span], tooltips=[("", "@label")]))

    def add(self, marks: Sequence[Mark]) -> None:
        rows: list[Mark] = []
        for m in marks:
            last = rows[-1] if rows else self._last
            if last is not None and _continues(last, m, self._last_tick):
                value, prefix, first, _ = last.change
                merged = replace(last, label=f"{prefix} {first} → {m.change[3]}",
                                 change=(value, prefix, first, m.change[3]))
                if rows:
                    rows[-1] = merged
                else:  # already drawn: its text changes
                    self.source.patch({"label": [(len(self.source.data["label"]) - 1, merged.label)]})
                    self._last = merged
            else:
                rows.append(m)
            self._last_tick = m.tick
        if rows:
            data = {c: [m.at[c] for m in rows] for c in X_COLUMNS}
            self.source.stream(dict(data, label=[m.label for m in rows]))
            self._last = rows[-1]

    def set_x(self, x: str) -> None:
        self.span.glyph.x = x
        self.labels.x = x

    def clear(self) -> None:
        self._last = None
        if self.source.data["label"]:
            self.source.data = empty((*X_COLUMNS, "label"))


def _continues(last: Mark, mark: Mark, last_tick: int) -> bool:
    """Whether ``mark`` changes the value ``last`` changed, on the same lane, soon after."""
    return (mark.change is not None and last.change is not None and mark.lane == last.lane
            and mark.change[:2] == last.change[:2] and 0 <= mark.tick - last_tick <= MERGE_TICKS)


def live_range(fig: figure, renderers: list[GlyphRenderer]) -> None:
    """Fit the y-axis to ``renderers`` (the lanes still running) only: a diverged curve is drawn,
    clipped at the frame, but never stretches the axis (all of them when none is live)."""
    y = fig.y_range
    if not isinstance(y, DataRange1d):
        return
    if sorted(r.id for r in y.renderers) != sorted(r.id for r in renderers):
        y.renderers = renderers  # an empty list: every renderer


def wants_log(problem: Any, z: np.ndarray) -> bool:
    """Whether a landscape's colours should be log-spaced: its values span decades."""
    hint = getattr(problem, "log_scale", None)
    if hint is not None:
        return bool(hint)
    finite = z[np.isfinite(z)]
    spread = finite.max() - finite.min() if finite.size else 0.0
    return bool(spread > 0 and spread / (np.median(np.abs(finite - finite.min())) + 1e-12) > 1e3)
