"""A loss-landscape slice of a network around one lane's weights (Li et al. 2018): the plane of its
trajectory's top two principal directions, or a random filter-normalized one, with the trajectory
projected onto it. Computed on request off the event loop, with progress and Cancel; the picture
appears only once there is one.

The worker hands over the lane's trajectory and a private copy of the problem between two steps
(``functional_call`` swaps a module's parameters while a step runs, so two threads must never share
one, nor copy one mid-step); a job thread evaluates the grid on the copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import panel as pn
import torch
from bokeh.models import ColorBar, ColumnDataSource, HoverTool, LinearColorMapper
from bokeh.palettes import Viridis256

from app.figures import make_figure
from app.jobs import Job
from app.lanes import Lane
from app.views.base import JobStrip, View
from engine.slices import filter_normalized_plane, grid_around, pca_plane, project, slice_grid

PLANES = ("PCA of the trajectory", "random, filter-normalized")


class SliceView(View):
    title = "slice"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.image = ColumnDataSource(dict(image=[], x=[], y=[], dw=[], dh=[]))
        self.path = ColumnDataSource(dict(x=[], y=[], step=[], off=[]))
        self.mapper = LinearColorMapper(palette=Viridis256)
        sl = make_figure("slice", 300, tools="pan,wheel_zoom,reset,save", x_label="α (along d1)",
                         y_label="β (along d2)")
        sl.image("image", x="x", y="y", dw="dw", dh="dh", source=self.image, color_mapper=self.mapper)
        sl.line("x", "y", source=self.path, line_color="white", line_width=2)
        dots = sl.scatter("x", "y", source=self.path, size=5, fill_color="white", line_color="black")
        sl.add_tools(HoverTool(renderers=[dots], tooltips=[("step", "@step"), ("off the plane",
                                                                               "@off{0.0%}")]))
        sl.add_layout(ColorBar(color_mapper=self.mapper, width=10, title="log10 loss"), "right")
        self.figure = sl
        # two rows that fit the instrument column (~460 px at 1280): in one row of 680 px the button
        # was past the window's edge
        self.plane = pn.widgets.Select(label="plane", options=list(PLANES), width=200)
        self.lane = pn.widgets.Select(label="trajectory of", options={}, width=180)
        self.grid = pn.widgets.IntSlider(label="grid points per axis", start=11, end=61, step=2, value=31,
                                         width=200)
        self.button = pn.widgets.Button(label="Compute slice", color="primary", width=130, margin=(22, 5,
                                                                                                   5, 5))
        self.button.on_click(lambda _: self.request(self.plane.value, self.lane.value, self.grid.value))
        self.jobs = JobStrip()
        self.caption = pn.pane.Markdown("Pick a lane and a plane, then compute a slice.",
                                        sizing_mode="stretch_width", styles={"font-size": "0.85em"})
        # in a Column: a Bokeh pane's own visible=False never reached its figure (an empty frame showed)
        self.picture = pn.Column(pn.pane.Bokeh(sl, sizing_mode="stretch_width"), sizing_mode="stretch_width",
                                 visible=False)
        self.panel = pn.Column(pn.Row(self.plane, self.lane), pn.Row(self.grid, self.button), self.jobs.panel,
                               self.picture, self.caption, sizing_mode="stretch_width")

    def applies(self) -> bool:
        return self.session.is_network

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        options = {lane.label: lane.id for lane in lanes}
        if options != self.lane.options:
            self.lane.options = options

    def set_problem(self) -> None:
        self.jobs.close()
        self.picture.visible = False
        self.caption.object = "Pick a lane and a plane, then compute a slice."

    def request(self, plane: str, lane_id: int | None, n: int, wait: bool = False) -> Job | None:
        """Slice the loss around the lane's current weights, off the event loop."""
        s = self.session
        lane = s.lane(lane_id) if lane_id is not None else None
        if not s.is_network or lane is None or lane.engine_id < 0:
            self.notify("pick a network problem and a lane to slice")
            return None
        if self.jobs.busy:
            self.notify("a slice is already being computed")
            return None
        engine_id, label, seed = lane.engine_id, lane.label, s.seed
        trajectory = s.worker.call(lambda run: run.trajectory(engine_id))
        copy = s.private_problem()

        def work(job: Job) -> tuple:
            steps, traj = trajectory.result(timeout=60)
            problem = copy.result(timeout=60)
            if len(traj) < 3 and plane == PLANES[0]:
                raise ValueError("take a few steps first: a PCA plane needs a trajectory")
            center = traj[-1]
            p = pca_plane(traj, center) if plane == PLANES[0] else filter_normalized_plane(
                center, problem.param_shapes, torch.Generator().manual_seed(seed))
            proj = project(p, traj)
            alphas, betas = grid_around(proj, n=n)
            mode = getattr(problem, "mode", "train")

            def progress(fraction: float) -> None:
                job.progress(fraction, f"{fraction:.0%} of {n}x{n} points")
                job.check()  # Cancel stops the grid between its chunks

            result = slice_grid(problem.loss, p, alphas, betas, dtype=torch.float32, progress=progress,
                                note=f"training loss on the full training set ({mode} mode), float32")
            return result, proj, steps, label

        job = self.jobs.start(Job(f"slice of {label}", work))
        if wait:
            job.wait()
        return job

    def refresh(self) -> None:
        job = self.jobs.refresh()
        if job is None:
            return
        if job.error:
            self.notify(job.error.replace(f"{job.title} failed: ", "slice failed: "))
            return
        self.show(*job.result)

    def show(self, result: Any, proj: Any, steps: np.ndarray, label: str) -> None:
        """Draw a finished slice: image, projected trajectory, and what it shows and cost."""
        z = np.log10(np.maximum(result.loss, 1e-12))
        a, b = result.alphas, result.betas
        self.mapper.update(low=float(np.nanmin(z)), high=float(np.nanmax(z)))
        self.image.data = dict(image=[z], x=[a[0]], y=[b[0]], dw=[a[-1] - a[0]], dh=[b[-1] - b[0]])
        self.path.data = dict(x=proj.coords[:, 0].tolist(), y=proj.coords[:, 1].tolist(), step=steps.tolist(),
                              off=proj.relative.tolist())
        self.figure.x_range.update(start=a[0], end=a[-1])
        self.figure.y_range.update(start=b[0], end=b[-1])
        plane = result.plane
        kind = (f"PCA plane of {label}'s trajectory (d1, d2 explain {plane.explained[0]:.1%} and "
                f"{plane.explained[1]:.1%} of its variance)" if plane.kind == "pca" else
                f"random filter-normalized plane through {label}'s current weights")
        self.figure.title.text = f"slice: {kind.split(' (')[0]}"
        self.caption.object = (
            f"**{kind}.** Colour: log10 of the {result.note}, on a {len(a)}x{len(b)} grid: "
            f"{result.evaluations} evaluations in {result.seconds:.2f} s. The white path is the trajectory "
            f"projected onto the plane; the plane hides a median {np.median(proj.relative):.1%} "
            f"(max {proj.relative.max():.1%}) of each point's distance from the current weights.")
        self.picture.visible = True

    def close(self) -> None:
        self.jobs.close()
