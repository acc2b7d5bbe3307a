"""The bilevel panel: bilevel methods raced on a catalog problem (the exact implicit hypergradient, the
value-function penalty with its σ, BO-REP, LV-HBA), the penalty method's bias swept over σ, and SSO
beside SGD with its two oracle counts apart. Every run is a cancellable job off the page's loop; every
figure says what it shows and what it cost, on a log axis floored at :data:`app.figures.FLOOR`
(stated), and a diverged method is drawn dashed up to its last finite state, marked and named as
diverged. Model: :mod:`app.bilevel`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, FixedTicker, LogScale, PrintfTickFormatter

from app import bilevel as model
from app.figures import FLOOR, live_range, make_figure, scale_fonts
from app.jobs import Job
from app.lanes import PALETTE
from app.views.base import JobStrip, View, html_escape, swatch
from engine.registry import get_spec
from landscapes.defaults import problem_defaults

DIVERGED = "#222222"


def _caption(what: str, cost: str) -> pn.pane.HTML:
    return pn.pane.HTML(f"<small><b>{html_escape(what)}</b><br>cost: {html_escape(cost)}</small>",
                        margin=(0, 8), sizing_mode="stretch_width")


def _floored(y: np.ndarray) -> np.ndarray:
    return np.maximum(np.asarray(y, dtype=np.float64), FLOOR)


SHORT = {"implicit_hypergradient": "exact (implicit)", "penalty_bilevel": "penalty", "bo_rep": "BO-REP",
         "lv_hba": "LV-HBA"}
"""Short names: the panel sits in a ~470 px column beside the race."""


def short(method: str) -> str:
    return SHORT.get(method, get_spec(method).label)


def _legend_below(fig: Any) -> Any:
    """The legend under the plot, one row (clicking an entry hides its curve): none over the data."""
    if fig.legend:
        leg = fig.legend[0]
        leg.orientation, leg.click_policy, leg.label_text_font_size = "horizontal", "hide", "9pt"
        leg.spacing, leg.padding, leg.margin = 4, 2, 2
        fig.add_layout(leg, "below")
    return fig


def color(method: str) -> str:
    """A method keeps its colour whichever others are ticked."""
    k = model.METHODS.index(method) if method in model.METHODS else len(model.METHODS)
    return PALETTE[k % len(PALETTE)]


def legend(run: model.MethodRun) -> str:
    label = short(run.optimizer)
    if run.hyperparameters.get("closed_form"):
        label += " (closed form: cost not counted)"
    if "sigma" in run.hyperparameters:
        label += f" σ={run.hyperparameters['sigma']:g}"
    return label + (f" — {run.status.split(':')[0]}" if run.diverged else "")


def _curve(fig: Any, x: np.ndarray, y: np.ndarray, run: model.MethodRun, color: str) -> Any:
    """One method's line (named after it); dashed and ended by an x where it diverged."""
    src = ColumnDataSource(dict(x=np.asarray(x, dtype=np.float64), y=np.asarray(y, dtype=np.float64)))
    r = fig.line("x", "y", source=src, color=color, line_width=2, legend_label=legend(run),
                 line_dash="dashed" if run.diverged else "solid", name=run.optimizer)
    if run.diverged and len(src.data["x"]):
        fig.scatter([src.data["x"][-1]], [src.data["y"][-1]], marker="x", size=12, color=DIVERGED,
                    line_width=3)
    return r


def _curves(fig: Any, result: model.BilevelResult, xy: Any) -> Any:
    live = []
    for run in result.methods:
        x, y = xy(run)
        r = _curve(fig, x, y, run, color(run.optimizer))
        if not run.diverged:
            live.append(r)
    live_range(fig, live)  # a diverged method never stretches the axis
    return _legend_below(fig)


def objective_figure(result: model.BilevelResult, problem: Any) -> Any:
    """Φ(x_t) − Φ(x*) against oracle units spent, log axis floored at FLOOR."""
    best = float(problem.minima[0].value)
    fig = make_figure("upper objective Φ(x_t) − Φ(x*)", 250, log_y=True, x_label="oracle units",
                      y_label="Φ(x_t) − Φ(x*)")
    return _curves(fig, result, lambda r: (r.units, _floored(r.hyperobjective - best)))


