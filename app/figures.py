"""Bokeh figures fed by :class:`app.streams.RaceStreams`; built once, updated in place."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from bokeh.events import DoubleTap, Tap
from bokeh.models import (
    Arrow,
    BasicTicker,
    BasicTickFormatter,
    ColorBar,
    ColumnDataSource,
    GlyphRenderer,
    HoverTool,
    Legend,
    LinearColorMapper,
    LinearScale,
    LogScale,
    LogTicker,
    LogTickFormatter,
    Range1d,
    VeeHead,
)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from bokeh.plotting.contour import contour_data

from app.streams import X_AXES, RaceStreams, lane_color
from engine.problem import Problem
from engine.views import plane_grid, to_plane

GRID = 200
N_LEVELS = 14
FONTS = {False: ("13px", "11px", "12px"), True: ("24px", "18px", "18px")}
"""(title, ticks, labels) font sizes: normal and presenter (legible from the back of a room)."""


def scale_fonts(fig: figure, big: bool) -> None:
    """Switch a figure between normal and presenter type sizes."""
    title, ticks, labels = FONTS[big]
    fig.title.text_font_size = title
    for axis in (*fig.xaxis, *fig.yaxis):
        axis.major_label_text_font_size = ticks
        axis.axis_label_text_font_size = labels
    for legend in fig.legend:
        legend.label_text_font_size = labels


def lane_legend(fig: figure, label: str, color: str, follow: list[GlyphRenderer] | tuple = (),
                **line: object) -> GlyphRenderer:
    """A legend entry for streamed renderers, drawn by a stand-in line that holds no data.

    Why not ``legend_label`` on the streamed renderer itself: BokehJS's Legend listens, recursively,
    to every model its items reference, their data sources included, and rebuilds all its entries
    (a canvas each) on every change. With 8 lanes streaming at 20 Hz the loss and gradient legends
    were rebuilt ~300 times a second, which kept Chromium 10 s behind the race. The stand-in's
    source never changes. Hiding it (``click_policy="hide"``) hides ``follow`` on the server, which
    works under ``panel serve`` and in a notebook alike.
    """
    # one NaN point: it draws nothing, but BokehJS draws no legend sample for an empty source
    stand_in = fig.line([np.nan], [np.nan], line_color=color, legend_label=label, **line)

    def hide_with_it(attr: str, old: bool, new: bool) -> None:
        for renderer in follow:
            renderer.visible = new

    stand_in.on_change("visible", hide_with_it)
    return stand_in


def drop_renderers(fig: figure, renderers: Iterable[GlyphRenderer]) -> None:
    """Take ``renderers`` off ``fig``, with the legend entries that point at them (others stay)."""
    gone = set(map(id, renderers))
    fig.renderers = [r for r in fig.renderers if id(r) not in gone]
    for legend in fig.legend:
        legend.items = [item for item in legend.items if not gone & set(map(id, item.renderers))]


def lane_legend_box(fig: figure, location: str) -> None:
    """Give ``fig`` its (empty, hence hidden) legend now, for :func:`lane_legend` to fill later.

    Why now: a Legend added to a plot inside a held batch of changes (lanes are drawn in one
    message, see ``Explorer._one_message``) made BokehJS throw "cannot find a view for Legend".
    """
    fig.add_layout(Legend(location=location, click_policy="hide", background_fill_alpha=0.7))


def _color_values(z: np.ndarray, log: bool) -> tuple[np.ndarray, str]:
    """What the heatmap shows: :math:`\\log_{10}(f - \\min f + \\delta)` when the values span
    decades (the valley of Rosenbrock is invisible on a linear scale), else :math:`f`."""
    finite = z[np.isfinite(z)]
    if log and finite.size:
        lo = finite.min()
        delta = max(1e-12, 1e-6 * (finite.max() - lo))
        return np.log10(np.clip(z - lo, 0, None) + delta), "log10(f - min f)"
    return z, "f(x, y)"


def wants_log(problem: Problem, z: np.ndarray) -> bool:
    hint = getattr(problem, "log_scale", None)
    if hint is not None:
        return bool(hint)
    finite = z[np.isfinite(z)]
    spread = finite.max() - finite.min() if finite.size else 0.0
    return bool(spread > 0 and spread / (np.median(np.abs(finite - finite.min())) + 1e-12) > 1e3)


class LandscapeView:
    """Heatmap + contours of a 2-D problem, known minima, live trajectories; tap sets the start."""

    def __init__(self, streams: RaceStreams, on_tap: Callable[[float, float], None]) -> None:
        self.image = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.minima = ColumnDataSource(dict(x=[], y=[], label=[]))
        self.start = ColumnDataSource(dict(x=[], y=[]))
        self.mapper = LinearColorMapper(palette=Viridis256, nan_color="#f4f4f4")  # outside a simplex
        fig = figure(height=520, sizing_mode="stretch_width", tools="pan,wheel_zoom,reset,save",
                     active_scroll="wheel_zoom", x_range=Range1d(-1, 1), y_range=Range1d(-1, 1),
                     title="landscape", toolbar_location="above")
        fig.image("image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper)
        self.contours = fig.contour(np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 2)), levels=[0.5],
                                    line_color="white", line_alpha=0.45, line_width=0.8)
        fig.scatter("x", "y", source=self.minima, marker="star", size=16, fill_color="white",
                    line_color="black", legend_label="known minima")
        fig.scatter("x", "y", source=self.start, marker="circle_cross", size=13, fill_alpha=0,
                    line_color="white", line_width=2, legend_label="start (click to move)")
        fig.segment("x0", "y0", "x1", "y1", source=streams.segments, line_color="color", line_width=2,
                    line_alpha=0.9)  # one source for every lane: its legend entries are stand-ins
        self._legend: dict[int, GlyphRenderer] = {}
        heads = fig.scatter("x", "y", source=streams.heads, size=9, fill_color="color", line_color="white",
                            fill_alpha="alpha", line_alpha="alpha")
        # a population method's particles (CBO), drawn as a cloud around its consensus point
        self.cloud = ColumnDataSource(dict(x=[], y=[], color=[]))
        fig.scatter("x", "y", source=self.cloud, size=5, fill_color="color", line_color="black",
                    line_alpha=0.4, fill_alpha=0.55)
        # a ranking optimizer waiting for a person: its candidates, numbered as they are ranked
        self.candidates = ColumnDataSource(dict(x=[], y=[], text=[], fill=[]))
        fig.scatter("x", "y", source=self.candidates, size=22, fill_color="fill", line_color="black",
                    line_width=2)
        fig.text("x", "y", text="text", source=self.candidates, text_align="center", text_baseline="middle",
                 text_font_style="bold", text_color="black")
        # presenter view: each start's last update as an arrow
        self.updates = ColumnDataSource(dict(x0=[], y0=[], x1=[], y1=[], color=[]))
        fig.add_layout(Arrow(end=VeeHead(size=14, fill_color="white", line_color="black"),
                             source=self.updates, x_start="x0", y_start="y0", x_end="x1", y_end="y1",
                             line_color="color", line_width=4))
        fig.add_tools(HoverTool(renderers=[heads], tooltips=[("optimizer", "@optimizer"),
                                                             ("x", "@x{0.0000}"), ("y", "@y{0.0000}")]))
        fig.add_layout(ColorBar(color_mapper=self.mapper, width=10, title=""), "right")
        fig.legend.location = "top_left"
        fig.legend.background_fill_alpha = 0.75
        # two quick clicks are a DoubleTap, not two Taps: both are clicks here (ranking candidates)
        for event in (Tap, DoubleTap):
            fig.on_event(event, lambda ev: on_tap(float(ev.x), float(ev.y)))
        self.figure = fig

    def set_problem(self, problem: Problem) -> None:
        xs, ys, z, b = plane_grid(problem, GRID)
        self.plane_bounds = b
        shown, label = _color_values(z, wants_log(problem, z))
        finite = shown[np.isfinite(shown)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self.mapper.update(low=lo, high=hi if hi > lo else lo + 1)
        self.figure.right[0].title = label
        self.image.data = dict(image=[shown], x=[b.low[0]], y=[b.low[1]],
                               dw=[b.high[0] - b.low[0]], dh=[b.high[1] - b.low[1]])
        xx, yy = np.meshgrid(xs, ys)
        levels = np.linspace(lo, hi, N_LEVELS + 2)[1:-1] if hi > lo else [lo]
        self.contours.set_data(contour_data(xx, yy, np.where(np.isfinite(shown), shown, hi), levels=levels,
                                           want_fill=False))
        at = to_plane(problem)(np.array([m.x for m in problem.minima]).reshape(-1, problem.dim))
        self.minima.data = dict(x=at[:, 0].tolist(), y=at[:, 1].tolist(),
                                label=[f"f* = {m.value:.6g}" for m in problem.minima])
        self.figure.x_range.update(start=b.low[0], end=b.high[0])
        self.figure.y_range.update(start=b.low[1], end=b.high[1])
        self.figure.title.text = getattr(problem, "title", problem.name)

    def ensure_lane(self, lane: int, label: str) -> None:
        if lane not in self._legend:
            self._legend[lane] = lane_legend(self.figure, label, lane_color(lane), line_width=2)

    def drop_lanes(self) -> None:
        drop_renderers(self.figure, self._legend.values())
        self._legend.clear()

    def set_start(self, x: float, y: float) -> None:
        self.start.data = dict(x=[x], y=[y])

    def show_candidates(self, points: np.ndarray | None, ranked: list[int]) -> None:
        """Candidate points ``[m, 2]`` (None: none waiting); ranked ones show their rank."""
        if points is None:
            self.candidates.data = dict(x=[], y=[], text=[], fill=[])
            return
        place = {i: r + 1 for r, i in enumerate(ranked)}
        self.candidates.data = dict(
            x=[float(p[0]) for p in points], y=[float(p[1]) for p in points],
            text=[str(place[i]) if i in place else "?" for i in range(len(points))],
            fill=["#ffd54f" if i in place else "white" for i in range(len(points))])


class CurveView:
    """One y quantity (loss or gradient norm) against a switchable x-axis, a line per lane."""

    def __init__(self, streams: RaceStreams, y: str, title: str, log_y: bool = True) -> None:
        self.streams = streams
        self.y = y
        self.x = "step"
        self.figure = figure(height=260, sizing_mode="stretch_width", title=title,
                             y_axis_type="log" if log_y else "linear",
                             tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="above")
        self.figure.xaxis.axis_label = "step"
        self.figure.yaxis.axis_label = title
        self._events = self.figure.vspan(x="step", source=streams.events, line_color="#444",
                                         line_dash="dashed", line_alpha=0.7)
        self.figure.add_tools(HoverTool(renderers=[self._events], tooltips=[("event", "@label")]))
        self._lines: dict[int, GlyphRenderer] = {}
        self._legend: dict[int, GlyphRenderer] = {}
        lane_legend_box(self.figure, "top_right")

    def ensure_lane(self, lane: int, label: str) -> None:
        if lane in self._lines:
            return
        color = lane_color(lane)
        r = self.figure.line(self.x, self.y, source=self.streams.curve(lane), line_color=color, line_width=2)
        self._lines[lane] = r
        self._legend[lane] = lane_legend(self.figure, label, color, [r], line_width=2)

    def drop_lanes(self) -> None:
        """Remove every line (a new run starts with fresh lanes)."""
        drop_renderers(self.figure, [*self._lines.values(), *self._legend.values()])
        self._lines.clear()
        self._legend.clear()

    def set_x(self, axis_label: str) -> None:
        self.x = X_AXES[axis_label]
        for r in self._lines.values():
            r.glyph.x = self.x
        self._events.glyph.x = self.x
        self.figure.xaxis.axis_label = axis_label

    def set_y_label(self, label: str, log: bool) -> None:
        """Relabel, and switch between log and linear y in place (losses can be negative when
        no minimum is known, and a log axis would silently drop them)."""
        fig = self.figure
        fig.yaxis.axis_label = label
        fig.title.text = label
        if log != isinstance(fig.y_scale, LogScale):
            fig.y_scale = LogScale() if log else LinearScale()
            axis = fig.yaxis[0]
            axis.ticker = LogTicker() if log else BasicTicker()
            axis.formatter = LogTickFormatter() if log else BasicTickFormatter()
