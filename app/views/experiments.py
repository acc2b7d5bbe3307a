"""The experiments panel: an experiment around the current race (each lane's optimizer over a
learning-rate grid, several seeds, a budget in oracle units), run on Dask off the page's loop with
progress and Cancel; then sensitivity curves, tuned vs default, a performance profile and basin
maps, each saying what it shows and what it cost. Clicking a basin pixel opens that start as a
live race; a row of the results opens from the "open best" button. Model: :mod:`app.experiments`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn
from bokeh.events import Tap
from bokeh.models import ColumnDataSource, LinearColorMapper, LogScale, LogTicker, LogTickFormatter, Whisker
from bokeh.palettes import Category10_10

from app.experiments import ExperimentModel
from app.figures import legend_below, make_figure
from app.views.base import View, html_escape
from engine.experiments.basins import DIVERGED, NOT_CONVERGED

DIVERGED_COLOR = "#222222"


def _color(k: int) -> str:
    return Category10_10[k % 10]


def _caption(what: str, cost: str) -> pn.pane.HTML:
    return pn.pane.HTML(
        f"<small><b>{html_escape(what)}</b><br>cost: {html_escape(cost)}</small>",
        margin=(0, 8),
        sizing_mode="stretch_width",
    )


def sensitivity_figure(model: ExperimentModel) -> Any:
    """Final loss vs lr per optimizer: the median over seeds, the 25-75% seed band."""
    s = model.sensitivity()
    fig = make_figure("sensitivity: final loss vs lr", 260, log_y=True, x_label="lr", y_label="final loss")
    fig.x_scale = LogScale()  # learning rates span decades
    fig.xaxis.ticker, fig.xaxis.formatter = LogTicker(), LogTickFormatter()
    if not len(s):
        return fig
    s = s[s["hyperparameter"] == "lr"]
    for k, (entry, e) in enumerate(s.groupby("entry", sort=False)):
        e = e.sort_values("value")
        src = ColumnDataSource({c: e[c].to_numpy() for c in ("value", "median", "low", "high")})
        fig.varea(x="value", y1="low", y2="high", source=src, fill_alpha=0.2, color=_color(k))
        fig.line(x="value", y="median", source=src, color=_color(k), line_width=2, legend_label=str(entry))
        fig.scatter(x="value", y="median", source=src, color=_color(k), size=5)
    legend_below(fig)
    return fig


def tuned_figure(model: ExperimentModel) -> Any:
    """Each optimizer's default and tuned score (mean log10 loss) with the bootstrap interval of the
    improvement drawn on the tuned point."""
    t = model.tuned()
    entries = [] if not len(t) else [str(e) for e in t["entry"]]
    fig = make_figure("tuned vs default (log10 final loss)", 260, x_label="", y_label="mean log10 loss")
    if not entries:
        return fig
    x = np.arange(len(entries), dtype=float)
    fig.xaxis.ticker = list(x)
    fig.xaxis.major_label_overrides = {float(i): e for i, e in enumerate(entries)}
    fig.x_range.range_padding = 0.5
    d = t["default_score"].to_numpy(dtype=float)
    tu = t["tuned_score"].to_numpy(dtype=float)
    lo = d - t["ci_high"].to_numpy(dtype=float)  # tuned score implied by the interval's ends
    hi = d - t["ci_low"].to_numpy(dtype=float)
    fig.scatter(x, d, size=9, marker="square", color="#999999", legend_label="default")
    fig.scatter(x, tu, size=9, color="#1f77b4", legend_label="tuned (95% bootstrap)")
    src = ColumnDataSource({"x": x, "lo": lo, "hi": hi})
    fig.add_layout(Whisker(base="x", lower="lo", upper="hi", source=src, line_color="#1f77b4"))
    legend_below(fig)
    return fig


def profile_figure(model: ExperimentModel) -> Any:
    """Dolan-More performance profile: fraction of problem instances solved within tau x the best."""
    p = model.profile()
    fig = make_figure(
        "performance profile (oracle units to target)", 260, x_label="tau (x best)", y_label="fraction solved"
    )
    if not len(p):
        return fig
    for k, (entry, e) in enumerate(p.groupby("entry", sort=False)):
        tau = e["tau"].to_numpy(dtype=float)
        fig.step(
            np.where(np.isfinite(tau), tau, np.nan),
            e["fraction"].to_numpy(),
            mode="after",
            color=_color(k),
            line_width=2,
            legend_label=str(entry),
        )
    fig.y_range.start, fig.y_range.end = 0, 1.02
    legend_below(fig)
    return fig


def basin_summary(bmap: Any) -> str:
    """What a basin map's colours mean and how many starts each class holds: a map mostly white
    says "not there yet after N steps" (raise the steps), not "no basin"."""
    share = {k: 100.0 * bmap.fractions().get(k, 0.0) for k in (DIVERGED, NOT_CONVERGED)}
    hp = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in bmap.hyperparameters.items())
    return (
        f"{bmap.optimizer}{f' ({hp})' if hp else ''}: colour = the known minimum a start is within "
        f"{bmap.tol:g} of after {bmap.n_steps} steps; "
        f"white = not there ({share[NOT_CONVERGED]:.0f}% of starts), "
        f"black = diverged ({share[DIVERGED]:.0f}%). Click a pixel to race from it."
    )


class ExperimentsView(View):
    title = "experiments"
    area = "instrument"

    def __init__(self, session: Any, notify: Any, model: ExperimentModel | None = None) -> None:
        super().__init__(session, notify)
        self.model = model or ExperimentModel(session)
        settings = pn.Param(
            self.model,
            parameters=["seeds", "lr_points", "lr_decades", "budget", "target", "n_workers"],
            show_name=False,
            width=250,
            widgets={
                "budget": {"type": pn.widgets.FloatInput, "width": 200},
                "target": {"type": pn.widgets.FloatInput, "width": 200},
            },
        )
        self.run_button = pn.widgets.Button(label="Run experiment", color="primary", width=140)
        self.cancel_button = pn.widgets.Button(label="Cancel", width=80, disabled=True)
        self.basin_button = pn.widgets.Button(label="Basin maps", width=100)
        self.best_button = pn.widgets.Button(label="Open best as race", width=140, disabled=True)
        self.bar = pn.indicators.Progress(value=0, max=100, width=200, height=16, visible=False)
        self.text = pn.pane.Str("idle", styles={"font-size": "0.85em"})
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button.on_click(lambda _: self.cancel())
        self.basin_button.on_click(lambda _: self.start_basins())
        self.best_button.on_click(lambda _: self.open_best())
        self.figures = pn.GridBox(ncols=2, sizing_mode="stretch_width")
        self.basin_row = pn.Row(sizing_mode="stretch_width")
        controls = pn.Column(
            settings,
            pn.Row(self.run_button, self.cancel_button),
            pn.Row(self.basin_button, self.best_button),
            self.bar,
            self.text,
            width=300,
        )
        self.panel = pn.Row(
            controls,
            pn.Column(self.figures, self.basin_row, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )
        self._shown_basins = 0

    def applies(self) -> bool:
        return True

    # -- actions ------------------------------------------------------------------------------------
    def run(self, client: Any = None) -> None:
        try:
            self.model.spec = None
            spec = self.model.build()
            self.model.start(client=client)
        except Exception as exc:  # bad input: in the user's terms, nothing started
            self.notify(str(exc))
            self.text.object = str(exc)
            return
        n = sum(len(spec.configurations(e)) for e in spec.optimizers) * len(spec.seeds) * spec.starts
        self.text.object = f"running {n} trials…"
        self.bar.visible, self.cancel_button.disabled, self.run_button.disabled = True, False, True

    def cancel(self) -> None:
        self.model.cancel(wait=None)
        self.text.object = "cancelling…"

    def start_basins(self) -> None:
        job = self.model.start_basins()
        if job is None:
            self.notify("basin maps need a 2-D landscape")

    def open_best(self) -> None:
        f = self.model.frame
        if not len(f):
            return
        row = f.loc[f["final_loss"].fillna(np.inf).idxmin()]
        self.model.open(self.model.race_of_row(row))

    # -- the page's refresh -------------------------------------------------------------------------
    def refresh(self) -> None:
        m = self.model
        if m.running:
            self.bar.value = int(100 * m.fraction)
            self.text.object = m.status
        elif m.poll():
            self.bar.visible, self.cancel_button.disabled, self.run_button.disabled = False, True, False
            self.text.object = m.status
            self.best_button.disabled = not len(m.frame)
            self.draw()
        if len(m.basins) != self._shown_basins:
            self.draw_basins()

    def draw(self) -> None:
        m = self.model
        cost = m.cost()
        self.figures.objects = [
            pn.Column(
                pn.pane.Bokeh(sensitivity_figure(m)),
                _caption("final loss vs learning rate: median over seeds, band 25-75%", cost),
            ),
            pn.Column(
                pn.pane.Bokeh(tuned_figure(m)),
                _caption("defaults vs best lr found (same budget), 95% bootstrap re-selecting", cost),
            ),
            pn.Column(
                pn.pane.Bokeh(profile_figure(m)),
                _caption("fraction of seeds reaching the target within tau x the fastest", cost),
            ),
        ]

    def draw_basins(self) -> None:
        maps = list(self.model.basins)
        self._shown_basins = len(maps)
        panes = []
        for bmap in maps:
            panes.append(
                pn.Column(
                    pn.pane.Bokeh(self.basin_figure(bmap)),
                    _caption(basin_summary(bmap), f"{bmap.filled:,} starts x {bmap.n_steps} steps, "
                             f"{bmap.seconds:.1f} s"),
                )
            )
        self.basin_row.objects = panes

    def basin_figure(self, bmap: Any) -> Any:
        fig = make_figure(f"basins: {bmap.optimizer}", 240, x_label="x", y_label="y")
        fig.width = 260
        lab = bmap.label.astype(float)  # -2 diverged, -1 not converged, k: the k-th minimum
        n = max(1, len(bmap.minima))
        mapper = LinearColorMapper(
            palette=[DIVERGED_COLOR, "#ffffff", *[_color(k) for k in range(n)]], low=-2.5, high=n - 0.5
        )
        x0, x1, y0, y1 = bmap.xs[0], bmap.xs[-1], bmap.ys[0], bmap.ys[-1]
        fig.image(image=[lab], x=x0, y=y0, dw=x1 - x0, dh=y1 - y0, color_mapper=mapper)
        fig.on_event(Tap, lambda ev, m=bmap: self.open_pixel(m, ev.x, ev.y))
        return fig

    def open_pixel(self, bmap: Any, x: float, y: float) -> None:
        i, j = bmap.pixel(x, y)
        self.model.open(self.model.race_of_pixel(bmap, i, j))

    def close(self) -> None:
        self.model.cancel(wait=None)