def gap_figure(result: model.BilevelResult) -> Any:
    fig = make_figure("lower-level gap g(x_t, y_t) − min_y g(x_t, y)", 250, log_y=True,
                      x_label="oracle units", y_label="lower-level gap")
    return _curves(fig, result, lambda r: (r.units, _floored(r.lower_gap)))


def error_figure(result: model.BilevelResult) -> Any:
    """Step t's hypergradient error at the units spent once step t is taken."""
    fig = make_figure("hypergradient error |h_t − ∇Φ(x_t)|", 250, log_y=True, x_label="oracle units",
                      y_label="|h_t − ∇Φ(x_t)|")
    return _curves(fig, result, lambda r: (r.units[1:], _floored(r.hypergradient_error)))


def trajectory_figure(result: model.BilevelResult, problem: Any) -> Any:
    """The (x, y) plane of a 2-D problem: y*(x), the solution, each method's path; else x_t vs units."""
    x_star = float(problem.solution[0])
    if problem.dim != 2:
        fig = make_figure("upper variable x_t (x* dashed)", 250, x_label="oracle units", y_label="x")
        fig.line([0, max([float(r.units[-1]) for r in result.methods if len(r.units)] + [1.0])], [x_star] * 2,
                 color="black", line_dash="dashed")
        return _curves(fig, result, lambda r: (r.units, r.upper[:, 0]))
    import torch

    (x0, y0), (x1, y1) = problem.bounds.low, problem.bounds.high
    fig = make_figure("trajectories in (x, y); y = y*(x) grey, solution ★", 250, x_label="x (upper)",
                      y_label="y (lower)", x_range=(x0, x1), y_range=(y0, y1))
    grid = torch.linspace(x0, x1, 200, dtype=torch.float64)[:, None]
    with torch.no_grad():
        curve = problem.lower_solution(grid)[:, 0].numpy()
    fig.line(grid[:, 0].numpy(), curve, color="#999999", line_width=3)
    fig.scatter([x_star], [problem.minima[0].x[1]], marker="star", size=16, color="gold", line_color="black")
    for run in result.methods:
        _curve(fig, run.upper[:, 0], run.lower[:, 0], run, color(run.optimizer))
    return _legend_below(fig)


def sweep_figure(sweep: model.Sweep) -> Any:
    fig = make_figure("penalty bias |x_σ − x*| vs σ", 250, log_y=True, x_label="penalty parameter σ",
                      y_label="|x_σ − x*|")
    fig.x_scale = LogScale()
    fig.xaxis.ticker = FixedTicker(ticks=sweep.sigmas.tolist())  # each sigma labelled
    fig.xaxis.formatter = PrintfTickFormatter(format="%.3g")
    fig.line(sweep.sigmas, _floored(sweep.bias), color=PALETTE[1], line_width=2, legend_label="measured",
             name="bias")
    fig.scatter(sweep.sigmas, _floored(sweep.bias), color=PALETTE[1], size=8)
    ref = sweep.bias[0] * sweep.sigmas / sweep.sigmas[0]
    fig.line(sweep.sigmas, _floored(ref), color="black", line_dash="dashed", legend_label="∝ σ (O(σ) bias)")
    return _legend_below(fig)


def sso_figure(traces: tuple[Any, Any], column: str, label: str) -> Any:
    fig = make_figure(f"training loss vs {label}", 250, log_y=True, x_label=label,
                      y_label="full training loss")
    for k, tr in enumerate(traces):
        x = getattr(tr, column)
        fig.line(x, _floored(tr.loss), color=PALETTE[k], line_width=2, legend_label=tr.optimizer.upper(),
                 name=tr.optimizer)
    return _legend_below(fig)


