"""The landscape: heatmap and contours of a 2-D problem (a simplex problem on its triangle), its
known minima (a star for the global ones, a triangle for local ones), the start (click or drag
it: the race re-runs from where it lands),
each lane's path (faint) with its last steps bright (a fading trail) and its head, a population's
particles, a ranking lane's candidates to click, and, for a race from many starts, how many
trajectories ended in each basin (numbers on the picture; the global count per lane above it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import panel as pn
from bokeh.events import DoubleTap, Tap
from bokeh.models import (
    Arrow,
    ColorBar,
    ColumnDataSource,
    HoverTool,
    LinearColorMapper,
    PointDrawTool,
    Range1d,
    Segment,
    Title,
    VeeHead,
)
from bokeh.palettes import Viridis256
from bokeh.plotting.contour import contour_data

from app.batch import Batch
from app.figures import Slots, empty, glyph_renderer, make_figure, scale_fonts, wants_log
from app.lanes import Lane
from app.views.base import View
from engine.records import RUNNING
from engine.views import plane_grid, to_plane

GRID = 200
N_LEVELS = 14
SEGMENT_ROLLOVER = 20_000  # per lane
TRAIL = 40
"""Segments per start drawn bright at the head of a path (the rest of the path fades)."""
BASIN = 0.02
"""Trajectories whose ends are closer than this fraction of the view's diagonal share a basin."""
CLICK_HINT = "click the picture, or drag ⊕, to race from there"


def basins(points: np.ndarray, radius: float) -> list[tuple[np.ndarray, int]]:
    """Group end points (``[N, 2]``, non-finite ones left out) greedily within ``radius`` of each
    group's first point: each group's mean and size, largest first."""
    left = points[np.isfinite(points).all(axis=1)]
    out = []
    while len(left):
        near = np.linalg.norm(left - left[0], axis=1) <= radius
        out.append((left[near].mean(axis=0), int(near.sum())))
        left = left[~near]
    return sorted(out, key=lambda g: -g[1])


def _color_values(z: np.ndarray, log: bool) -> tuple[np.ndarray, str]:
    """What the heatmap shows: log10(f - min f + delta) when the values span decades (the valley of
    Rosenbrock is invisible on a linear scale), else f."""
    finite = z[np.isfinite(z)]
    if log and finite.size:
        lo = finite.min()
        delta = max(1e-12, 1e-6 * (finite.max() - lo))
        return np.log10(np.clip(z - lo, 0, None) + delta), "log10(f − min f)"
    return z, "f(x, y)"


def _kind(value: float, best: float) -> str:
    return "global" if value == best else "local"


