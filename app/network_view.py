"""Views for network problems: train/test curves per lane, and a loss-landscape slice panel.

The slice is computed off the UI thread: the run's worker hands over the lane's trajectory and a
private copy of the problem between two steps (``RunWorker.call``; ``functional_call`` swaps a
module's parameters while a step runs, so two threads must never share one, nor copy one mid-step),
a helper thread evaluates the grid on the copy, and the explorer's periodic pump draws the result
on the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import panel as pn
import torch
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from app.figures import drop_renderers, lane_legend, lane_legend_box
from app.streams import X_AXES, RaceStreams, lane_color
from engine.slices import (
    Plane,
    Projection,
    Slice,
    filter_normalized_plane,
    grid_around,
    pca_plane,
    project,
    slice_grid,
)

PLANES = ("PCA of the trajectory", "random, filter-normalized")


@dataclass
class SliceJob:
    """A slice in progress (written by its thread, read by the UI thread's pump)."""

    lane_label: str
    progress: float = 0.0
    result: tuple[Slice, Projection, np.ndarray] | None = None
    error: str = ""
    done: bool = False


def compute_slice(private: object, steps: np.ndarray, trajectory: np.ndarray, plane_kind: str, n: int,
                  seed: int, job: SliceJob) -> None:
    """Plane, projection and grid for one lane (runs on a helper thread, on a private copy of the
    problem that no other thread touches)."""
    try:
        center = trajectory[-1]
        if plane_kind == PLANES[0]:
            plane: Plane = pca_plane(trajectory, center)
        else:
            plane = filter_normalized_plane(center, private.param_shapes, torch.Generator().manual_seed(seed))
        proj = project(plane, trajectory)
        alphas, betas = grid_around(proj, n=n)
        mode = getattr(private, "mode", "train")
        note = f"training loss on the full training set ({mode} mode), float32"

        def progress(fraction: float) -> None:
            job.progress = fraction

        result = slice_grid(private.loss, plane, alphas, betas, dtype=torch.float32, progress=progress,
                            note=note)
        job.result = (result, proj, steps)
    except Exception as exc:  # shown in the page, never lost in a thread
        job.error = f"slice failed: {exc}"
    finally:
        job.done = True


class NetworkView:
    """Curves of the scheduled metrics and the slice panel."""

    def __init__(self, streams: RaceStreams, on_slice: Callable[[str, str, int], None]) -> None:
        self.streams = streams
        self.x = "step"
        tools = "pan,wheel_zoom,box_zoom,reset,save"
        self.loss_fig = figure(height=280, sizing_mode="stretch_width", y_axis_type="log", tools=tools,
                               title="full-set loss: train (solid), test (dashed), eval mode")
        self.acc_fig = figure(height=280, sizing_mode="stretch_width", tools=tools,
                              title="accuracy: test (solid), train (dashed), eval mode")
        for fig, corner in ((self.loss_fig, "top_right"), (self.acc_fig, "bottom_right")):
            fig.xaxis.axis_label = "step"
            lane_legend_box(fig, corner)
        self._lines: dict[int, list] = {}
        self._legend: dict[int, list] = {}  # stand-ins per lane (app.figures.lane_legend)
        self.image = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.path = ColumnDataSource(dict(x=[], y=[], step=[], off=[]))
        self.mapper = LinearColorMapper(palette=Viridis256)
        sl = figure(height=420, sizing_mode="stretch_width", tools="pan,wheel_zoom,reset,save",
                    title="loss-landscape slice (compute one below)")
        sl.image("image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper)
        sl.line("x", "y", source=self.path, line_color="white", line_width=2)
        dots = sl.scatter("x", "y", source=self.path, size=5, fill_color="white", line_color="black")
        sl.add_tools(HoverTool(renderers=[dots],
                               tooltips=[("step", "@step"), ("off the plane", "@off{0.0%}")]))
        sl.add_layout(ColorBar(color_mapper=self.mapper, width=10, title="log10 loss"), "right")
        sl.xaxis.axis_label = "α (along d1)"
        sl.yaxis.axis_label = "β (along d2)"
        self.slice_fig = sl
        self.contours = None
        self.plane = pn.widgets.Select(label="plane", options=list(PLANES), width=220)
        self.lane = pn.widgets.Select(label="trajectory of", options={}, width=180)
        self.grid = pn.widgets.IntSlider(label="grid points per axis", start=11, end=61, step=2, value=31,
                                         width=200)
        self.button = pn.widgets.Button(label="Compute slice", color="primary", width=130)
        self.button.on_click(lambda _: on_slice(self.plane.value, self.lane.value, self.grid.value))
        self.progress = pn.indicators.Progress(value=0, max=100, visible=False, width=200)
        self.caption = pn.pane.Markdown("", sizing_mode="stretch_width")
        self.panel = pn.Column(
            pn.Row(pn.pane.Bokeh(self.loss_fig, sizing_mode="stretch_width"),
                   pn.pane.Bokeh(self.acc_fig, sizing_mode="stretch_width"), sizing_mode="stretch_width"),
            pn.pane.Bokeh(self.slice_fig, sizing_mode="stretch_width"),
            pn.Row(self.plane, self.lane, self.grid, self.button, self.progress),
            self.caption,
            sizing_mode="stretch_width",
        )

    def set_problem(self, problem: object) -> None:
        has_acc = getattr(problem, "accuracy", None) is not None
        self.acc_fig.title.text = ("accuracy: test (solid), train (dashed), eval mode" if has_acc else
                                   "recovery error |WW^T - X*| / |X*| (eval mode)")
        mode = getattr(problem, "metrics_mode", "eval")
        self.loss_fig.title.text = f"full-set loss: train (solid), test (dashed), {mode} mode"
        self.image.data = dict(image=[], x=[], y=[], dw=[], dh=[])
        self.path.data = dict(x=[], y=[], step=[], off=[])
        self.caption.object = ""
        self.slice_fig.title.text = "loss-landscape slice (compute one below)"

    def drop_lanes(self) -> None:
        renderers = [r for rs in (*self._lines.values(), *self._legend.values()) for r in rs]
        for fig in (self.loss_fig, self.acc_fig):
            drop_renderers(fig, renderers)
        self._lines.clear()
        self._legend.clear()

    def missing_lanes(self, labels: dict[int, str]) -> bool:
        """Whether :meth:`ensure_lanes` has something to draw (it is polled at every pump)."""
        return ({label: lane for lane, label in labels.items()} != self.lane.options
                or any(lane not in self._lines and lane in self.streams.metric_curves for lane in labels))

    def ensure_lanes(self, labels: dict[int, str]) -> None:
        """Lines for lanes whose metric source exists (it is created by the first metrics record)."""
        options = {label: lane for lane, label in labels.items()}
        if options != self.lane.options:  # re-sending options re-renders the select
            self.lane.options = options
        for lane, label in labels.items():
            if lane in self._lines or lane not in self.streams.metric_curves:
                continue
            src = self.streams.metric_curves[lane]
            color = lane_color(lane)
            lines = []
            for fig, solid, dashed in ((self.loss_fig, "train_loss", "test_loss"),
                                       (self.acc_fig, "test_accuracy", "train_accuracy")):
                if solid not in src.data and fig is self.acc_fig and "recovery_error" in src.data:
                    solid, dashed = "recovery_error", None
                drawn = []
                if solid in src.data:
                    drawn.append(fig.line(self.x, solid, source=src, line_color=color, line_width=2))
                if dashed and dashed in src.data:
                    drawn.append(fig.line(self.x, dashed, source=src, line_color=color, line_width=1.5,
                                          line_dash="dashed"))
                if drawn:
                    lines += drawn
                    entry = lane_legend(fig, label, color, drawn, line_width=2)
                    self._legend.setdefault(lane, []).append(entry)
            self._lines[lane] = lines

    def set_x(self, axis_label: str) -> None:
        self.x = X_AXES[axis_label]
        for lines in self._lines.values():
            for r in lines:
                r.glyph.x = self.x
        for fig in (self.loss_fig, self.acc_fig):
            fig.xaxis.axis_label = axis_label

    def show_progress(self, job: SliceJob | None) -> None:
        self.progress.visible = job is not None and not job.done
        if job is not None:
            self.progress.value = int(100 * job.progress)

    def show_slice(self, job: SliceJob) -> None:
        """Draw a finished slice: image, projected trajectory, and a caption of what and what cost."""
        result, proj, steps = job.result
        z = np.log10(np.maximum(result.loss, 1e-12))
        a, b = result.alphas, result.betas
        self.mapper.update(low=float(np.nanmin(z)), high=float(np.nanmax(z)))
        self.image.data = dict(image=[z], x=[a[0]], y=[b[0]], dw=[a[-1] - a[0]], dh=[b[-1] - b[0]])
        self.path.data = dict(x=proj.coords[:, 0].tolist(), y=proj.coords[:, 1].tolist(),
                              step=steps.tolist(), off=proj.relative.tolist())
        self.slice_fig.x_range.update(start=a[0], end=a[-1])
        self.slice_fig.y_range.update(start=b[0], end=b[-1])
        plane = result.plane
        kind = (f"PCA plane of {job.lane_label}'s trajectory (d1, d2 explain {plane.explained[0]:.1%} and "
                f"{plane.explained[1]:.1%} of its variance)" if plane.kind == "pca" else
                f"random filter-normalized plane through {job.lane_label}'s current weights")
        self.slice_fig.title.text = f"slice: {kind.split(' (')[0]}"
        self.caption.object = (
            f"**{kind}.** Colour: log10 of the {result.note}, on a {len(a)}x{len(b)} grid: "
            f"{result.evaluations} evaluations in {result.seconds:.2f} s. The white path is the trajectory "
            f"projected onto the plane; the plane hides a median {np.median(proj.relative):.1%} "
            f"(max {proj.relative.max():.1%}) of each point's distance from the current weights.")