def methods_table(result: model.BilevelResult) -> str:
    """Per method: how it ended, what it spent (and the lower level's share), where it got to."""
    rows = []
    for r in result.methods:
        calls = int(r.gradients[-1] + r.hvps[-1]) if r.steps else 0
        inner = int(r.inner_oracles[-1]) if r.steps else 0
        share = f" ({inner / calls:.0%})" if calls else ""
        x_star = np.asarray(result.landscape.solution)
        dist = float(np.linalg.norm(r.upper[-1] - x_star)) if len(r.upper) else float("nan")
        err = float(r.hypergradient_error[-1]) if r.steps else float("nan")
        end = r.status.split(":")[0] if r.diverged else f"{r.steps}"
        rows.append(f"<tr><td>{swatch(color(r.optimizer))}{html_escape(short(r.optimizer))}</td><td>{end}</td>"
                    f"<td>{float(r.units[-1]) if len(r.units) else 0:,.0f}</td><td>{calls:,}</td>"
                    f"<td>{inner:,}{share}</td><td>{dist:.3g}</td><td>{err:.3g}</td></tr>")
    return ("<style>.bilevel-methods td{white-space:nowrap;padding:1px 5px}"
            ".bilevel-methods th{padding:1px 5px;text-align:left}</style>"
            "<table class='bilevel-methods' style='font-size:0.8em;border-collapse:collapse'><tr>"
            "<th>method</th><th>steps</th><th title='oracle units'>units</th>"
            "<th title='gradients and Hessian-vector products'>calls</th>"
            "<th title='calls spent on the lower level (share)'>lower level</th><th>|x_T − x*|</th>"
            "<th title='|h_T - grad Phi(x_T)|, the last step'>hypergrad. error</th></tr>"
            f"{''.join(rows)}</table>"
            "<small>calls: gradients + HVPs; lower level: the calls spent on it (share)</small>")


def counts_table(counts: list[model.SSOCounts]) -> str:
    rows = "".join(f"<tr><td>{c.optimizer.upper()}</td><td>{c.loss_gradients:,}</td>"
                   f"<td>{c.model_steps:,}</td><td>{c.function_values:,}</td><td>{c.final_loss:.4g}</td></tr>"
                   for c in counts)
    return ("<table class='sso-counts' style='font-size:0.85em;border-collapse:collapse'><tr>"
            "<th>optimizer</th><th>loss gradients</th><th>model steps (surrogate gradients)</th>"
            f"<th>function values</th><th>final loss</th></tr>{rows}</table>")


