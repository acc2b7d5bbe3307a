"""A network's own curves: full-set train/test loss and test/train accuracy (or matrix sensing's
recovery error) per lane, computed on the run's metrics schedule (median over starts); and what a
network learned (:class:`LearnedView`: the two-moons decision boundary, digits predictions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import panel as pn
import torch
from bokeh.models import ColumnDataSource, LinearColorMapper
from bokeh.palettes import RdBu11

from app.batch import Batch, axis_columns
from app.figures import Marks, Slots, empty, make_figure, scale_fonts
from app.lanes import Lane
from app.views.base import View

METRICS = ("train_loss", "test_loss", "test_accuracy", "train_accuracy", "recovery_error")


class NetworkView(View):
    title = "network"
    area = "race"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.slots = Slots(METRICS)
        self.loss_fig = make_figure("full-set loss: train (solid), test (dashed)", 235, log_y=True)
        self.acc_fig = make_figure("accuracy: test (solid), train (dashed)", 235)
        self.slots.line(self.loss_fig, "step", "train_loss", line_width=2)
        self.slots.line(self.loss_fig, "step", "test_loss", line_width=1.5, line_dash="dashed")
        self.solid = self.slots.line(self.acc_fig, "step", "test_accuracy", line_width=2)
        self.dashed = self.slots.line(self.acc_fig, "step", "train_accuracy", line_width=1.5,
                                      line_dash="dashed")
        self.marks = [Marks(self.loss_fig), Marks(self.acc_fig)]
        self.panel = pn.Column(pn.pane.Bokeh(self.loss_fig, sizing_mode="stretch_width"),
                               pn.pane.Bokeh(self.acc_fig, sizing_mode="stretch_width"),
                               sizing_mode="stretch_width")

    def applies(self) -> bool:
        return self.session.is_network

    def set_problem(self) -> None:
        self.clear()
        if not self.applies():
            return
        p = self.session.problem_obj
        mode = getattr(p, "metrics_mode", "eval")
        # the metrics' mode as the axis label: in the title it ran past the column of a 1024-px page
        self.loss_fig.yaxis.axis_label = f"loss ({mode} mode)"
        sensing = getattr(p, "accuracy", None) is None
        self.acc_fig.title.text = ("recovery error ‖WWᵀ − X*‖ / ‖X*‖" if sensing
                                   else "accuracy: test (solid), train (dashed)")
        for r in self.solid:
            r.glyph.y = "recovery_error" if sensing else "test_accuracy"
        for r in self.dashed:
            r.glyph.line_alpha = 0.0 if sensing else 1.0

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        self.slots.show(lanes)

    def set_x(self, column: str, label: str) -> None:
        self.slots.set_x(column)
        for m, fig in zip(self.marks, (self.loss_fig, self.acc_fig), strict=True):
            m.set_x(column)
            fig.xaxis.axis_label = label

    def consume(self, batch: Batch) -> None:
        if not self.applies():
            return
        for lane_id, recs in batch.records.items():
            slot = self.slots.slot_of(lane_id)
            recs = [r for r in recs if r.metrics]
            if slot is None or not recs:
                continue
            data = axis_columns(recs, self.session.origin)
            for name in METRICS:
                data[name] = [float(np.nanmedian(r.metrics[name])) if name in r.metrics
                              and np.isfinite(r.metrics[name]).any() else float("nan") for r in recs]
            self.slots.sources[slot].stream(data, rollover=20_000)
        for m in self.marks:
            m.add(batch.marks)

    def clear(self) -> None:
        self.slots.clear()
        for m in self.marks:
            m.clear()

    def present(self, big: bool) -> None:
        for fig in (self.loss_fig, self.acc_fig):
            scale_fonts(fig, big)


GRID = 80
"""Decision-boundary image resolution (GRID x GRID points of the data's box)."""
DIGITS_SHOWN = 16


class LearnedView(View):
    """What a network learned: for a 2-D classifier (two moons) its decision boundary, the predicted
    probability of class 1 over the data's box with the training points on it; for digits, test
    images with the predicted label (green right, red wrong). Computed on the worker thread between
    two steps (a step swaps the module's parameters), at most once a second, for one chosen lane."""

    title = "learned"
    EVERY = 3  # refreshes (~3 Hz) between two pictures
    PLANE_HEIGHT = 250
    DIGITS_HEIGHT = 170  # two rows of digits with square pixels: no empty band above and below

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.lane_select = pn.widgets.Select(label="lane", options={}, width=180, margin=(0, 10))
        self.lane_select.param.watch(lambda _: self._ask(), "value")
        self.fig = make_figure("what it learned", self.PLANE_HEIGHT, tools="save", x_label="")
        self.fig.grid.visible = False
        # a unit of x as long as a unit of y on screen, whatever the column's width: square digit
        # pixels and an undistorted plane (the ranges then fit the data themselves: DataRange1d)
        self.fig.match_aspect = True
        self.mapper = LinearColorMapper(palette=RdBu11, low=0.0, high=1.0)  # blue (0) .. red (1)
        self.image = ColumnDataSource(empty(("image", "x", "y", "dw", "dh")))
        self.fig.image("image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper)
        self.points = ColumnDataSource(empty(("x", "y", "color")))
        self.fig.scatter("x", "y", source=self.points, size=5, fill_color="color", line_color="black",
                         line_alpha=0.5)
        self.labels = ColumnDataSource(empty(("x", "y", "text", "color")))
        self.fig.text("x", "y", text="text", source=self.labels, text_color="color", text_font_style="bold",
                      text_align="center", text_baseline="bottom", text_font_size="13px")
        # what the picture shows, in HTML under it: it wraps in a narrow column (a two-line title was
        # cut at 1024 px)
        self.caption = pn.pane.HTML("", sizing_mode="stretch_width", margin=(0, 10),
                                    styles={"font-size": "0.85em"})
        self.panel = pn.Column(self.lane_select, pn.pane.Bokeh(self.fig, sizing_mode="stretch_width"),
                               self.caption, sizing_mode="stretch_width")
        self._future: Any = None
        self._ticks = 0

    def kind(self) -> str | None:
        """"boundary" (a 2-D input classifier), "digits" (8x8 images), or None."""
        p = self.session.problem_obj
        if not self.session.is_network or getattr(p, "accuracy", None) is None:
            return None
        return {2: "boundary", 64: "digits"}.get(int(p.X_train.shape[1]))

    def applies(self) -> bool:
        return self.kind() is not None

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        options = {lane.label: lane.id for lane in lanes}
        if options != self.lane_select.options:
            self.lane_select.options = options
        if self.lane_select.value not in options.values() and options:
            self.lane_select.value = next(iter(options.values()))

    def set_problem(self) -> None:
        self.clear()
        self._future = None

    def clear(self) -> None:
        for src in (self.image, self.points, self.labels):
            if next(iter(src.data.values()), None):
                src.data = empty(src.data)

    def refresh(self) -> None:
        if self._future is not None and self._future.done():
            future, self._future = self._future, None
            if future.exception() is None and future.result() is not None:
                self._draw(*future.result())
        self._ticks += 1
        if self._ticks % self.EVERY == 0:
            self._ask()

    def _ask(self) -> None:
        """Queue the picture's computation on the worker (between two steps); drawn when done."""
        s, kind = self.session, self.kind()
        lane = s.lane(self.lane_select.value) if self.lane_select.value is not None else None
        if kind is None or lane is None or lane.engine_id < 0 or self._future is not None:
            return
        engine_id, label = lane.engine_id, lane.label

        def compute(run: Any) -> tuple | None:
            if engine_id not in run.lanes:
                return None
            theta = torch.as_tensor(run.positions(engine_id)[0])
            return (kind, label, run.tick - s.origin, *learned(run.problem, theta, kind))
        self._future = s.worker.call(compute)

    def _draw(self, kind: str, label: str, step: int, *data: Any) -> None:
        if kind == "boundary":
            prob, box, X, y = data
            (x0, x1), (y0, y1) = box
            self.image.data = dict(image=[prob], x=[x0], y=[y0], dw=[x1 - x0], dh=[y1 - y0])
            self.points.data = dict(x=X[:, 0].tolist(), y=X[:, 1].tolist(),
                                    color=["#b2182b" if c else "#2166ac" for c in y])
            self.labels.data = empty(("x", "y", "text", "color"))
            self.fig.xaxis.visible = self.fig.yaxis.visible = True
            self.fig.height = self.PLANE_HEIGHT
            self.fig.title.text = f"{label}, step {step}: P(class 1)"
            self.caption.object = ("P(class 1) over the plane of the inputs (red 1, blue 0); dots: the "
                                   "training points, coloured by their class.")
            return
        images, predicted, truth = data
        n = len(images)
        self.mapper.update(low=float(images.min()), high=float(images.max()))
        cols = n // 2
        self.image.data = dict(image=list(images), x=[9.0 * (i % cols) for i in range(n)],
                               y=[-10.0 * (i // cols) for i in range(n)], dw=[8.0] * n, dh=[8.0] * n)
        self.points.data = empty(("x", "y", "color"))
        right = predicted == truth
        self.labels.data = dict(x=[9.0 * (i % cols) + 4 for i in range(n)],
                                y=[-10.0 * (i // cols) + 8.1 for i in range(n)],
                                text=[str(int(k)) for k in predicted],
                                color=["#1a7f37" if r else "#d62728" for r in right])
        self.fig.xaxis.visible = self.fig.yaxis.visible = False  # pixel grid coordinates: no meaning
        self.fig.height = self.DIGITS_HEIGHT
        self.fig.title.text = f"{label}, step {step}: {int(right.sum())}/{n} right"
        self.caption.object = (f"The first {n} test digits, each under the label the network predicts "
                               "(green right, red wrong).")


def learned(problem: Any, theta: torch.Tensor, kind: str) -> tuple:
    """The arrays of :class:`LearnedView`'s picture for parameters ``theta`` (on the worker)."""
    with torch.no_grad():
        if kind == "boundary":
            X = problem.X_train.double().numpy()
            lo, hi = X.min(axis=0), X.max(axis=0)
            pad = 0.1 * (hi - lo)
            lo, hi = lo - pad, hi + pad
            gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID))
            grid = torch.as_tensor(np.c_[gx.ravel(), gy.ravel()])
            logits = problem.forward(theta, grid)
            prob = torch.softmax(logits, dim=-1)[:, 1].reshape(GRID, GRID).numpy()
            return prob, ((lo[0], hi[0]), (lo[1], hi[1])), X, problem.y_train.numpy()
        X = problem.X_test[:DIGITS_SHOWN]
        predicted = problem.forward(theta, X).argmax(dim=-1).numpy()
        images = X.double().reshape(-1, 8, 8).flip(1).numpy()  # row 0 at the top of the picture
        return images, predicted, problem.y_test[:DIGITS_SHOWN].numpy()
