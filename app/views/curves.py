"""Loss and gradient-norm curves, one line per lane (median over its starts), against the chosen
x-axis, with change markers that carry their text and a y-axis fitted to the lanes still running."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import panel as pn
from bokeh.models import HoverTool, Range1d

from app.batch import Batch, axis_columns
from app.figures import FLOOR, Marks, Slots, live_range, make_figure, scale_fonts, set_log_y
from app.lanes import OWN_BATCH, Lane
from app.stream import medians, running, stream_capped
from app.views.base import View, html_escape, swatch
from engine.records import RUNNING, Record
from engine.registry import get_spec


def _union(a: tuple[float, float] | None, b: tuple[float, float]) -> tuple[float, float]:
    return b if a is None else (min(a[0], b[0]), max(a[1], b[1]))


def _display(optimizer: str) -> str:
    try:
        return get_spec(optimizer).display_name
    except ValueError:
        return optimizer


class CurveView(View):
    """One quantity per lane against the x-axis (subclasses say which)."""

    y: ClassVar[str] = "loss"
    height: ClassVar[int] = 250

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.slots = Slots((self.y, "optimizer"))
        self.figure = make_figure(self.title, self.height, log_y=True)
        lines = self.slots.line(self.figure, "step", self.y, line_width=2)
        self.figure.add_tools(HoverTool(renderers=lines, tooltips=[("", "@optimizer"), ("",
                                                                                        f"@{self.y}{{0.000e}}")]))
        self.marks = Marks(self.figure)
        self.figure.toolbar_location = "right"  # a long title (a lane off the axis) never runs under it
        self.f_star: float | None = None
        self._optimizer: dict[int, str] = {}  # lane -> optimizer of its last streamed row
        self._bounds: dict[int, tuple[float, float]] = {}  # lane -> y extent of its running segment
        self._kept: dict[int, tuple[float, float]] = {}  # lane -> extent of segments it left while running
        self._stopped: dict[int, str] = {}  # lane -> the optimizer whose segment stopped (diverged)
        self._floored: set[int] = set()  # lanes with a value under FLOOR, drawn at it (said in the title)
        self._sent: tuple[float, float] | None = None  # the y-axis ends last sent to the page
        self._base_title = self.title
        self.panel = pn.pane.Bokeh(self.figure, sizing_mode="stretch_width")

    def values(self, recs: list[Record]) -> np.ndarray:
        """The plotted value of each record (median over its starts)."""
        return np.maximum(medians(recs, "grad_norm"), FLOOR)

    def set_problem(self) -> None:
        self.clear()

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        self.slots.show(lanes)
        ids = {lane.id for lane in lanes}
        self._optimizer = {k: v for k, v in self._optimizer.items() if k in ids}
        self._bounds = {k: v for k, v in self._bounds.items() if k in ids}
        self._kept = {k: v for k, v in self._kept.items() if k in ids}
        self._stopped = {k: v for k, v in self._stopped.items() if k in ids}
        self._floored &= ids

    def set_x(self, column: str, label: str) -> None:
        self.slots.set_x(column)
        self.marks.set_x(column)
        self.figure.xaxis.axis_label = label

    def consume(self, batch: Batch) -> None:
        for lane_id, recs in batch.records.items():
            slot = self.slots.slot_of(lane_id)
            if slot is None:
                continue
            values = self.values(recs)
            data = axis_columns(recs, self.session.origin)
            data[self.y] = values.tolist()
            data["optimizer"] = [r.optimizer for r in recs]
            if self._optimizer.get(lane_id, recs[0].optimizer) != recs[0].optimizer:
                # a new segment: break the line with a gap row (one stream per source per message)
                data = {k: [v[0], *v] for k, v in data.items()}
                data[self.y][0] = float("nan")
                if lane_id in self._bounds:  # the segment left while running keeps its place on the axis
                    self._kept[lane_id] = _union(self._kept.get(lane_id), self._bounds.pop(lane_id))
            self._optimizer[lane_id] = recs[-1].optimizer
            stream_capped(self.slots.sources[slot], data, "step", self.y)
            self._extend(lane_id, recs, values)
        self.marks.add(batch.marks)

    def _extend(self, lane_id: int, recs: list[Record], values: np.ndarray) -> None:
        """Widen the lane's y extent by its rows that were running: a diverged row (or the blown-up
        segment of a lane that later switched optimizer) never stretches the axis."""
        log = self.figure.y_scale.__class__.__name__ == "LogScale"
        for r, x in zip(recs, values.tolist(), strict=True):
            if not running(r):  # its segment diverged: its run-up is off the axis
                if lane_id not in self._stopped:
                    self._stopped[lane_id] = r.optimizer
                self._bounds.pop(lane_id, None)
                continue
            self._stopped.pop(lane_id, None)
            if log and x <= FLOOR:  # below what a log axis shows: drawn at the floor, and said so
                self._floored.add(lane_id)
            if np.isfinite(x) and (x > 0 or not log):
                self._bounds[lane_id] = _union(self._bounds.get(lane_id), (x, x))

    def y_extent(self) -> tuple[float, float] | None:
        """The y-axis range: the finite, non-diverged data of the lanes shown, padded."""
        ids = {lane.id for lane in self.session.lanes}
        spans = [b for k, b in [*self._bounds.items(), *self._kept.items()] if k in ids]
        if not spans:
            return None
        lo, hi = min(b[0] for b in spans), max(b[1] for b in spans)
        if self.figure.y_scale.__class__.__name__ == "LogScale":  # whole decades: two labelled ticks at least
            lo_dec, hi_dec = 10.0 ** math.floor(math.log10(lo / 1.2)), 10.0 ** math.ceil(math.log10(hi * 1.2))
            return lo_dec / 1.25, hi_dec * 1.25  # the decades' own ticks inside the frame
        pad = 0.05 * (hi - lo) or 0.05 * max(abs(hi), 1.0)
        return lo - pad, hi + pad

    def refresh(self) -> None:
        """Fit the y-axis to the lanes still running, and say which are off the scale."""
        latest = self.session.latest
        live, off = [], []
        for lane in self.session.lanes:
            r = latest.get(lane.id)
            slot = self.slots.slot_of(lane.id)
            if r is None or slot is None:
                continue
            if any(s == RUNNING for s in r.status):
                live += self.slots.renderers[slot]
            else:  # the divergence belongs to the optimizer that diverged, not to the one after it
                who = _display(self._stopped.get(lane.id, r.optimizer))
                off.append(who if who == lane.label else f"{who} (now {lane.label})")
        live_range(self.figure, live)
        extent = self.y_extent()
        if extent is not None and extent != self._sent:
            y = self.figure.y_range
            if isinstance(y, Range1d):
                y.start, y.end = extent
            else:  # the page's DataRange1d recomputes its own ends from the data: a fixed range holds
                self.figure.y_range = Range1d(*extent)
            self._sent = extent
        note = f" · {', '.join(off)} stopped or diverged: axis fits the rest" if off and live else ""
        floored = [lane.label for lane in self.session.lanes if lane.id in self._floored]
        if floored:  # a flat line at 1e-16 is not a method stalling there
            note += f" · {', '.join(floored)} below {FLOOR:.0e}: drawn at it"
        title = self._base_title + note
        if self.figure.title.text != title:
            self.figure.title.text = title

    def clear(self) -> None:
        self.slots.clear()
        self.marks.clear()
        self._optimizer.clear()
        self._bounds.clear()
        self._kept.clear()
        self._stopped.clear()
        self._floored.clear()
        self._sent = None

    def present(self, big: bool) -> None:
        scale_fonts(self.figure, big)


class LossView(CurveView):
    """The loss: suboptimality f - f* on a log axis where f* is known, else f on a linear one. Its
    header is the race's legend: one swatch per lane, in HTML, so it never covers a curve."""

    title = "loss"
    area = "curves"
    y = "loss"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.legend = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 5),
                                   styles={"font-size": "0.9em"})
        self.panel = pn.Column(self.legend, pn.pane.Bokeh(self.figure, sizing_mode="stretch_width"),
                               sizing_mode="stretch_width")

    def values(self, recs: list[Record]) -> np.ndarray:
        v = medians(recs, "loss")
        return v if self.f_star is None else np.where(np.isfinite(v), np.maximum(v - self.f_star, FLOOR), v)

    def set_problem(self) -> None:
        super().set_problem()
        s = self.session
        p = s.problem_obj
        # f - f* on a log axis only where f* bounds f from below: not for a game (its equilibrium is a
        # saddle of f) nor a constrained problem (an unconstrained method goes below f* off the simplex)
        unbounded = getattr(p, "ascent", None) is not None or getattr(p, "geometry", None) is not None
        self.f_star = min(m.value for m in p.minima) if p.minima and not unbounded else None
        if s.is_network:
            label, log = self._network_label(), True
        else:
            known = self.f_star is not None
            label, log = ("f(x) − f*" if known else "f(x)"), known
        label += " · median over starts" if s.n_starts > 1 else ""
        self._base_title = label
        self.figure.title.text = label
        self.figure.yaxis.axis_label = ""
        set_log_y(self.figure, log)

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        super().show_lanes(lanes)
        for lane in lanes:  # a card's batch size changes what the title may say
            if not getattr(lane, "_loss_title_watch", False):
                lane.wrap.param.watch(lambda *_: self._retitle(), "batch")
                lane._loss_title_watch = True
        html = " ".join(f'<span style="white-space:nowrap;margin-right:10px">{swatch(ln.color)}'
                        f"{html_escape(ln.label)}</span>" for ln in lanes)
        if self.legend.object != html:
            self.legend.object = html


    def _network_label(self) -> str:
        """Minibatch only of minibatch curves; a lane's card may set its own batch size."""
        s = self.session
        batch = getattr(s.problem_obj, "batch_size", None)
        if any(lane.wrap.batch != OWN_BATCH for lane in s.lanes):
            return "training loss (each lane's batch size: see its card)"
        return f"minibatch training loss ({batch} samples)" if batch else "training loss (full batch)"

    def _retitle(self) -> None:
        """A lane's batch size changed: the network's loss title again, curves kept."""
        s = self.session
        if s.is_network:
            label = self._network_label() + (" · median over starts" if s.n_starts > 1 else "")
            self._base_title = self.figure.title.text = label


class GradView(CurveView):
    title = "‖∇f‖"
    y = "grad_norm"

    def set_problem(self) -> None:
        super().set_problem()
        median = " · median over starts" if self.session.n_starts > 1 else ""
        self._base_title = f"‖∇f(x)‖{median}"
        self.figure.title.text = self._base_title
