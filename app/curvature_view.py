"""The curvature panel: sharpness over steps against each optimizer's stability threshold, the
latest top eigenvalues (exact ones beside them when the problem is small), and the spectral density.

Each lane draws its sharpness (solid; for Adam-type optimizers the preconditioned sharpness
:math:`\\lambda_{\\max}(P^{-1}H)`), its threshold (dashed: 2/η, (2+2μ)/η, 38/η, ...; it moves
when the learning rate does), and the directional sharpness of its actual update (dotted).
"""

from __future__ import annotations

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, HoverTool
from bokeh.plotting import figure

from app.figures import drop_renderers, lane_legend, lane_legend_box
from app.streams import X_AXES, RaceStreams, lane_color
from engine.curvature import density_on_grid


class CurvatureView:
    def __init__(self, streams: RaceStreams) -> None:
        self.streams = streams
        self.x = "step"
        tools = "pan,wheel_zoom,box_zoom,reset,save"
        self.sharpness_fig = figure(height=300, sizing_mode="stretch_width", tools=tools, y_axis_type="log",
                                    title="sharpness (solid) vs stability threshold (dashed); "
                                          "dotted: along the update")
        self.sharpness_fig.xaxis.axis_label = "step"
        self.sharpness_fig.yaxis.axis_label = "λmax(H)  (Adam-type: λmax(P⁻¹H))"
        self._events = self.sharpness_fig.vspan(x="step", source=streams.events, line_color="#444",
                                                line_dash="dashed", line_alpha=0.7)
        self.sharpness_fig.add_tools(HoverTool(renderers=[self._events], tooltips=[("event", "@label")]))
        lane_legend_box(self.sharpness_fig, "bottom_right")
        self.density = ColumnDataSource(dict(x=[], y=[]))
        self.exact = ColumnDataSource(dict(x=[], top=[], bottom=[]))
        self.density_fig = figure(height=300, sizing_mode="stretch_width", tools=tools,
                                  title="spectral density (turn on density probes)")
        self.density_fig.line("x", "y", source=self.density, line_width=2, legend_label="SLQ estimate")
        self.density_fig.segment("x", "bottom", "x", "top", source=self.exact, line_color="#d62728",
                                 line_alpha=0.6, legend_label="exact eigenvalues")
        self.density_fig.xaxis.axis_label = "eigenvalue"
        self.density_fig.legend.location = "top_right"
        self.log_density = pn.widgets.Checkbox(label="log-scale density", value=True)
        self.log_density.param.watch(lambda _: self._draw_density(), "value")
        self.density_lane = pn.widgets.Select(label="density of", options={}, width=160)
        self.density_lane.param.watch(lambda _: self._draw_density(), "value")
        self.summary = pn.pane.Markdown("", sizing_mode="stretch_width")
        self._lines: dict[int, list] = {}
        self._legend: dict[int, object] = {}  # a stand-in per lane (app.figures.lane_legend)
        self.panel = pn.Column(
            pn.Row(pn.pane.Bokeh(self.sharpness_fig, sizing_mode="stretch_width"),
                   pn.Column(pn.pane.Bokeh(self.density_fig, sizing_mode="stretch_width"),
                             pn.Row(self.density_lane, self.log_density), sizing_mode="stretch_width"),
                   sizing_mode="stretch_width"),
            self.summary, sizing_mode="stretch_width")

    def drop_lanes(self) -> None:
        drop_renderers(self.sharpness_fig, [*(r for rs in self._lines.values() for r in rs),
                                            *self._legend.values()])
        self._lines.clear()
        self._legend.clear()
        self.density.data = dict(x=[], y=[])
        self.exact.data = dict(x=[], top=[], bottom=[])
        self.summary.object = ""

    def ensure_lanes(self, labels: dict[int, str]) -> None:
        options = {label: lane for lane, label in labels.items()}
        if options != self.density_lane.options:  # re-sending options re-renders the select
            self.density_lane.options = options
        for lane, label in labels.items():
            if lane in self._lines or lane not in self.streams.curvature_curves:
                continue
            src = self.streams.curvature_curve(lane)
            c = lane_color(lane)
            fig = self.sharpness_fig
            lines = [
                fig.line(self.x, "sharpness", source=src, line_color=c, line_width=2),
                fig.line(self.x, "threshold", source=src, line_color=c, line_width=1.5, line_dash="dashed"),
                fig.line(self.x, "directional", source=src, line_color=c, line_width=1, line_dash="dotted"),
            ]
            self._lines[lane] = lines
            self._legend[lane] = lane_legend(fig, label, c, lines, line_width=2)

    def set_x(self, axis_label: str) -> None:
        self.x = X_AXES[axis_label]
        for rs in self._lines.values():
            for r in rs:
                r.glyph.x = self.x
        self._events.glyph.x = self.x
        self.sharpness_fig.xaxis.axis_label = axis_label

    def update(self, labels: dict[int, str], overhead: float, hvps: int) -> None:
        """Refresh the summary and the density from the latest probes (called by the pump)."""
        self.ensure_lanes(labels)
        rows = ["| optimizer | step | top eigenvalues (Lanczos) | exact | residual | sharpness / threshold |",
                "|---|---|---|---|---|---|"]
        for lane, rec in sorted(self.streams.latest_probe.items()):
            p = rec.curvature
            top = ", ".join(f"{v:.5g}" for v in p.top_k)
            exact = "—" if p.exact is None else ", ".join(f"{v:.5g}" for v in p.exact[::-1][: len(p.top_k)])
            ratio = f"{p.sharpness:.4g} / " + (f"{p.threshold.value:.4g}" if p.threshold else "—")
            rows.append(f"| {labels.get(lane, rec.optimizer)} | {p.step} | {top} | {exact} | "
                        f"{p.lambda_max_residual:.1e} | {ratio} |")
        if len(rows) == 2:
            text = "_No curvature probe yet: they run on the schedule set in the sidebar._"
            if self.summary.object != text:
                self.summary.object = text
            return
        text = "\n".join(rows) + (
            f"\n\nProbes so far: {hvps:,} Hessian-vector products, {overhead:.1%} of the run's compute time "
            "(measured). Lanczos residuals are ‖Hy − θy‖ of each Ritz pair; thresholds are for the "
            "lane's current hyperparameters.")
        if text != self.summary.object:
            self.summary.object = text
        self._draw_density()

    def _draw_density(self) -> None:
        lane = self.density_lane.value
        rec = self.streams.latest_probe.get(lane) if lane is not None else None
        p = rec.curvature if rec is not None else None
        if p is None or p.density_nodes is None:
            return
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
        else:
            self.exact.data = dict(x=[], top=[], bottom=[])
        self.density_fig.yaxis.axis_label = "log10 density" if log else "density"
        self.density_fig.title.text = (f"spectral density at step {p.step} ({nodes.shape[0]} probes x "
                                       f"{nodes.shape[1]} Lanczos steps, Gaussian σ = {sigma:.2g})")
