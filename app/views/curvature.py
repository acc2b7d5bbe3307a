"""Curvature: each lane's sharpness against its stability threshold (solid vs dashed: 2/η, (2+2μ)/η,
38/η, ...; the threshold moves when the learning rate does), the directional sharpness of its
actual update (dotted; sharpness-only probes skip it, and the key above and a caption say so), the latest
top eigenvalues with their Lanczos residuals, and the spectral density when density probes are on
(shown only once there is one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource

from app.batch import Batch, axis_columns
from app.figures import Marks, Slots, make_figure, scale_fonts
from app.lanes import Lane
from app.views.base import View, html_escape
from engine.curvature import density_on_grid
from engine.records import Record

TITLE = "sharpness (solid), threshold (dashed)"
"""The canvas title (it goes with a saved PNG): <= 40 characters, which fit the instrument column at
1024 px; what the dotted line is goes in :data:`KEY` above the figure, in HTML, which wraps."""
KEY = "dotted: the sharpness along the update, u⊤Hu/|u|²"
KEY_OFF = "along the update: not measured (see below)"
NOT_MEASURED = ("<p><b>Not measured: the directional sharpness along the update</b> (u⊤Hu/|u|², drawn "
                "dotted when measured). These probes measure λmax (with its residual) and each lane's "
                "stability threshold only: the “sharpness” preset, the cheapest; the economy preset adds "
                "it (one Hessian-vector product a probe).</p>")


class CurvatureView(View):
    title = "curvature"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.slots = Slots(("sharpness", "threshold", "lambda_max", "directional"))
        fig = make_figure(TITLE, 230, log_y=True, y_label="λmax (Adam-type: of P⁻¹H)")
        self.slots.line(fig, "step", "sharpness", line_width=2)
        self.slots.line(fig, "step", "threshold", line_width=1.5, line_dash="dashed")
        self.slots.line(fig, "step", "directional", line_width=1, line_dash="dotted")
        self.marks = Marks(fig)
        self.sharpness_fig = fig
        self.density = ColumnDataSource(dict(x=[], y=[]))
        self.exact = ColumnDataSource(dict(x=[], top=[], bottom=[]))
        dfig = make_figure("spectral density", 230, x_label="eigenvalue")
        dfig.line("x", "y", source=self.density, line_width=2)
        dfig.segment("x", "bottom", "x", "top", source=self.exact, line_color="#d62728", line_alpha=0.6)
        self.density_fig = dfig
        self.density_lane = pn.widgets.Select(label="density of", options={}, width=150)
        self.density_lane.param.watch(lambda _: self._draw_density(), "value")
        self.log_density = pn.widgets.Checkbox(label="log-scale density", value=True)
        self.log_density.param.watch(lambda _: self._draw_density(), "value")
        self.density_box = pn.Column(pn.pane.Bokeh(dfig, sizing_mode="stretch_width"),
                                     pn.Row(self.density_lane, self.log_density), visible=False,
                                     sizing_mode="stretch_width")
        self.summary = pn.pane.HTML("", sizing_mode="stretch_width", styles={"font-size": "0.85em"})
        self.latest: dict[int, Record] = {}  # lane -> its newest probed record
        self.key = pn.pane.HTML(KEY, sizing_mode="stretch_width", margin=(0, 10),
                                styles={"font-size": "0.85em"})
        self.panel = pn.Column(self.key, pn.Row(pn.pane.Bokeh(fig, sizing_mode="stretch_width"),
                                                self.density_box, sizing_mode="stretch_width"),
                               self.summary, sizing_mode="stretch_width")

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        self.slots.show(lanes)
        ids = {lane.id for lane in lanes}
        self.latest = {k: v for k, v in self.latest.items() if k in ids}
        options = {lane.label: lane.id for lane in lanes}
        if options != self.density_lane.options:
            self.density_lane.options = options
        if self.density_lane.value not in options.values() and options:
            self.density_lane.value = next(iter(options.values()))

    def set_x(self, column: str, label: str) -> None:
        self.slots.set_x(column)
        self.marks.set_x(column)
        self.sharpness_fig.xaxis.axis_label = label

    def consume(self, batch: Batch) -> None:
        nan = float("nan")
        for lane_id, recs in batch.records.items():
            slot = self.slots.slot_of(lane_id)
            recs = [r for r in recs if r.curvature is not None]
            if slot is None or not recs:
                continue
            data = axis_columns(recs, self.session.origin)
            data.update(sharpness=[r.curvature.sharpness for r in recs],
                        threshold=[r.curvature.threshold.value if r.curvature.threshold else nan
                                   for r in recs],
                        lambda_max=[r.curvature.lambda_max for r in recs],
                        directional=[r.curvature.directional for r in recs])
            self.slots.sources[slot].stream(data, rollover=20_000)
            self.latest[lane_id] = recs[-1]
        self.marks.add(batch.marks)

    def refresh(self) -> None:
        labels = {lane.id: lane.label for lane in self.session.lanes}
        rows = []
        for lane_id, rec in self.latest.items():
            p = rec.curvature
            top = ", ".join(f"{v:.5g}" for v in p.top_k)
            exact = "—" if p.exact is None else ", ".join(f"{v:.5g}" for v in p.exact[::-1][: len(p.top_k)])
            ratio = f"{p.sharpness:.4g} / " + (f"{p.threshold.value:.4g}" if p.threshold else "—")
            along = ("not measured" if not p.measures_directional
                     else f"{p.directional:.4g}" if np.isfinite(p.directional) else "—")
            rows.append(f"<tr><td>{html_escape(labels.get(lane_id, rec.optimizer))}</td><td>{p.step}</td>"
                        f"<td>{top}</td><td>{exact}</td><td>{p.lambda_max_residual:.1e}</td><td>{ratio}</td>"
                        f"<td>{along}</td></tr>")
        off = bool(self.latest) and not any(r.curvature.measures_directional for r in self.latest.values())
        key = KEY_OFF if off else KEY
        if self.key.object != key:
            self.key.object = key
        if rows:
            run = self.session.worker.run
            # a table that scrolls sideways where the column is narrower than it (1024 px): never cut
            text = ("<table style='display: block; max-width: 100%; overflow-x: auto'>"
                    "<tr><th>optimizer</th><th>step</th><th>top eigenvalues (Lanczos)</th><th>exact</th>"
                    "<th>residual</th>"
                    "<th>sharpness / threshold</th><th>along the update</th></tr>" + "".join(rows)
                    + f"</table><p>Probes: {run.probe_overhead:.1%} of the run's compute time "
                    "(measured). Residuals are ‖Hy − θy‖ of each Ritz pair; thresholds are for each "
                    "lane's current hyperparameters.</p>" + (NOT_MEASURED if off else ""))
        else:
            text = ("<p><i>No curvature probe yet: they run on the schedule set under “Curvature probes”."
                    "</i></p>")
        if text != self.summary.object:
            self.summary.object = text
        self._draw_density()

    def _draw_density(self) -> None:
        rec = self.latest.get(self.density_lane.value)
        p = rec.curvature if rec is not None else None
        if p is None or p.density_nodes is None:
            return
        self.density_box.visible = True
        nodes, weights = p.density_nodes, p.density_weights
        lo, hi = float(nodes.min()), float(nodes.max())
        pad = 0.05 * max(hi - lo, 1e-6)
        grid = np.linspace(lo - pad, hi + pad, 400)
        sigma = max((hi - lo) / 200, 1e-8)
        y = density_on_grid(nodes, weights, grid, sigma)
        log = self.log_density.value
        floor = 1e-8 * max(float(y.max()), 1e-300)
        self.density.data = dict(x=grid.tolist(), y=(np.log10(np.maximum(y, floor)) if log else y).tolist())
        if p.exact is not None:
            base = float(np.log10(floor)) if log else 0.0
            top = float(np.log10(max(float(y.max()), 1e-300))) if log else float(y.max())
            self.exact.data = dict(x=p.exact.tolist(), top=[top] * len(p.exact), bottom=[base] * len(p.exact))
        elif self.exact.data["x"]:
            self.exact.data = dict(x=[], top=[], bottom=[])
        self.density_fig.yaxis.axis_label = "log10 density" if log else "density"
        self.density_fig.title.text = (f"spectral density at step {p.step} ({nodes.shape[0]} probes x "
                                       f"{nodes.shape[1]} Lanczos steps, σ = {sigma:.2g}; red: exact)")

    def clear(self) -> None:
        self.slots.clear()
        self.marks.clear()
        self.latest = {}
        self.density_box.visible = False

    def set_problem(self) -> None:
        self.clear()

    def present(self, big: bool) -> None:
        scale_fonts(self.sharpness_fig, big)
        # in one line of presenter type it ran past a 1024-px window (to 1,148 px): one line a curve
        self.sharpness_fig.title.text = TITLE.replace(", ", ",\n") if big else TITLE

