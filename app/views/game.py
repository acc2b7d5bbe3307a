"""The simplex-game panel: rock-paper-scissors (and its biased variant) played by multiplicative
weights, optimistic multiplicative weights and entropic mirror prox from one start, each player's
strategy drawn on its probability triangle (vertices = actions, the Nash equilibrium starred) with
the duality gap and the KL divergence to the equilibrium against the step, on log axes.

The claim it makes visible (Daskalakis & Panageas 2019; Bailey & Piliouras 2018; Tiapkin et al.
2025, "Accelerating Nash Learning from Human Feedback via Mirror Prox"): on the unregularized game
the *last iterate* of multiplicative weights spirals away from the equilibrium (its KL grows; only
its running average converges), while optimistic weights and mirror prox converge; with an entropic
regularization tau > 0 every method converges linearly. The plays are computed by
:func:`landscapes.simplex_games.play` on a job thread (progress, Cancel), bounded by
:func:`engine.limits.check_run` before anything starts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, Label

from app.figures import make_figure
from app.jobs import Job
from app.lanes import PALETTE
from app.views.base import JobStrip, View, html_escape, swatch
from engine.limits import check_run
from engine.registry import get_spec
from engine.run import LaneConfig, RunConfig
from landscapes import get_landscape
from landscapes.simplex import barycentric
from landscapes.simplex_games import MAX_TAU, GamePlay, SimplexGame, play

GAMES = {"rps_game": "rock-paper-scissors", "biased_rps_game": "biased rock-paper-scissors"}
ACTIONS = ("rock", "paper", "scissors")
"""Rows and columns of both built-in payoff matrices, in order (landscapes.simplex_games.RPS)."""
METHODS = ("exp_gradient", "optimistic_mw", "mirror_prox_entropic")
"""The entropic methods: each keeps both players on their simplices (the Euclidean ones leave it)."""
COLORS = dict(zip(METHODS, PALETTE, strict=False))
"""The race's lane colours in the classroom presets' order (multiplicative weights blue, optimistic
orange, mirror prox green), so the tab and the race's curves agree."""
WIDTHS = {"exp_gradient": 2.0, "optimistic_mw": 4.0, "mirror_prox_entropic": 1.5}
"""Optimistic weights and mirror prox nearly coincide on these games: the one drawn first is wider,
so both stay visible where they overlap."""
SHORT = {
    "exp_gradient": "multiplicative weights",
    "optimistic_mw": "optimistic MW",
    "mirror_prox_entropic": "mirror prox",
}
MAX_STEPS = 5_000
"""Steps per method: ~1 ms each on one core (measured ~1-2 ms), so a study stays within seconds."""
FLOOR = float(np.finfo(np.float64).eps)
"""Log axes cannot show 0: the gap and the KL are computed in float64, so a value below machine
epsilon (2.2e-16) is rounding noise; it is drawn at this floor and the caption says so."""
TRIANGLE = barycentric(np.eye(3))  # rock (0, 0), paper (1, 0), scissors (1/2, sqrt(3)/2)


@dataclass(frozen=True)
class GameStudy:
    """What to play: a built-in game, its regularization, the methods, one step size, the steps."""

    game: str = "rps_game"
    tau: float = 0.0
    methods: tuple[str, ...] = METHODS
    lr: float = 0.1
    steps: int = 1_000

    def check(self) -> SimplexGame:
        """Refuse bad input in the page's terms before any work starts; returns the game."""
        if self.game not in GAMES:
            raise ValueError(f"pick a game: {', '.join(GAMES)} (got {self.game!r})")
        if not self.methods:
            raise ValueError("pick at least one method to play")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} cannot play on the simplices; pick from {', '.join(METHODS)}"
            )
        if (
            not isinstance(self.steps, int)
            or isinstance(self.steps, bool)
            or not 1 <= self.steps <= MAX_STEPS
        ):
            raise ValueError(f"steps must be a whole number from 1 to {MAX_STEPS:,} (got {self.steps!r})")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and 0.0 < self.lr <= 10.0):
            raise ValueError(f"the step size must be a number in (0, 10] (got {self.lr!r})")
        if not (isinstance(self.tau, (int, float)) and np.isfinite(self.tau) and 0.0 <= self.tau <= MAX_TAU):
            raise ValueError(
                f"the regularization tau must be a number in [0, {MAX_TAU:g}] (got {self.tau!r})"
            )
        config = RunConfig(lanes=tuple(LaneConfig(m, {"lr": float(self.lr)}) for m in self.methods))
        check_run(
            self.game,
            {"tau": float(self.tau)},
            config,
            ticks=self.steps * len(self.methods),
            what="this game study",
        )
        return get_landscape(self.game, tau=float(self.tau))


