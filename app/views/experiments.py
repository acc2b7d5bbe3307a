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
from panel.io.state import set_curdoc

from app.experiments import ExperimentModel
from app.figures import legend_below, make_figure
from app.views.base import View, html_escape
from engine.experiments.analysis import LOG_FLOOR
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
    """Final loss vs lr per optimizer: the median over seeds, the 25-75% seed band. A configuration
    whose median trial diverged is an "x" on the top edge, not a point: its "loss" is where the run
    was stopped (1e20 or more), and drawn as a value it would stretch the axis over 20 decades and
    read as a result. The axis spans the configurations that did not diverge; a band reaching past
    it is cut at the edge."""
    s = model.sensitivity()
    fig = make_figure("sensitivity: final loss vs lr", 260, log_y=True, x_label="lr", y_label="final loss")
    fig.x_scale = LogScale()  # learning rates span decades
    fig.xaxis.ticker, fig.xaxis.formatter = LogTicker(), LogTickFormatter()
    if not len(s):
        return fig
    s = s[s["hyperparameter"] == "lr"]
    lost = 2 * s["diverged"].to_numpy() > s["n"].to_numpy()
    kept = s[~lost]
    if len(kept):
        low, high = np.nanmin(kept[["low", "median"]].to_numpy()), np.nanmax(kept["median"].to_numpy())
        low = max(low, LOG_FLOOR)  # an exact 0 (a minimum reached) sits on the bottom edge
        low, high = low / 3, max(high, low) * 30
        fig.y_range.start, fig.y_range.end = low, high
    else:
        fig.y_range.start, fig.y_range.end = 1e-3, 1e3
    top = fig.y_range.end / 2
    for k, (entry, e) in enumerate(s.groupby("entry", sort=False)):
        e = e.sort_values("value")
        out = (2 * e["diverged"] > e["n"]).to_numpy()
        cols = {c: e[c].to_numpy(dtype=float) for c in ("value", "median", "low", "high")}
        for c in ("median", "low", "high"):
            cols[c] = np.where(out, np.nan, np.clip(cols[c], fig.y_range.start, fig.y_range.end))
        src = ColumnDataSource(cols)
        fig.varea(x="value", y1="low", y2="high", source=src, fill_alpha=0.2, color=_color(k))
        fig.line(x="value", y="median", source=src, color=_color(k), line_width=2, legend_label=str(entry))
        fig.scatter(x="value", y="median", source=src, color=_color(k), size=5)
        if out.any():
            fig.scatter(cols["value"][out], np.full(int(out.sum()), top / 2**k), marker="x", size=10,
                        line_width=2, color=_color(k), legend_label=f"{entry} diverged")
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
    # each curve runs on to the right edge at its last value: rho is a step function of every tau,
    # and with one corner (all the solved ratios 1) nothing was drawn at all
    finite = p["tau"][np.isfinite(p["tau"])]
    end = max(2.0, 1.2 * float(finite.max())) if len(finite) else 2.0
    for k, (entry, e) in enumerate(p.groupby("entry", sort=False)):
        e = e[np.isfinite(e["tau"])]
        tau = np.append(e["tau"].to_numpy(dtype=float), end)
        fig.step(
            tau,
            np.append(e["fraction"].to_numpy(), e["fraction"].to_numpy()[-1:]),
            mode="after",
            color=_color(k),
            line_width=2,
            legend_label=str(entry),
        )
    fig.y_range.start, fig.y_range.end = -0.03, 1.03  # a line at 0 or 1 shows, not hidden by the frame
    legend_below(fig)
    return fig


def profile_caption(model: ExperimentModel) -> str:
    """What the profile shows, or why it is empty (no target, or none reached)."""
    target = model.spec.target if model.spec is not None else None
    if target is None:
        return "no performance profile: this problem has no known minimum; type a target loss"
    if not len(model.profile()):
        return f"no performance profile: no trial reached the target loss {target:.4g}"
    return f"fraction of seeds reaching loss {target:.4g} within tau x the fastest (oracle units)"