class BilevelView(View):
    title = "bilevel & SSO"
    area = "instrument"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        first = model.PROBLEMS[0]
        self.problem = pn.widgets.Select(label="bilevel problem", options=list(model.PROBLEMS), value=first,
                                         width=160)
        self.methods = pn.widgets.CheckBoxGroup(label="methods", options={short(m): m for m in model.METHODS},
                                                value=list(model.METHODS), inline=True)
        self.steps = pn.widgets.IntInput(label="steps", value=model.STEPS.get(first, 200), width=80)
        self.sigma = pn.widgets.FloatInput(label="penalty σ", value=0.1, width=80)
        self.run_button = pn.widgets.Button(label="Run methods", color="primary", width=110,
                                            margin=(22, 5, 5, 5))
        self.sweep_steps = pn.widgets.IntInput(label="sweep steps", value=model.SWEEP_STEPS, width=90)
        self.sweep_button = pn.widgets.Button(label="Bias vs σ", width=90, margin=(22, 5, 5, 5))
        self.sso_problem = pn.widgets.Select(label="SSO problem", options=list(model.SSO_PROBLEMS), width=160)
        self.sso_inner = pn.widgets.IntInput(label="inner steps m", value=10, width=90)
        self.sso_eta = pn.widgets.FloatInput(label="η", value=model.SSO_ETA[self.sso_problem.value], width=70)
        self.sso_steps = pn.widgets.IntInput(label="SSO steps", value=60, width=80)
        self.sso_button = pn.widgets.Button(label="SSO vs SGD", width=100, margin=(22, 5, 5, 5))
        self.run_button.on_click(lambda _: self.run())
        self.sweep_button.on_click(lambda _: self.sweep())
        self.sso_button.on_click(lambda _: self.sso())
        self.problem.param.watch(lambda e: setattr(self.steps, "value", model.STEPS.get(e.new, 200)), "value")
        self.sso_problem.param.watch(lambda e: setattr(self.sso_eta, "value", model.SSO_ETA[e.new]), "value")
        self.jobs = JobStrip()
        self.message = pn.pane.Str("", styles={"font-size": "0.85em", "color": "#b00"}, visible=False)
        self.figures = pn.Column(sizing_mode="stretch_width")
        self.sweep_row = pn.Column(sizing_mode="stretch_width")
        self.sso_row = pn.Column(sizing_mode="stretch_width")
        self.shown: dict[str, Any] = {}
        """The figures drawn last, by name ("objective", "gap", "error", "trajectory", "sweep", "sso_*")."""
        self.counts: list[model.SSOCounts] = []
        self.big = False
        head = {"font-size": "0.9em"}
        self.panel = pn.Column(
            pn.pane.HTML("<b>Bilevel</b>: min<sub>x</sub> f(x, y*(x)), y*(x) = argmin<sub>y</sub> g(x, y)",
                         styles=head, margin=(0, 5)),
            # rows of <= 300 px: they fit the instrument column at 1024 px (a row of 350 put σ past the edge)
            pn.Row(self.problem, self.steps), self.methods, pn.Row(self.sigma, self.run_button),
            pn.Row(self.sweep_steps, self.sweep_button),
            self.jobs.panel, self.message, self.figures, self.sweep_row,
            pn.pane.HTML("<b>SSO</b> (target-space surrogate) beside SGD, full batch", styles=head,
                         margin=(10, 5, 0, 5)),
            pn.Row(self.sso_problem, self.sso_inner), pn.Row(self.sso_eta, self.sso_steps, self.sso_button),
            self.sso_row, sizing_mode="stretch_width")

    # -- actions ------------------------------------------------------------------------------------
    def _start(self, title: str, work: Any, wait: bool) -> Job | None:
        if self.jobs.busy:
            self._refuse("a bilevel or SSO run is already going: wait for it or cancel it")
            return None
        self.message.object, self.message.visible = "", False
        job = self.jobs.start(Job(title, work))
        if wait:
            job.wait()
        return job

    def _refuse(self, text: str) -> None:
        self.message.object, self.message.visible = text, True
        self.notify(text)

    def run(self, wait: bool = False) -> Job | None:
        """Race the ticked methods on the chosen problem (bad settings: a message, nothing started)."""
        name, steps = self.problem.value, self.steps.value
        try:
            planned = model.plan(name, list(self.methods.value), steps, self.sigma.value)
        except ValueError as exc:
            self._refuse(str(exc))
            return None
        return self._start(f"bilevel methods on {name}",
                           lambda job: model.run_methods(name, planned, steps, self._progress(job)), wait)

    def sweep(self, wait: bool = False) -> Job | None:
        """The penalty method's bias at σ and three smaller values, half a decade apart."""
        name, steps = self.problem.value, self.sweep_steps.value
        try:
            model.check_sweep_problem(name)
            sigmas = model.sweep_sigmas(self.sigma.value)
            model.check_steps(steps, "sweep steps")
            hp = model.plan(name, ["penalty_bilevel"], 1, self.sigma.value)[0][1]
        except ValueError as exc:
            self._refuse(str(exc))
            return None
        return self._start(f"penalty bias on {name}", lambda job: model.penalty_sweep(
            name, sigmas, steps, hp, self._progress(job)), wait)

    def sso(self, wait: bool = False) -> Job | None:
        """SSO and SGD (at the problem's SGD default) on the same minibatches."""
        name, steps = self.sso_problem.value, self.sso_steps.value
        hp = {"inner_steps": self.sso_inner.value, "eta": self.sso_eta.value}
        lr = problem_defaults(name, "sgd").get("lr", get_spec("sgd").defaults()["lr"])
        try:
            model.check_steps(steps, "SSO steps")
            get_spec("sso").validate(hp)
        except ValueError as exc:
            self._refuse(str(exc))
            return None
        return self._start(f"SSO vs SGD on {name}",
                           lambda job: model.sso_comparison(name, steps, hp, lr, self._progress(job)), wait)

    @staticmethod
    def _progress(job: Job) -> Any:
        def report(fraction: float, message: str) -> None:
            job.progress(fraction, message)
            job.check()
        return report

    # -- the page's refresh -------------------------------------------------------------------------
    def refresh(self) -> None:
        job = self.jobs.refresh()
        if job is None:
            return
        if job.error:
            self._refuse(job.error)
            return
        result = job.result
        if isinstance(result, model.BilevelResult):
            self.draw(result)
        elif isinstance(result, model.Sweep):
            self.draw_sweep(result)
        else:
            self.draw_sso(result)
        if self.big:
            self.present(True)

    def draw(self, result: model.BilevelResult) -> None:
        if result.landscape is None:
            result.landscape = model.build_problem(result.problem)
        problem = result.landscape
        units = sum(float(r.units[-1]) for r in result.methods if len(r.units))
        grads = sum(int(r.gradients[-1]) for r in result.methods if r.steps)
        hvps = sum(int(r.hvps[-1]) for r in result.methods if r.steps)
        diverged = [legend(r) for r in result.methods if r.diverged]
        cost = (f"{len(result.methods)} methods x {result.steps} steps on {problem.title}: {units:,.0f} "
                f"oracle units ({grads:,} gradients, {hvps:,} HVPs), {result.seconds:.1f} s.")
        if diverged:
            cost += f" Diverged (dashed, x at the last finite state): {', '.join(diverged)}."
        floor = f"; values below {FLOOR:g} drawn at {FLOOR:g}"
        self.shown = {"objective": objective_figure(result, problem), "gap": gap_figure(result),
                      "error": error_figure(result), "trajectory": trajectory_figure(result, problem)}
        what = {
            "objective": f"upper objective above its bilevel optimum Φ(x*) = {problem.minima[0].value:.6g}, "
                         f"against oracle units spent{floor}",
            "gap": "how far y_t is from solving the lower level at x_t (0 on the curve y = y*(x))" + floor,
            "error": "distance of each step's hypergradient estimate from the exact ∇Φ(x_t)" + floor,
            "trajectory": ("the plane (x, y): each method's (x_t, y_t) from the start; the bilevel solution "
                           "lies on y = y*(x), not at the minimum of f" if problem.dim == 2 else
                           "the upper variable x = log λ; dashed: the bilevel solution x*"),
        }
        used = "; ".join(f"{short(r.optimizer)}: {model.settings_text(r.hyperparameters)}"
                         for r in result.methods)
        panes: list[Any] = [pn.pane.HTML(methods_table(result), sizing_mode="stretch_width"),
                            pn.pane.HTML(f"<small>x-axes: {html_escape(model.UNIT)}.<br>settings: "
                                         f"{html_escape(used)}</small>", margin=(0, 8))]
        for k, fig in self.shown.items():
            panes += [pn.pane.Bokeh(fig, sizing_mode="stretch_width"), _caption(what[k], cost)]
        self.figures.objects = panes

    def draw_sweep(self, sweep: model.Sweep) -> None:
        fig = self.shown["sweep"] = sweep_figure(sweep)
        slope = np.polyfit(np.log(sweep.sigmas), np.log(np.maximum(sweep.bias, FLOOR)), 1)[0]
        g = int(sweep.gradients.sum())
        below = f"; values below {FLOOR:g} drawn at {FLOOR:g}" if sweep.bias.min() < FLOOR else ""
        units = model.COSTS.units({"gradients": g, "function_values": g})  # each gradient with its forward
        self.sweep_row.objects = [pn.Column(pn.pane.Bokeh(fig), _caption(
            f"where the penalty method stops after {sweep.steps} upper steps of {model.SWEEP_LR:g}, per σ: "
            f"distance from the bilevel solution x* (log-log slope {slope:.2f}; Kwon et al.: O(σ), slope 1)"
            f"{below}",
            f"{len(sweep.sigmas)} runs x {sweep.steps} steps, {g:,} gradients ({units:,.0f} oracle units) in "
            f"{sweep.seconds:.1f} s"))]

    def draw_sso(self, traces: tuple[Any, Any]) -> None:
        self.counts = [model.SSOCounts.of(t) for t in traces]
        a = self.shown["sso_gradients"] = sso_figure(traces, "loss_gradients", "loss gradients")
        b = self.shown["sso_passes"] = sso_figure(traces, "model_passes",
                                                  "backward passes (loss + model steps)")
        used = " | ".join(f"{t.optimizer.upper()} {model.settings_text(t.hyperparameters)}" for t in traces)
        cost = (" | ".join(f"{c.optimizer.upper()}: {c.loss_gradients:,} loss gradients, {c.model_steps:,} "
                           f"model steps, {c.function_values:,} function values" for c in self.counts)
                + f" ({len(traces[0].loss) - 1} steps each; {used})"
                + ". A model step is a backward pass through the model on SSO's surrogate, never the loss.")
        self.sso_row.objects = [
            pn.pane.HTML(counts_table(self.counts), sizing_mode="stretch_width"),
            pn.pane.Bokeh(a), _caption("full training loss against loss gradients only: SSO's inner steps "
                                       "look free here", cost),
            pn.pane.Bokeh(b), _caption("the same runs against every backward pass: what SSO's inner steps "
                                       "cost", cost)]

    def present(self, big: bool) -> None:
        self.big = big
        for fig in self.shown.values():
            scale_fonts(fig, big)

    def close(self) -> None:
        self.jobs.close()