class LandscapeView(View):
    title = "landscape"
    area = "race"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.image = ColumnDataSource(empty(("image", "x", "y", "dw", "dh")))
        self.minima = ColumnDataSource(empty(("x", "y", "label", "marker")))
        self.start = ColumnDataSource(empty(("x", "y")))
        self.heads = ColumnDataSource(empty(("x", "y", "color", "optimizer", "alpha")))
        self.cloud = ColumnDataSource(empty(("x", "y", "color")))
        self.candidates = ColumnDataSource(empty(("x", "y", "text", "fill")))
        self.updates = ColumnDataSource(empty(("x0", "y0", "x1", "y1", "color")))
        self.mapper = LinearColorMapper(palette=Viridis256, nan_color="#f4f4f4")  # outside a simplex
        fig = make_figure("landscape", 470, tools="pan,wheel_zoom,reset,save", x_label="",
                          active_scroll="wheel_zoom",
                          x_range=Range1d(-1, 1), y_range=Range1d(-1, 1))
        fig.image("image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper)
        self.contours = fig.contour(np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 2)), levels=[0.5],
                                    line_color="white", line_alpha=0.45, line_width=0.8)
        self.paths = Slots(("x0", "y0", "x1", "y1"), with_x=False)
        self.paths.renderer(lambda slot, src, color: glyph_renderer(fig, Segment(
            x0="x0", y0="y0", x1="x1", y1="y1", line_color=color, line_width=1.5, line_alpha=0.35), src))
        self.trails = Slots(("x0", "y0", "x1", "y1"), with_x=False)  # the newest segments, bright
        self.trails.renderer(lambda slot, src, color: glyph_renderer(fig, Segment(
            x0="x0", y0="y0", x1="x1", y1="y1", line_color=color, line_width=2.5, line_alpha=0.95), src))
        self.basins = ColumnDataSource(empty(("x", "y", "text")))
        fig.text("x", "y", text="text", source=self.basins, text_align="left", text_baseline="top",
                 text_font_size="11px", text_font_style="bold", x_offset=6, y_offset=6, padding=2,
                 background_fill_color="white", background_fill_alpha=0.85, border_line_color="black",
                 border_radius=3)
        self.basin_title = Title(text="", text_font_size="11px", text_font_style="normal")
        fig.add_layout(self.basin_title, "above")
        stars = fig.scatter("x", "y", source=self.minima, marker="marker", size=16, fill_color="white",
                            line_color="black")
        start = fig.scatter("x", "y", source=self.start, marker="circle_cross", size=13, fill_alpha=0,
                            line_color="white", line_width=2)
        # Dragging the start moves it (the race re-runs from where it is dropped); dragging elsewhere
        # does nothing, so panning is the toolbar's pan tool. add=False: a click is handled below.
        self.drag = PointDrawTool(renderers=[start], add=False, drag=True, description="drag the start")
        fig.add_tools(self.drag)
        fig.toolbar.active_drag = self.drag
        self.start.on_change("data", self._on_start_dragged)
        self._start_from_server = False
        heads = fig.scatter("x", "y", source=self.heads, size=9, fill_color="color", line_color="white",
                            fill_alpha="alpha", line_alpha="alpha")
        fig.scatter("x", "y", source=self.cloud, size=5, fill_color="color", line_color="black",
                    line_alpha=0.4, fill_alpha=0.55)
        fig.scatter("x", "y", source=self.candidates, size=22, fill_color="fill", line_color="black",
                    line_width=2)
        fig.text("x", "y", text="text", source=self.candidates, text_align="center", text_baseline="middle",
                 text_font_style="bold", text_color="black")
        fig.add_layout(Arrow(end=VeeHead(size=14, fill_color="white", line_color="black"),
                             source=self.updates, x_start="x0", y_start="y0", x_end="x1", y_end="y1",
                             line_color="color", line_width=4))
        fig.add_tools(HoverTool(renderers=[heads], tooltips=[("", "@optimizer"), ("x", "@x{0.0000}"),
                                                             ("y", "@y{0.0000}")]),
                      HoverTool(renderers=[stars], tooltips=[("", "@label")]))
        fig.add_layout(ColorBar(color_mapper=self.mapper, width=10, title=""), "right")
        for event in (Tap, DoubleTap):  # two quick clicks are a DoubleTap: both are clicks here
            fig.on_event(event, lambda ev: self._on_tap_event(float(ev.x), float(ev.y)))
        self.figure = fig
        self.project = lambda p: p[..., :2]
        self.min_move = 0.0
        self._drawn: dict[int, np.ndarray] = {}  # lane -> [M, 2] last position streamed
        self._seen: dict[int, set[tuple[int, int, int, int]]] = {}  # lane -> its path's segments, in cells
        self.points_drawn = 0
        self.presenting = False
        self._title: tuple[str, ...] = ("",)  # the problem, then what each mark on the picture means
        self._click = ""  # how to move the start (2-D problems)
        self._before: dict[int, Any] = {}  # presenter: each lane's previous record
        self._shown: tuple = ()  # the problem the picture shows (a new start keeps it)
        self.prompt = pn.pane.Alert("", alert_type="warning", visible=False, margin=(0, 0),
                                    sizing_mode="stretch_width")
        self.undo = pn.widgets.Button(label="undo last rank", width=130, visible=False)
        self.undo.on_click(lambda _: self._undo())
        # what the marks mean and how to move the start, under the picture in HTML (it wraps): in the
        # canvas title it ran past the figure's edge at 1024 px
        self.hint = pn.pane.HTML("", margin=(0, 10), styles={"font-size": "0.85em"}, visible=False)
        self.panel = pn.Column(pn.Row(self.prompt, self.undo, sizing_mode="stretch_width"),
                               pn.pane.Bokeh(fig, sizing_mode="stretch_width"), self.hint,
                               sizing_mode="stretch_width")

    def applies(self) -> bool:
        return self.session.is_drawn

    def set_problem(self) -> None:
        self.clear()
        p = self.session.problem_obj
        if not self.applies():
            return
        self.project = to_plane(p)
        self._show_start()
        key = (p.name, getattr(p, "params", None), getattr(p, "latex", None))
        if key == self._shown:  # the same picture (a new start or seed): nothing to redraw
            return
        self._shown = key
        xs, ys, z, b = plane_grid(p, GRID)
        shown, label = _color_values(z, wants_log(p, z))
        finite = shown[np.isfinite(shown)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self.mapper.update(low=lo, high=hi if hi > lo else lo + 1)
        self.figure.right[0].title = label
        self.image.data = dict(image=[shown], x=[b.low[0]], y=[b.low[1]], dw=[b.high[0] - b.low[0]],
                               dh=[b.high[1] - b.low[1]])
        xx, yy = np.meshgrid(xs, ys)
        levels = np.linspace(lo, hi, N_LEVELS + 2)[1:-1] if hi > lo else [lo]
        self.contours.set_data(contour_data(xx, yy, np.where(np.isfinite(shown), shown, hi), levels=levels,
                                           want_fill=False))
        best = min((m.value for m in p.minima), default=0.0)
        at = self.project(np.array([m.x for m in p.minima]).reshape(-1, p.dim))
        self.minima.data = dict(x=at[:, 0].tolist(), y=at[:, 1].tolist(),
                                label=[f"{_kind(m.value, best)} minimum, f = {m.value:.6g}"
                                       for m in p.minima],
                                marker=["star" if m.value == best else "triangle" for m in p.minima])
        self.figure.x_range.update(start=b.low[0], end=b.high[0])
        self.figure.y_range.update(start=b.low[1], end=b.high[1])
        self.min_move = 0.002 * float(np.hypot(b.high[0] - b.low[0], b.high[1] - b.low[1]))
        title = getattr(p, "title", p.name)
        keys = {"star": "☆ global minimum", "triangle": "△ local minimum"}  # those on the picture
        shown = [text for marker, text in keys.items() if marker in self.minima.data["marker"]]
        self._title = (title, *shown, "⊕ start")
        self._click = CLICK_HINT if p.dim == 2 else ""
        self._show_title()

    def _show_title(self) -> None:
        """The problem as the title; what the marks mean (and, in 2-D, how to move the start) in a
        line under the picture, which wraps. At a projector's font the title holds the problem and
        each mark's meaning, one line each (in one line they ran past the figure's edge at 1024 px)."""
        title, *marks = self._title
        self.figure.title.text = "\n".join([title, *marks]) if self.presenting else title
        self.hint.object = ": ".join(part for part in (" · ".join(marks), self._click) if part)
        self.hint.visible = bool(marks) and not self.presenting

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        self.paths.show(lanes)  # a lane that left takes its path with it
        self.trails.show(lanes)
        ids = {lane.id for lane in lanes}
        self._drawn = {k: v for k, v in self._drawn.items() if k in ids}
        self._seen = {k: v for k, v in self._seen.items() if k in ids}
        self._heads()

    def consume(self, batch: Batch) -> None:
        if not self.applies():
            return
        for lane_id, recs in batch.records.items():
            slot = self.paths.slot_of(lane_id)
            if slot is None or recs[0].position is None:
                continue
            seg = self._segments(lane_id, recs)
            if seg["x0"]:
                rows = len(recs[-1].position) if recs[-1].position is not None else 1
                self.trails.sources[slot].stream(seg, rollover=TRAIL * rows)
                path = self.paths.sources[slot]
                if len(path.data["x0"]) + len(seg["x0"]) > SEGMENT_ROLLOVER:  # its oldest segments go:
                    self._seen.pop(lane_id, None)  # a cell they held may be drawn again
                seg = self._unseen(lane_id, seg)
                if seg["x0"]:
                    path.stream(seg, rollover=SEGMENT_ROLLOVER)
                    self.points_drawn += len(seg["x0"])
        if batch.records:
            self._heads()
            self._particles()
            if self.presenting:
                self.updates.data = self._last_updates(batch)
        if self.session.ranking.poll(self.session):
            self._show_ranking()

    def _segments(self, lane_id: int, recs: list) -> dict[str, list]:
        """Segments from the last drawn point to each record that moved a visible amount (1,000 tiny
        Adam steps near a minimum cost the browser nothing); a restart does not join the old path."""
        seg: dict[str, list] = {k: [] for k in ("x0", "y0", "x1", "y1")}
        last = self._drawn.get(lane_id)
        for r in recs:
            pos = self.project(r.position)
            if last is None or last.shape != pos.shape or r.step == 0:
                last = pos.copy()
                continue
            ok = np.isfinite(pos).all(axis=1) & np.isfinite(last).all(axis=1)
            moved = ok & (np.linalg.norm(pos - last, axis=1) >= self.min_move)
            for i in np.flatnonzero(moved):
                for key, v in zip(("x0", "y0", "x1", "y1"), (last[i, 0], last[i, 1], pos[i, 0], pos[i, 1]),
                                  strict=True):
                    seg[key].append(float(v))
                last[i] = pos[i]
        self._drawn[lane_id] = last
        return seg

    def _unseen(self, lane_id: int, seg: dict[str, list]) -> dict[str, list]:
        """The segments of ``seg`` whose ends, on a grid of ``min_move`` (about a pixel), the lane's
        path does not hold yet (either way round). A lane that bounces about a minimum (RMSprop on
        Rosenbrock) moved a visible amount at every step and drew 19,936 segments over the same few
        pixels in 20,000 steps, all repainted with the picture; now 333. Its trail and head still
        show each step."""
        if self.min_move <= 0:
            return seg
        seen = self._seen.setdefault(lane_id, set())
        cells = np.floor(np.array([seg["x0"], seg["y0"], seg["x1"], seg["y1"]]).T / self.min_move)
        keep = []
        for i, (a, b, c, d) in enumerate(cells.astype(np.int64).tolist()):
            key = (a, b, c, d) if (a, b) <= (c, d) else (c, d, a, b)
            if key not in seen:
                seen.add(key)
                keep.append(i)
        if len(keep) == len(cells):
            return seg
        return {k: [v[i] for i in keep] for k, v in seg.items()}

    def _heads(self) -> None:
        data: dict[str, list] = {k: [] for k in ("x", "y", "color", "optimizer", "alpha")}
        for lane in self.session.lanes:
            r = self.session.latest.get(lane.id)
            if r is None or r.position is None:
                continue
            for i, p in enumerate(self.project(r.position)):
                if np.isfinite(p[:2]).all():
                    for key, v in (("x", float(p[0])), ("y", float(p[1])), ("color", lane.color),
                                   ("optimizer", lane.label), ("alpha",
                                                               1.0 if r.status[i] == RUNNING else 0.35)):
                        data[key].append(v)
        if data != self.heads.data:
            self.heads.data = data

    def _particles(self) -> None:
        """The first start's particle cloud of every population lane (CBO), or nothing."""
        data: dict[str, list] = {"x": [], "y": [], "color": []}
        run = self.session.worker.run
        for lane in self.session.lanes:
            engine_lane = run.lanes.get(lane.engine_id)
            particles = getattr(engine_lane.optimizers[0], "particles", None) if engine_lane else None
            if particles is None:
                continue
            drawn = self.project(particles().cpu().numpy())
            data["x"] += drawn[:, 0].tolist()
            data["y"] += drawn[:, 1].tolist()
            data["color"] += [lane.color] * len(drawn)
        if data["x"] or self.cloud.data["x"]:
            self.cloud.data = data

    def _last_updates(self, batch: Batch) -> dict[str, list]:
        """Each start's latest step as an arrow from x_{t-1} to x_t (the presenter view)."""
        data: dict[str, list] = {"x0": [], "y0": [], "x1": [], "y1": [], "color": []}
        for lane in self.session.lanes:
            recs = batch.records.get(lane.id, [])
            if len(recs) < 2 and lane.id in self._before:
                recs = [self._before[lane.id], *recs]
            if recs:
                self._before[lane.id] = recs[-1]
            if len(recs) < 2 or recs[-1].position is None:
                continue
            for a, b in zip(self.project(recs[-2].position), self.project(recs[-1].position), strict=True):
                if np.isfinite(a).all() and np.isfinite(b).all() and not np.array_equal(a, b):
                    for key, v in zip(("x0", "y0", "x1", "y1"), (a[0], a[1], b[0], b[1]), strict=True):
                        data[key].append(float(v))
                    data["color"].append(lane.color)
        return data

    # -- clicks: the start, or a ranking ----------------------------------------------------------
    def _on_tap_event(self, x: float, y: float) -> None:
        """A click on the landscape, from Bokeh. Handled on the next tick, held like the pump's
        changes, so that the two reach the page by one route, in order (a click's new candidate
        labels were seen overtaken by a pump's older ones when sent by Bokeh's own route)."""
        doc = self.figure.document
        if doc is None or doc.session_context is None:
            self.tap(x, y)
            return

        def later() -> None:
            with pn.io.hold(doc):
                self.tap(x, y)
        doc.add_next_tick_callback(later)

    def _show_start(self) -> None:
        start = self.project(self.session.worker.run.starts[0].cpu().numpy())
        self._start_from_server = True  # this change is ours, not a drag
        try:
            self.start.data = dict(x=[float(start[0])], y=[float(start[1])])
        finally:
            self._start_from_server = False

    def _on_start_dragged(self, _attr: str, old: dict, new: dict) -> None:
        """The browser moved the start marker (the drag tool): a click where it was dropped."""
        if self._start_from_server or not len(new.get("x", ())):
            return
        x, y = float(new["x"][0]), float(new["y"][0])
        if len(old.get("x", ())) and (x, y) == (float(old["x"][0]), float(old["y"][0])):
            return
        if self.session.ranking.waiting is not None:  # a drag is never a ranking click
            self._show_start()
            return
        self._on_tap_event(x, y)

    def tap(self, x: float, y: float) -> None:
        """A click ranks the nearest candidate while a person is the oracle, else moves the start."""
        s = self.session
        if s.ranking.waiting is not None:
            i = s.ranking.nearest(self.project, x, y)
            if i is not None:
                self.notify(s.ranking.rank(s, i))
                self._show_ranking()
            return
        if s.problem_obj.dim != 2:
            self.notify(f"{s.problem_obj.name} starts from its own start point (set random starts with M)")
            self._show_start()  # a dragged marker goes back where the race starts
            return
        s.param.update(start_x=round(x, 4), start_y=round(y, 4))

    def _undo(self) -> None:
        self.session.ranking.undo()
        self._show_ranking()

    def _show_ranking(self) -> None:
        ranking = self.session.ranking
        points = ranking.points(self.project)
        if points is None:
            self.prompt.visible = self.undo.visible = False
            if self.candidates.data["x"]:
                self.candidates.data = empty(("x", "y", "text", "fill"))
            return
        place = {i: r + 1 for r, i in enumerate(ranking.ranked)}
        self.candidates.data = dict(
            x=[float(p[0]) for p in points], y=[float(p[1]) for p in points],
            text=[str(place[i]) if i in place else "?" for i in range(len(points))],
            fill=["#ffd54f" if i in place else "white" for i in range(len(points))])
        lane, m = ranking.waiting[0], len(points)
        self.prompt.object = (f"**{lane.label} is waiting for you**: click its {m} white candidates from "
                              f"best (lowest f) to worst; ranked ones turn yellow. Ranked "
                              f"{len(ranking.ranked)} of {m}.")
        self.prompt.visible = self.undo.visible = True

    def refresh(self) -> None:
        if self.applies():
            self._show_basins()

    def _show_basins(self) -> None:
        """A race from many starts: trajectories per basin (numbers beside their ends) and, per lane,
        how many of its starts are at a global minimum (the line above the picture)."""
        s = self.session
        p = s.problem_obj
        ends = {lane.label: self.project(s.latest[lane.id].position) for lane in s.lanes
                if lane.id in s.latest and s.latest[lane.id].position is not None}
        if s.n_starts < 2 or not ends:
            if self.basins.data["x"] or self.basin_title.text:
                self.basins.data, self.basin_title.text = empty(("x", "y", "text")), ""
            return
        x, y = self.figure.x_range, self.figure.y_range
        radius = BASIN * float(np.hypot(x.end - x.start, y.end - y.start))
        groups = basins(np.concatenate(list(ends.values()))[:, :2], radius)
        data = dict(x=[float(c[0]) for c, _ in groups], y=[float(c[1]) for c, _ in groups],
                    text=[str(n) for _, n in groups])
        if data != self.basins.data:
            self.basins.data = data
        best = min((m.value for m in p.minima), default=None)
        glob = self.project(np.array([m.x for m in p.minima if m.value == best]).reshape(-1, p.dim)) \
            if best is not None else np.empty((0, 2))
        parts = []
        for label, pts in ends.items():
            at = (np.linalg.norm(pts[:, None, :2] - glob[None, :, :2], axis=2) <= radius).any(axis=1) \
                if len(glob) else np.zeros(len(pts), bool)
            parts.append(f"{label} {int(at.sum())}/{len(pts)}")
        text = (f"at the global minimum ☆: {' · '.join(parts)}   ({len(groups)} basins reached; "
                "numbers: trajectories ending in each)") if len(glob) else \
            f"{len(groups)} end points (numbers: trajectories ending at each)"
        if text != self.basin_title.text:
            self.basin_title.text = text

    def clear(self) -> None:
        self.paths.clear()
        self.trails.clear()
        self._drawn.clear()
        self._seen.clear()
        self._before = {}
        self.points_drawn = 0
        for src in (self.heads, self.cloud, self.updates, self.basins):
            if next(iter(src.data.values()), None):
                src.data = empty(src.data)

    def present(self, big: bool) -> None:
        self.presenting = big
        scale_fonts(self.figure, big)
        self._show_title()
        if not big:
            self.updates.data = empty(("x0", "y0", "x1", "y1", "color"))

