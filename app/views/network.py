"""A network's own curves: full-set train/test loss and test/train accuracy (or matrix sensing's
recovery error) per lane, computed on the run's metrics schedule (median over starts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import panel as pn

from app.batch import Batch, axis_columns
from app.figures import Marks, Slots, make_figure, scale_fonts
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
        self.loss_fig.title.text = f"full-set loss: train (solid), test (dashed), {mode} mode"
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
