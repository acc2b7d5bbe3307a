"""The linear-mode-connectivity panel (Ito, Yamada & Kumagai 2024, "Analysis of Linear Mode
Connectivity via Permutation-Based Weight Matching"; Ainsworth et al. 2023, "Git Re-Basin"): two
copies of the session's MLP trained from two seeds, then the loss along the straight line between
them, before and after permuting B's hidden units to match A's (Hungarian assignment,
:mod:`landscapes.connectivity`), with both barriers and both L2 distances stated on the figure.

Training two networks takes seconds, so the study is a job (progress, Cancel) on its own copy of
the problem, built from the session's settings with the panel's width; every size a widget gives
(width, steps) is checked by :func:`engine.limits.check_run` before anything is built.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource

from app.figures import make_figure
from app.jobs import Job
from app.views.base import JobStrip, View, html_escape, swatch
from engine.limits import check_run
from engine.run import LaneConfig, RunConfig
from landscapes.connectivity import Connectivity, mlp_permutation_spec, mode_connectivity, train_pair
from landscapes.networks import NetworkProblem, get_network
from landscapes.sizes import accepted

MAX_STEPS = 5_000
"""Training steps per network offered by the panel (each network trains this many SGD steps)."""
MAX_POINTS = 101
"""Points along each path (two full-set evaluations of the network per point)."""
CURVES = {"loss": "training loss (full set)", "test_loss": "test loss"}
COLORS = {"naive": "#d62728", "matched": "#1f77b4"}


@dataclass(frozen=True)
class ConnectivityStudy:
    """Two networks of ``problem`` (its ``options``, with ``width``) trained by SGD with step ``lr``
    for ``steps`` steps from the seeds ``seeds``, compared along ``points`` points of each path."""

    problem: str = "digits_mlp"
    options: dict[str, Any] = field(default_factory=dict)
    width: int = 32
    steps: int = 300
    lr: float = 0.1
    seeds: tuple[int, int] = (1, 2)
    points: int = 21

    def check(self) -> None:
        """Refuse bad input in the page's terms before any work starts (sizes through engine.limits)."""
        for name, v, low, high in (
            ("width", self.width, 1, None),
            ("steps", self.steps, 1, MAX_STEPS),
            ("points along the path", self.points, 3, MAX_POINTS),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
                bound = f"from {low} to {high:,}" if high is not None else f">= {low}"
                raise ValueError(f"{name} must be a whole number {bound} (got {v!r})")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and 0.0 < self.lr <= 10.0):
            raise ValueError(f"the SGD step size must be a number in (0, 10] (got {self.lr!r})")
        a, b = self.seeds
        if a == b:
            raise ValueError("the two seeds must differ: one seed trains the same network twice")
        if min(a, b) < 0:
            raise ValueError("seeds must be whole numbers >= 0")
        config = RunConfig(lanes=(LaneConfig("sgd", {"lr": float(self.lr)}),))
        check_run(
            self.problem, self.build_options(), config, ticks=2 * self.steps, what="this connectivity study"
        )

    def build_options(self) -> dict[str, Any]:
        return {**self.options, "width": self.width}

    def build(self) -> NetworkProblem:
        problem = get_network(self.problem, **self.build_options())
        mlp_permutation_spec(problem)  # refuses what is not an MLP, in words
        return problem


def run_study(study: ConnectivityStudy, job: Job | None = None) -> tuple[Connectivity, float]:
    """Train the pair, match, walk both paths; returns the result and the seconds taken. ``job`` gets
    progress; Cancel stops the training between steps."""
    study.check()
    t0 = time.perf_counter()
    if job is not None:
        job.progress(0.02, f"training two networks, {study.steps:,} SGD steps each")
    problem = study.build()
    a, b = train_pair(problem, seeds=study.seeds, steps=study.steps, hyperparameters={"lr": float(study.lr)})
    if job is not None:
        job.check()
        job.progress(0.8, f"weight matching, then {study.points} points on each path")
    result = mode_connectivity(problem, a, b, k=study.points)
    return result, time.perf_counter() - t0