def run_study(
    study: GameStudy, job: Job | None = None, done: list | None = None
) -> tuple[SimplexGame, dict[str, GamePlay], float]:
    """Play every method of ``study`` (checked first) from the game's start; returns the game, the
    plays by method and the seconds taken. ``job`` gets progress; Cancel stops it between steps;
    each finished ``(method, play)`` is appended to ``done`` (a list: appends are atomic), so the
    page can draw it before the others finish."""
    game = study.check()
    t0 = time.perf_counter()
    plays = {}
    for i, method in enumerate(study.methods):
        if job is not None:
            job.progress(i / len(study.methods), f"{SHORT[method]}: {study.steps:,} steps")
        plays[method] = play(game, method, study.steps, {"lr": float(study.lr)})
        if done is not None:
            done.append((method, plays[method]))
    return game, plays, time.perf_counter() - t0


def _empty_curves() -> dict[str, list]:
    return {k: [] for k in ("step", "gap", "gap_drawn", "average_drawn", "kl", "kl_drawn")}


class GameView(View):
    title = "game"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.game = pn.widgets.Select(label="game", options={v: k for k, v in GAMES.items()}, width=180)
        self.tau = pn.widgets.FloatInput(
            label="tau (entropic reg.)", value=0.0, start=0.0, end=MAX_TAU, step=0.05, width=130
        )
        self.methods = pn.widgets.MultiChoice(
            label="methods", value=list(METHODS), width=310, options={SHORT[m]: m for m in METHODS}
        )
        self.lr = pn.widgets.FloatInput(
            label="step size η", value=0.1, start=1e-4, end=10.0, step=0.01, width=100
        )
        self.steps = pn.widgets.IntInput(
            label="steps", value=1_000, start=1, end=MAX_STEPS, step=100, width=100
        )
        self.button = pn.widgets.Button(label="Play", color="primary", width=80, margin=(22, 5, 5, 5))
        self.button.on_click(lambda _: self.request(self.study()))
        self.jobs = JobStrip()
        self.triangles = {who: self._triangle(who) for who in ("row", "column")}
        self.curves = {m: ColumnDataSource(_empty_curves()) for m in METHODS}
        self.gap_fig = make_figure(
            "duality gap: last iterate (solid), running average (dashed)", 210, log_y=True, y_label="gap"
        )
        self.kl_fig = make_figure("KL to the equilibrium (last iterate)", 210, log_y=True, y_label="KL")
        for m in METHODS:
            src, color, width = self.curves[m], COLORS[m], WIDTHS[m]
            self.gap_fig.line("step", "gap_drawn", source=src, color=color, line_width=width, alpha=0.9)
            self.gap_fig.line(
                "step", "average_drawn", source=src, color=color, line_dash="dashed", line_width=1
            )
            self.kl_fig.line("step", "kl_drawn", source=src, color=color, line_width=width, alpha=0.9)
        self.legend = pn.pane.HTML(
            "<small>"
            + " &nbsp; ".join(f"{swatch(COLORS[m])}{SHORT[m]}" for m in METHODS)
            + " &nbsp; ★ Nash equilibrium &nbsp; ○ start</small>",
            margin=(0, 8),
            sizing_mode="stretch_width",
        )
        self.caption = pn.pane.Markdown(
            "Pick methods and a step size, then press Play.",
            sizing_mode="stretch_width",
            styles={"font-size": "0.85em"},
        )
        self.plays: dict[str, GamePlay] = {}
        self.shown: GameStudy | None = None
        self._stale = True  # nothing drawn for this problem yet: the first refresh on screen plays
        self._partial: tuple[GameStudy, SimplexGame, list] | None = None
        triangles = pn.Row(
            *(pn.pane.Bokeh(t[0], sizing_mode="stretch_width") for t in self.triangles.values()),
            sizing_mode="stretch_width",
        )
        self.panel = pn.Column(
            pn.FlexBox(self.game, self.tau, self.lr, self.steps, self.methods, self.button),
            self.jobs.panel,
            self.legend,
            triangles,
            pn.pane.Bokeh(self.gap_fig, sizing_mode="stretch_width"),
            pn.pane.Bokeh(self.kl_fig, sizing_mode="stretch_width"),
            self.caption,
            sizing_mode="stretch_width",
        )

    def _triangle(self, who: str) -> tuple[Any, dict[str, ColumnDataSource], tuple[ColumnDataSource, ...]]:
        fig = make_figure(
            "row player x (minimizes)" if who == "row" else "column player y (maximizes)",
            220,
            x_label="",
            tools="pan,wheel_zoom,reset,save",
            match_aspect=True,
            x_range=(-0.15, 1.15),
            y_range=(-0.12, 0.98),
        )
        fig.axis.visible = False
        fig.grid.visible = False
        corners = np.vstack([TRIANGLE, TRIANGLE[:1]])
        fig.line(corners[:, 0], corners[:, 1], color="#444444", line_width=1.5)
        for (x, y), name, dy in zip(TRIANGLE, ACTIONS, (-0.09, -0.09, 0.03), strict=True):
            fig.add_layout(Label(x=x, y=y + dy, text=name, text_align="center", text_font_size="11px"))
        paths = {m: ColumnDataSource({"x": [], "y": [], "step": []}) for m in METHODS}
        for m in METHODS:
            fig.line("x", "y", source=paths[m], color=COLORS[m], line_width=WIDTHS[m] / 2 + 0.5, alpha=0.85)
        nash = ColumnDataSource({"x": [], "y": []})
        fig.scatter(
            "x",
            "y",
            source=nash,
            marker="star",
            size=16,
            color="gold",
            line_color="black",
        )
        start = ColumnDataSource({"x": [], "y": []})
        fig.scatter("x", "y", source=start, size=7, color="white", line_color="black")
        return fig, paths, (nash, start)

    # -- what the page tells the view ---------------------------------------------------------------
    def applies(self) -> bool:
        return getattr(self.session.problem_obj, "geometry", None) == "simplex_game"

    def set_problem(self) -> None:
        """A new run: take the game, its tau and the race's entropic methods and step size as defaults."""
        self.jobs.close()
        if not self.applies():
            return
        applied = getattr(self.session, "_applied", None)
        if applied is not None and applied.problem in GAMES:
            self.game.value = applied.problem
            self.tau.value = float(dict(applied.options).get("tau", 0.0))
        racing = [ln for ln in self.session.lanes if ln.optimizer in METHODS]
        if racing:
            self.methods.value = list(dict.fromkeys(ln.optimizer for ln in racing))
            self.lr.value = float(racing[0].values().get("lr", self.lr.value))
        self._stale = True

    def study(self) -> GameStudy:
        return GameStudy(
            game=self.game.value,
            tau=self.tau.value,
            methods=tuple(self.methods.value),
            lr=self.lr.value,
            steps=self.steps.value,
        )

    def request(self, study: GameStudy, wait: bool = False) -> Job | None:
        """Play ``study`` off the event loop; bad input is refused with a message, the plot kept."""
        try:
            game = study.check()
        except ValueError as exc:
            self.notify(f"game: {exc}")
            self.caption.object = f"**Not played:** {html_escape(exc)} (the picture is the last study's)."
            return None
        if self.jobs.busy:
            self.notify("game: a study is already being played (Cancel it first)")
            return None
        self._stale = False
        done: list = []
        self._partial = (study, game, done)
        job = self.jobs.start(Job("game study", lambda job: (study, *run_study(study, job, done))))
        if wait:
            job.wait()
        return job

    def refresh(self) -> None:
        if self._stale and not self.jobs.busy:
            self.request(self.study())
        if self.jobs.busy and self._partial is not None:  # draw each method as soon as it has played
            study, game, done = self._partial
            if done and (
                self.shown is not study or len(done) > len(self.plays)
            ):  # else keep the last picture
                self.show(study, game, dict(done[: len(done)]), None)
        job = self.jobs.refresh()
        if job is None:
            return
        self._partial = None
        if job.error:
            if not job.cancelled:
                self.notify(job.error)
            self.caption.object = f"**{html_escape(job.error)}**; drawn: the methods that finished playing."
            return
        self.show(*job.result)

    def show(
        self, study: GameStudy, game: SimplexGame, plays: dict[str, GamePlay], seconds: float | None
    ) -> None:
        """Draw finished plays (``seconds`` None: the study is still playing the others): both
        triangles, the gap and the KL, and a caption with the numbers."""
        self.plays, self.shown = plays, study
        star = np.asarray(game.equilibrium)
        for who, (_fig, paths, (nash, start)) in self.triangles.items():
            half = slice(0, 3) if who == "row" else slice(3, 6)
            nx, ny = barycentric(star[half])
            nash.data = {"x": [float(nx)], "y": [float(ny)]}
            first = next(iter(plays.values()), None)
            if first is not None:
                sx, sy = (first.x_2d if who == "row" else first.y_2d)[0]
                start.data = {"x": [float(sx)], "y": [float(sy)]}
            for m, src in paths.items():
                p = plays.get(m)
                xy = None if p is None else (p.x_2d if who == "row" else p.y_2d)
                src.data = (
                    {"x": [], "y": [], "step": []}
                    if xy is None
                    else {"x": xy[:, 0], "y": xy[:, 1], "step": p.steps}
                )
        for m, src in self.curves.items():
            p = plays.get(m)
            src.data = (
                _empty_curves()
                if p is None
                else {
                    "step": p.steps,
                    "gap": p.duality_gap,
                    "gap_drawn": np.maximum(p.duality_gap, FLOOR),
                    "average_drawn": np.maximum(p.average_gap, FLOOR),
                    "kl": p.kl_to_equilibrium,
                    "kl_drawn": np.maximum(p.kl_to_equilibrium, FLOOR),
                }
            )
        self.caption.object = self.describe(study, game, plays, seconds)

    def describe(
        self, study: GameStudy, game: SimplexGame, plays: dict[str, GamePlay], seconds: float | None
    ) -> str:
        eq = np.asarray(game.equilibrium)
        fmt = ", ".join
        lines = [
            f"**{GAMES[study.game]}, tau = {study.tau:g}, step size η = {study.lr:g}, "
            f"{study.steps:,} steps from the same start.** Nash equilibrium ★: x* = "
            f"({fmt(f'{v:.3f}' for v in eq[:3])}), y* = ({fmt(f'{v:.3f}' for v in eq[3:])})."
        ]
        for m, p in plays.items():
            grads = (2 if get_spec(m).lookahead else 1) * study.steps
            lines.append(
                f"- {SHORT[m]} ({grads:,} gradients): KL to equilibrium "
                f"{p.kl_to_equilibrium[0]:.3g} → {p.kl_to_equilibrium[-1]:.3g}, last-iterate gap "
                f"{p.duality_gap[-1]:.3g}, running-average gap {p.average_gap[-1]:.3g}"
            )
        lines.append(
            f"\nLog axes; values below {FLOOR:.1e} (float64 machine epsilon: rounding noise) are drawn "
            "at that floor. "
            + (
                f"Computed in {seconds:.1f} s."
                if seconds is not None
                else f"Still playing: {len(plays)} of {len(study.methods)} methods drawn so far."
            )
        )
        return "\n".join(lines)

    def close(self) -> None:
        self.jobs.close()