def basin_summary(bmap: Any) -> str:
    """What a basin map's colours mean and how many starts each class holds: a map mostly white
    says "not there yet after N steps" (raise the steps), not "no basin"."""
    share = {k: 100.0 * bmap.fractions().get(k, 0.0) for k in (DIVERGED, NOT_CONVERGED)}
    hp = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in bmap.hyperparameters.items())
    return (
        f"{bmap.optimizer}{f' ({hp})' if hp else ''}: a start's colour is the known minimum (star) "
        f"it is within {bmap.tol:g} of after {bmap.n_steps} steps; "
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
            widgets={
                "budget": {"type": pn.widgets.FloatInput, "width": 180},
                "target": {"type": pn.widgets.FloatInput, "width": 180},
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
        # one figure a row and the settings in two columns above them: the instrument column is
        # ~460 px wide, and settings beside two figures a row squeezed each figure to ~150 px
        self.figures = pn.Column(sizing_mode="stretch_width")
        self.basin_row = pn.GridBox(ncols=2, sizing_mode="stretch_width")
        for w in settings.layout.objects:
            w.width = 200
        self.panel = pn.Column(
            pn.FlexBox(*settings.layout.objects, sizing_mode="stretch_width"),
            pn.FlexBox(self.run_button, self.cancel_button, self.basin_button, self.best_button,
                       sizing_mode="stretch_width"),
            self.bar,
            self.text,
            self.figures,
            self.basin_row,
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
        shown = [
            (sensitivity_figure(m), "final loss vs learning rate: median over seeds, band 25-75%"),
            (tuned_figure(m), "defaults vs best lr found (same budget), 95% bootstrap re-selecting"),
            (profile_figure(m), profile_caption(m)),
        ]
        self.figures.objects = [
            pn.Column(pn.pane.Bokeh(fig, sizing_mode="stretch_width"), _caption(what, cost),
                      sizing_mode="stretch_width")
            for fig, what in shown
        ]

    def draw_basins(self) -> None:
        maps = list(self.model.basins)
        self._shown_basins = len(maps)
        panes = []
        for bmap in maps:
            panes.append(
                pn.Column(
                    pn.pane.Bokeh(self.basin_figure(bmap), width=210, height=220, sizing_mode="fixed"),
                    _caption(basin_summary(bmap), f"{bmap.filled:,} starts x {bmap.n_steps} steps, "
                             f"{bmap.seconds:.1f} s"),
                    width=220,
                )
            )
        self.basin_row.objects = panes

    def basin_figure(self, bmap: Any) -> Any:
        fig = make_figure(f"basins: {bmap.optimizer}", 220, x_label="x", y_label="y")
        fig.sizing_mode, fig.width = "fixed", 210  # two maps a row in the instrument column
        fig.toolbar_location = None  # it covered the title; a tap needs no tool
        lab = bmap.label.astype(float)  # -2 diverged, -1 not converged, k: the k-th minimum
        n = max(1, len(bmap.minima))
        mapper = LinearColorMapper(
            palette=[DIVERGED_COLOR, "#ffffff", *[_color(k) for k in range(n)]], low=-2.5, high=n - 0.5
        )
        # xs, ys are pixel centres: each pixel spans its centre +- half a spacing (drawn from the
        # first centre to the last, every pixel sat up to half a pixel off its start)
        dx = (bmap.xs[-1] - bmap.xs[0]) / max(1, len(bmap.xs) - 1)
        dy = (bmap.ys[-1] - bmap.ys[0]) / max(1, len(bmap.ys) - 1)
        fig.image(image=[lab], x=bmap.xs[0] - dx / 2, y=bmap.ys[0] - dy / 2, dw=dx * len(bmap.xs),
                  dh=dy * len(bmap.ys), color_mapper=mapper)
        if bmap.minima:
            mx, my = zip(*[m[:2] for m in bmap.minima], strict=True)
            fig.scatter(list(mx), list(my), marker="star", size=11, fill_color=[_color(k) for k in range(n)],
                        line_color="black")
        fig.on_event(Tap, lambda ev, m=bmap, f=fig: self._tapped(f, m, float(ev.x), float(ev.y)))
        return fig

    def _tapped(self, fig: Any, bmap: Any, x: float, y: float) -> None:
        """A click on a map, from Bokeh (outside Panel's session context): opened on the next tick
        as the page's document, so that the new race's cards take the page's resources (built
        without it they linked Panel's CSS from its CDN, which a classroom offline cannot reach)."""
        doc = fig.document
        if doc is None or doc.session_context is None:
            self.open_pixel(bmap, x, y)
            return

        def later() -> None:
            with set_curdoc(doc), pn.io.hold(doc):
                self.open_pixel(bmap, x, y)
        doc.add_next_tick_callback(later)

    def open_pixel(self, bmap: Any, x: float, y: float) -> None:
        i, j = bmap.pixel(x, y)
        self.model.open(self.model.race_of_pixel(bmap, i, j))

    def close(self) -> None:
        self.model.cancel(wait=None)