class ConnectivityView(View):
    title = "connectivity"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.width = pn.widgets.IntInput(label="hidden width", value=32, start=1, end=1024, width=100)
        self.steps = pn.widgets.IntInput(
            label="SGD steps each", value=300, start=1, end=MAX_STEPS, step=50, width=110
        )
        self.lr = pn.widgets.FloatInput(
            label="SGD step size", value=0.1, start=1e-4, end=10.0, step=0.01, width=100
        )
        self.seed_a = pn.widgets.IntInput(label="seed A", value=1, start=0, width=70)
        self.seed_b = pn.widgets.IntInput(label="seed B", value=2, start=0, width=70)
        self.points = pn.widgets.IntInput(label="points", value=21, start=3, end=MAX_POINTS, width=70)
        self.button = pn.widgets.Button(
            label="Train two and match", color="primary", width=150, margin=(22, 5, 5, 5)
        )
        self.button.on_click(lambda _: self.request(self.study()))
        self.jobs = JobStrip()
        self.paths = {
            (kind, curve): ColumnDataSource({"alpha": [], "value": []})
            for kind in ("naive", "matched")
            for curve in CURVES
        }
        fig = make_figure(
            "loss along the linear path θ(α) = (1 − α) θ_A + α θ_B", 300, x_label="α", y_label="loss"
        )
        for (kind, curve), src in self.paths.items():
            dash = "solid" if curve == "loss" else "dashed"
            fig.line("alpha", "value", source=src, color=COLORS[kind], line_width=2, line_dash=dash)
            fig.scatter("alpha", "value", source=src, color=COLORS[kind], size=4)
        self.figure = fig
        legend = pn.pane.HTML(
            f"<small>{swatch(COLORS['naive'])}before matching: θ_B as trained &nbsp; "
            f"{swatch(COLORS['matched'])}after matching: π(θ_B), B's hidden units permuted &nbsp; "
            "solid: training loss (full set), dashed: test loss</small>",
            margin=(0, 8),
            sizing_mode="stretch_width",
        )
        # shown and hidden as a column: toggling a served Bokeh pane's visibility fails in Panel
        self.picture = pn.Column(
            legend,
            pn.pane.Bokeh(fig, sizing_mode="stretch_width"),
            visible=False,
            sizing_mode="stretch_width",
        )
        self.caption = pn.pane.Markdown(
            "Train two networks from two seeds, then compare the straight path "
            "between them before and after weight matching.",
            sizing_mode="stretch_width",
            styles={"font-size": "0.85em"},
        )
        self.result: Connectivity | None = None
        self.shown: ConnectivityStudy | None = None
        self._stale = True  # nothing computed for this problem yet: the first refresh on screen starts one
        self.panel = pn.Column(
            pn.FlexBox(self.width, self.steps, self.lr, self.seed_a, self.seed_b, self.points, self.button),
            self.jobs.panel,
            self.picture,
            self.caption,
            sizing_mode="stretch_width",
        )

    def applies(self) -> bool:
        p = self.session.problem_obj
        if not isinstance(p, NetworkProblem):
            return False
        try:
            mlp_permutation_spec(p)
        except ValueError:
            return False
        return True

    def set_problem(self) -> None:
        """A new run: start over on the session's network, with its width and SGD step size."""
        self.jobs.close()
        if not self.applies():
            return
        applied = self.session._applied
        options = dict(applied.options)
        self.width.value = int(options.get("width", accepted(applied.problem)["width"]))
        sgd = [ln for ln in self.session.lanes if ln.optimizer == "sgd"]
        if sgd:
            self.lr.value = float(sgd[0].values().get("lr", self.lr.value))
        self._stale = True

    def study(self) -> ConnectivityStudy:
        applied = self.session._applied
        options = {k: v for k, v in dict(applied.options).items() if k != "width"}
        if applied.batch_size is not None:
            options["batch_size"] = applied.batch_size or None  # 0: full batch (as RunParams.make_problem)
        return ConnectivityStudy(
            problem=applied.problem,
            options=options,
            width=self.width.value,
            steps=self.steps.value,
            lr=self.lr.value,
            seeds=(self.seed_a.value, self.seed_b.value),
            points=self.points.value,
        )

    def request(self, study: ConnectivityStudy, wait: bool = False) -> Job | None:
        """Run ``study`` off the event loop; bad input is refused with a message, the figure kept."""
        try:
            study.check()
        except ValueError as exc:
            self.notify(f"connectivity: {exc}")
            self.caption.object = f"**Not started:** {html_escape(exc)} (the figure is the last study's)."
            return None
        if self.jobs.busy:
            self.notify("connectivity: a study is already running (Cancel it first)")
            return None
        self._stale = False
        job = self.jobs.start(Job("connectivity study", lambda job: (study, *run_study(study, job))))
        if wait:
            job.wait()
        return job

    def refresh(self) -> None:
        if self._stale and not self.jobs.busy:
            self.request(self.study())
        job = self.jobs.refresh()
        if job is None:
            return
        if job.error:
            if not job.cancelled:
                self.notify(job.error)
            self.caption.object = f"**{html_escape(job.error)}**; the figure is the last finished study's."
            return
        self.show(*job.result)

    def show(self, study: ConnectivityStudy, result: Connectivity, seconds: float) -> None:
        """Draw both paths; the figure's title and the caption give the barriers and the distances."""
        self.result, self.shown = result, study
        for (kind, curve), src in self.paths.items():
            path = result.naive if kind == "naive" else result.matched
            src.data = {"alpha": result.alphas, "value": path.curves[curve]}
        bn, bm = result.barrier_naive["loss"], result.barrier_matched["loss"]
        # two short lines: one line of both figures was cut off beside the race at 1024 px
        self.figure.title.text = (
            f"training-loss barrier {bn:.3g} → {bm:.3g}\n"
            f"‖θ_A − θ_B‖ {result.l2_naive:.3g} → {result.l2_matched:.3g} (matched)"
        )
        self.picture.visible = True
        self.caption.object = self.describe(study, result, seconds)

    def describe(self, study: ConnectivityStudy, r: Connectivity, seconds: float) -> str:
        units = sum(len(p) for p in r.permutation.values())
        moved = sum(int((np.asarray(p) != np.arange(len(p))).sum()) for p in r.permutation.values())
        align = ", ".join(
            f"{k} {r.alignment_naive[k]:.2f} → {r.alignment_matched[k]:.2f}" for k in r.alignment_naive
        )
        return (
            f"**{study.problem}, hidden width {study.width}: two networks trained {study.steps:,} SGD steps "
            f"(η = {study.lr:g}) from seeds {study.seeds[0]} and {study.seeds[1]}.** "
            f"Loss barrier (largest rise above the chord, on {len(r.alphas)} points) before → after "
            f"matching: training {r.barrier_naive['loss']:.3g} → {r.barrier_matched['loss']:.3g}, test "
            f"{r.barrier_naive['test_loss']:.3g} → {r.barrier_matched['test_loss']:.3g}. L2 distance "
            f"{r.l2_naive:.3g} → {r.l2_matched:.3g} (matching moved {moved} of {units} hidden units). "
            f"Overlap of each weight matrix's top-5 singular directions with A's, before → after: {align}. "
            f"Solid: training loss on the full set; dashed: test loss. "
            f"Computed in {seconds:.1f} s (2 × {study.steps:,} steps, 2 × {len(r.alphas)} path evaluations)."
        )

    def close(self) -> None:
        self.jobs.close()
