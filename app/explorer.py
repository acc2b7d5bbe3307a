"""The live explorer: a race of optimizers on a landscape, controlled while it runs.

``Explorer`` is a ``pn.viewable.Viewer``: the served app (``app/main.py``) and the notebooks embed
the very same object. The UI thread only queues events; a per-explorer
:class:`~engine.worker.RunWorker` thread computes; a periodic callback (20 Hz) drains the records
into streaming Bokeh sources. Closing the browser tab stops the worker.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import tempfile
import threading
import zipfile
from concurrent.futures import Future
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import panel as pn
import param

from app.controls import inline_math, optimizer_card
from app.curvature_view import CurvatureView
from app.figures import CurveView, LandscapeView, scale_fonts
from app.memory_view import MemoryView
from app.network_view import NetworkView, SliceJob, compute_slice
from app.presets import presets
from app.race_image import curves_png, race_gif, race_png
from app.streams import X_AXES, RaceStreams, lane_color
from engine.events import (
    AddLane,
    LoggedEvent,
    RemoveLane,
    RequestProbe,
    SetHyperparameter,
    SetProbes,
    SubmitRanking,
    SwitchOptimizer,
)
from engine.export import export_json, export_parquet
from engine.instruments import LANDSCAPE_PROBES, NETWORK_PROBES, SCHEDULES, ProbeConfig
from engine.problem import Problem
from engine.registry import HyperparameterError, available, get_spec
from engine.run import LaneConfig, Run, RunConfig
from engine.views import to_plane
from engine.worker import RunWorker
from landscapes import (
    ExpressionError,
    NetworkProblem,
    available_landscapes,
    available_networks,
    get_landscape,
    get_network,
    parse_expression,
)

log = logging.getLogger(__name__)

CUSTOM = "custom: type f(x, y)"
MAX_LANES = 8
PUMP_MS = 50  # 20 Hz: smooth to the eye, few enough messages for many sessions on one server
COUNTER_EVERY = 4  # pumps between step-counter refreshes (5 Hz)
TABLE_EVERY = 10  # leaderboard (2 Hz)
PANEL_EVERY = 20  # curvature table and density (1 Hz)
DEFAULT_RACE: tuple[tuple[str, dict[str, Any]], ...] = (
    ("sgd", {"lr": 1e-3}),  # Rosenbrock's curvature is ~1900 at the start: larger lr diverges
    ("momentum", {"lr": 1e-3}),
    ("adam", {"lr": 0.1}),
)
"""The race a new page opens with: learning rates a student can watch reach the valley."""


def _same(a: Any, b: Any) -> bool:
    """Two candidate tensors with the same values (None matches nothing)."""
    return a is not None and b is not None and a.shape == b.shape and bool((a == b).all())


def _optimizer_groups() -> dict[str, list[str]]:
    """Every registered optimizer, grouped by family (first-order, zeroth-order, ...)."""
    groups: dict[str, list[str]] = {}
    for name in available():
        groups.setdefault(get_spec(name).family, []).append(name)
    return groups


class Explorer(pn.viewable.Viewer):
    """Race up to eight optimizers from one or many starts on a 2-D landscape."""

    landscape = param.Selector(default="rosenbrock",
                               objects=[*available_landscapes(), CUSTOM, *available_networks()],
                               doc="the problem: a 2-D landscape, a typed f(x, y), or a small network")
    expression = param.String(default="sin(x)*y**2 + 0.1*x**2", doc="f(x, y) for the custom landscape")
    problem_options = param.Dict(default={}, doc="keywords of the problem (quadratic's kappa, ...)")
    optimizers = param.ListSelector(default=["sgd", "momentum", "adam"], objects=available())
    start_x = param.Number(default=None, allow_None=True, doc="start x (None: the landscape's default)")
    start_y = param.Number(default=None, allow_None=True)
    n_starts = param.Integer(default=1, bounds=(1, 64), doc="start points (1 + random ones in the view)")
    seed = param.Integer(default=0, bounds=(0, 2**31 - 1))
    batch_size = param.Integer(default=None, allow_None=True, bounds=(0, 100_000),
                               doc="networks: minibatch size (0: full batch, i.e. gradient descent; "
                                   "empty: the problem's default)")
    speed = param.Number(default=60.0, bounds=(1.0, 1000.0), doc="steps per second")
    x_axis = param.Selector(default="step", objects=list(X_AXES))
    on_switch = param.Selector(default="continue from here", objects=["continue from here", "restart"])
    probe_schedule = param.Selector(default="every", objects=list(SCHEDULES),
                                    doc="curvature probes: every n steps, log-spaced, or on request")
    probe_every = param.Integer(default=LANDSCAPE_PROBES.every, bounds=(1, 10_000))
    probe_top_k = param.Integer(default=1, bounds=(1, 10), doc="top eigenvalues per probe")
    probe_density = param.Boolean(default=False, doc="spectral density (SLQ) at each probe")
    probe_trace = param.Boolean(default=False, doc="Hutchinson trace at each probe")
    running = param.Boolean(default=False, doc="stepping continuously (False: paused)")
    presenter = param.Boolean(default=False, doc="big type, every update rule, one step per click with "
                                                 "the update vectors drawn")
    message = param.String(default="", doc="the last error shown to the user")

    def __init__(self, *, lanes: Any = None, autostart: bool = False, **params: Any) -> None:
        """``lanes``: ``[(optimizer, hyperparameters), ...]`` to race; default: the ``optimizers``
        parameter with each one's defaults, or :data:`DEFAULT_RACE` when neither is given."""
        if lanes is None and "optimizers" not in params:
            lanes = DEFAULT_RACE
        if lanes is not None:
            params["optimizers"] = list(dict.fromkeys(name for name, _ in lanes))
        # the registry may have grown since import (a user's own optimizer): offer all of it
        type(self).param.optimizers.objects = available()
        if params.get("landscape") in available_networks():  # probes cost more on a network
            params.setdefault("probe_every", NETWORK_PROBES.every)
        super().__init__(**params)
        self.problem: Problem = self._make_problem()
        self._slice_job: SliceJob | None = None

        self.values: dict[int, dict[str, Any]] = {}  # lane -> hyperparameter values
        self.lane_names: dict[int, str] = {}  # lane -> optimizer name
        self._next_lane = 0
        self.worker: RunWorker | None = None
        self._callback: Any = None
        self._doc: Any = None  # the session's document, once streaming
        # a served page that has not drawn yet gets no steps (see start_streaming)
        doc = pn.state.curdoc
        self._page_ready = doc is None or doc.session_context is None or pn.state.loaded
        self._closed = False
        self._pumps = 0
        self._syncing = False
        self._shown_problem: Problem | None = None
        self._pending_events: list[LoggedEvent] | None = None
        self._waiting: tuple[int, Any] | None = None  # (lane, candidates tensor) a person is ranking
        self._answered: Any = None  # the candidates tensor last submitted (until the run moves on)
        self.ranked: list[int] = []  # candidate indices clicked so far, best first
        self.streams = RaceStreams(f_star=None, view_diagonal=1.0)
        self.landscape_view = LandscapeView(self.streams, self._on_tap_event)
        self.loss_view = CurveView(self.streams, "loss", "loss")
        self.grad_view = CurveView(self.streams, "grad_norm", "gradient norm")
        self.network_view = NetworkView(self.streams, self.request_slice)
        self.curvature_view = CurvatureView(self.streams)
        self.memory_view = MemoryView()
        self.memory_view.measure_button.on_click(lambda _: self.measure_memory())
        self._build_widgets()
        for name, values in lanes or [(n, {}) for n in self.optimizers]:
            self._register_lane(name, get_spec(name).validate(values))
        self._new_run(keep_running=False)
        if self.x_axis != "step":  # the watcher reacts to changes only
            self._on_x_axis()
        self.running = autostart
        if autostart:
            self._resume()

    # -- layout ----------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self.error = pn.pane.Alert("", alert_type="danger", visible=False, margin=(5, 0),
                                   sizing_mode="stretch_width")
        self.cards = pn.Column(sizing_mode="stretch_width")
        self.counter = pn.pane.Markdown("", css_classes=["step-counter"], margin=(0, 10))
        self.formula = pn.pane.LaTeX("", sizing_mode="stretch_width", styles={"font-size": "1.1em"})
        self.description = pn.pane.Markdown("", margin=(0, 10))
        self.preset_note = pn.pane.Alert("", alert_type="info", visible=False, margin=(5, 0),
                                         sizing_mode="stretch_width")
        self.rules = pn.Column(sizing_mode="stretch_width", visible=False)  # presenter: every update rule
        choices = {"choose a preset…": "", **{p.title: n for n, p in presets().items()}}
        self.preset_select = pn.widgets.Select(name="Classroom presets", options=choices)
        self.preset_select.param.watch(lambda e: e.new and self.apply_preset(e.new), "value")
        self.link = pn.widgets.TextInput(name="link to this race", placeholder="press 'share link'",
                                         sizing_mode="stretch_width")
        self.share_button = pn.widgets.Button(label="share link", width=100)
        self.share_button.on_click(lambda _: self.share_link())
        self.log_download = pn.widgets.FileDownload(
            callback=self._event_log_file, filename="optiscope-session.json", label="save event log",
            color="light", width=150)
        self.log_upload = pn.widgets.FileInput(accept=".json", width=220)
        self.export_download = pn.widgets.FileDownload(
            callback=lambda: io.BytesIO(self.export_bundle()), filename="optiscope-race.zip",
            label="export records + images", color="light", width=200)
        self.log_upload.param.watch(self._on_upload, "value")
        self.ranking_prompt = pn.pane.Alert("", alert_type="warning", visible=False, margin=(5, 0),
                                            sizing_mode="stretch_width")
        self.undo_rank_button = pn.widgets.Button(label="undo last rank", width=130, visible=False)
        self.undo_rank_button.on_click(lambda _: self.undo_rank())
        self.leaderboard = pn.widgets.Tabulator(
            pd.DataFrame(columns=["optimizer", "loss", "distance", "steps", "status"]),
            show_index=False, disabled=True, sizing_mode="stretch_width", height=230,
            titles={"loss": "best loss", "distance": "dist. to nearest min"})
        w = pn.widgets
        self.run_button = w.Button(label="▶ Run", color="success", width=70)
        self.pause_button = w.Button(label="Pause", color="warning", width=70)
        self.step_button = w.Button(label="Step", color="primary", width=60)
        self.reset_button = w.Button(label="Reset", color="danger", width=60)
        self.run_button.on_click(lambda _: self.play())
        self.pause_button.on_click(lambda _: self.pause())
        self.step_button.on_click(lambda _: self.step())
        self.reset_button.on_click(lambda _: self.reset())
        self.probe_button = w.Button(label="Probe now", color="primary", width=110)
        self.probe_button.on_click(lambda _: self.worker.submit(RequestProbe()))
        # grouped options: from_param can't take groups, so the select mirrors the parameter both ways
        self.problem_select = pn.widgets.Select(label="Problem", value=self.landscape, groups={
            "2-D landscapes": [*available_landscapes(), CUSTOM], "networks": available_networks()})
        self.problem_select.param.watch(
            lambda e: e.new != self.landscape and self.param.update(landscape=e.new, problem_options={}),
            "value")
        self.param.watch(lambda e: setattr(self.problem_select, "value", e.new), "landscape")
        self.controls = pn.Column(
            pn.Row(self.run_button, self.pause_button, self.step_button, self.reset_button),
            self.counter,
            self.error,
            self.preset_select,
            self.problem_select,
            pn.widgets.TextInput.from_param(self.param.expression, label="f(x, y) (custom landscape)",
                                            visible=self.param.landscape.rx() == CUSTOM),
            pn.widgets.MultiChoice.from_param(self.param.optimizers, label=f"Optimizers (up to {MAX_LANES})",
                                              max_items=MAX_LANES),
            pn.Row(pn.widgets.FloatInput.from_param(self.param.start_x, label="start x", width=110),
                   pn.widgets.FloatInput.from_param(self.param.start_y, label="start y", width=110),
                   visible=self.param.landscape.rx().rx.pipe(lambda v: v not in available_networks())),
            pn.Row(pn.widgets.IntInput.from_param(self.param.n_starts, label="starts M", width=110),
                   pn.widgets.IntInput.from_param(self.param.seed, label="seed", width=110)),
            pn.widgets.IntInput.from_param(self.param.batch_size, label="batch size (0: full batch)",
                                           visible=self.param.landscape.rx().rx.pipe(
                                               lambda v: v in available_networks())),
            pn.widgets.FloatSlider.from_param(self.param.speed, label="speed (steps/s)", step=1),
            pn.widgets.RadioButtonGroup.from_param(self.param.on_switch, label="on switch"),
            pn.Card(
                pn.widgets.RadioButtonGroup.from_param(self.param.probe_schedule, label="schedule"),
                pn.widgets.IntInput.from_param(self.param.probe_every, label="every n steps", width=120),
                pn.widgets.IntSlider.from_param(self.param.probe_top_k, label="top-k eigenvalues"),
                pn.Row(pn.widgets.Checkbox.from_param(self.param.probe_density, label="density"),
                       pn.widgets.Checkbox.from_param(self.param.probe_trace, label="trace")),
                self.probe_button,
                title="Curvature probes", collapsed=True, sizing_mode="stretch_width", margin=(4, 0)),
            pn.Card(
                pn.Row(self.share_button, self.link, sizing_mode="stretch_width"),
                pn.Row(self.log_download, self.export_download),
                pn.pane.Markdown("replay a saved session:", margin=(0, 5)),
                self.log_upload,
                pn.widgets.Checkbox.from_param(self.param.presenter, label="presenter view"),
                title="Share, replay, present", collapsed=True, sizing_mode="stretch_width", margin=(4, 0)),
            self.cards,
            sizing_mode="stretch_width",
        )
        # visibility is toggled on a Column: toggling it on a Bokeh pane itself makes Panel 1.9.4 copy
        # the figure's stylesheet objects into a list of strings and raise
        landscape = pn.pane.Bokeh(self.landscape_view.figure, sizing_mode="stretch_width")
        self.landscape_pane = pn.Column(landscape, sizing_mode="stretch_width")
        self.views = pn.Column(
            self.preset_note,
            pn.Row(self.formula, sizing_mode="stretch_width"),
            self.description,
            self.rules,
            pn.Row(self.ranking_prompt, self.undo_rank_button, sizing_mode="stretch_width"),
            self.landscape_pane,
            pn.widgets.RadioButtonGroup.from_param(self.param.x_axis, label="x-axis"),
            pn.Row(pn.pane.Bokeh(self.loss_view.figure, sizing_mode="stretch_width"),
                   pn.pane.Bokeh(self.grad_view.figure, sizing_mode="stretch_width"),
                   sizing_mode="stretch_width"),
            self.network_view.panel,
            self.leaderboard,
            pn.Card(self.curvature_view.panel, title="Curvature: sharpness, top eigenvalues, spectrum",
                    sizing_mode="stretch_width", collapsed=False),
            pn.Card(self.memory_view.panel, title="Memory per optimizer: accounted and measured",
                    sizing_mode="stretch_width", collapsed=False),
            sizing_mode="stretch_width",
        )

    def __panel__(self) -> pn.viewable.Viewable:
        self.start_streaming()
        return pn.Row(pn.Column(self.controls, width=360), self.views, sizing_mode="stretch_width")

    # -- lifecycle -------------------------------------------------------------------------------
    def start_streaming(self) -> None:
        """Start the periodic pump once the page has loaded (idempotent), and stop the worker when
        the session ends.

        Why wait for the page: a race that streams while the browser is still building the page
        (8 lanes, 8 KaTeX rules, the table: several seconds on a small machine) piles its updates
        up in the websocket, and the page then shows the race ~8 s late and takes tens of seconds
        to catch up. So an autostarted race holds its first step until the page is there; in a
        notebook, or with no session at all, ``onload`` runs at once.
        """
        if self._doc is not None or self._callback is not None:
            return
        self._doc = pn.state.curdoc
        if self._doc is not None and self._doc.session_context is not None:
            pn.state.on_session_destroyed(lambda _ctx: self.close())
        pn.state.onload(self._begin_streaming)

    def _begin_streaming(self) -> None:
        if self._callback is not None or self._closed:
            return
        self._callback = pn.state.add_periodic_callback(self.pump, period=PUMP_MS)
        self._page_ready = True
        if self.running:
            self._resume()

    def _resume(self) -> None:
        """Let the worker step, unless the page it streams to has not loaded yet (see
        :meth:`start_streaming`; the race then starts when it has)."""
        if self._page_ready:
            self.worker.resume()

    def close(self) -> None:
        """Stop the worker thread and the pump (called when the browser session ends)."""
        self._closed = True
        if self._callback is not None:
            self._callback.stop()
            self._callback = None
        if self.worker is not None:
            self.worker.stop()

    # -- the run ---------------------------------------------------------------------------------
    def _start_point(self) -> tuple[float, float] | None:
        if self.start_x is None or self.start_y is None or self.problem.dim != 2:
            return None
        return (float(self.start_x), float(self.start_y))

    def _config(self) -> RunConfig:
        lanes = tuple(LaneConfig(self.lane_names[k], self.values[k]) for k in sorted(self.lane_names))
        return RunConfig(lanes=lanes, probes=self._probe_config(),
                         start=self._start_point(), n_starts=self.n_starts, seed=self.seed)

    def _probe_config(self) -> ProbeConfig:
        base = NETWORK_PROBES if self.is_network else LANDSCAPE_PROBES
        return ProbeConfig(schedule=self.probe_schedule, every=self.probe_every, top_k=self.probe_top_k,
                           density=self.probe_density, trace=self.probe_trace, tol=base.tol, seed=self.seed)

    @param.depends("probe_schedule", "probe_every", "probe_top_k", "probe_density", "probe_trace", watch=True)
    def _on_probes(self) -> None:
        if not self._syncing and self.worker is not None:
            self.worker.submit(SetProbes(self._probe_config().to_dict()))

    def _new_run(self, keep_running: bool | None = None, events: list[LoggedEvent] | None = None) -> None:
        """Start a fresh run of the current settings (the old worker stops); ``events`` are
        applied at their ticks as the run reaches them (a replayed session)."""
        keep_running = self.running if keep_running is None else keep_running
        if self.worker is not None:
            self.worker.stop()
        # lanes are renumbered 0..K-1 in the new run
        order = sorted(self.lane_names)
        self.lane_names = {i: self.lane_names[k] for i, k in enumerate(order)}
        self.values = {i: self.values[k] for i, k in enumerate(order)}
        self._next_lane = len(order)
        run = Run(self.problem, self._config())
        events = events if events is not None else self._pending_events
        if events:
            run.schedule(events)
        self.worker = RunWorker(run, steps_per_second=self.speed).start()
        with self._one_message():
            self._reset_views(run)
        if keep_running:
            self._resume()

    @property
    def is_network(self) -> bool:
        """A network: train/test metrics, slices, minibatches, costlier probes."""
        return isinstance(self.problem, NetworkProblem)

    @property
    def is_drawn(self) -> bool:
        """Drawn as a picture: a bounded problem of up to 3 dimensions (an N-D quadratic is neither
        drawn nor a network: it gets the curves, the table and the instruments)."""
        return self.problem.dim <= 3 and self.problem.bounds is not None

    def _make_problem(self) -> Problem:
        if self.landscape == CUSTOM:
            return parse_expression(self.expression)
        options = dict(self.problem_options)
        if self.landscape in available_networks():
            if self.batch_size is not None:
                options["batch_size"] = self.batch_size or None
            return get_network(self.landscape, **options)
        return get_landscape(self.landscape, **options)

    def _reset_views(self, run: Run) -> None:
        p = self.problem
        network, drawn = self.is_network, self.is_drawn
        self.landscape_pane.visible = drawn
        self.network_view.panel.visible = network
        if self._shown_problem is not p:  # the grid is recomputed only for a new problem
            if network:
                self.network_view.set_problem(p)
            if drawn:
                self.landscape_view.set_problem(p)
            self._shown_problem = p
        self.streams.clear()
        self.network_view.drop_lanes()
        self.curvature_view.drop_lanes()
        # f - f* on a log axis only where f* bounds f from below: not for a game (its equilibrium is a
        # saddle of f) nor a constrained problem (an unconstrained method goes below f* off the simplex)
        unbounded = getattr(p, "ascent", None) is not None or getattr(p, "geometry", None) is not None
        self.streams.f_star = min(m.value for m in p.minima) if p.minima and not unbounded else None
        if drawn:
            self.streams.project = to_plane(p)
            b = self.landscape_view.plane_bounds
            self.streams.min_move = 0.002 * ((b.high[0] - b.low[0]) ** 2 + (b.high[1] - b.low[1]) ** 2) ** 0.5
        known = self.streams.f_star is not None
        if network:
            label, log = "minibatch training loss (median over starts)", True
        else:
            label = "f(x) − f* (median over starts)" if known else "f(x) (median over starts)"
            log = known
        self.loss_view.set_y_label(label, log=log)
        for view in (self.landscape_view, self.loss_view, self.grad_view):
            view.drop_lanes()
            for lane in self.lane_names:
                view.ensure_lane(lane, self._label(lane))
        if drawn:
            x0 = run.starts[0].cpu().numpy()
            drawn = self.streams.project(x0)
            self.landscape_view.set_start(float(drawn[0]), float(drawn[1]))
            if p.dim == 2:
                self._quietly(start_x=float(x0[0]), start_y=float(x0[1]))  # show the start actually used
        self._rebuild_cards()
        self._refresh_memory()
        self._update_counter()

    def _lane_specs(self) -> dict[str, tuple[str, dict[str, Any]]]:
        return {self._label(k): (self.lane_names[k], dict(self.values[k])) for k in sorted(self.lane_names)}

    def _refresh_memory(self) -> None:
        """Account one step of every lane again (lanes or hyperparameters changed), off the UI thread."""
        copied = self._private_problem()
        self.memory_view.account_lanes(lambda: copied.result(timeout=30), self._lane_specs(),
                                       self.worker.run.dtype)

    def _private_problem(self) -> Future[Problem]:
        """A copy of the run's problem for another thread, taken by the worker between two steps:
        a step of a network problem swaps its module's parameters (``functional_call``, ``vmap``),
        and a module shared or copied mid-step breaks both sides (CI saw deepcopy fail on a
        BatchedTensor)."""
        return self.worker.call(lambda run: copy.deepcopy(run.problem))

    def measure_memory(self, wait: bool = False) -> None:
        """Measure each lane's peak memory in an isolated subprocess (the allocator's on CUDA)."""
        if self.landscape == CUSTOM:
            self.show_error("peaks are measured for catalogue problems; a typed f(x, y) has 16 bytes of "
                            "parameters anyway")
            return
        options = dict(self.problem_options)
        if self.is_network and self.batch_size is not None:
            options["batch_size"] = self.batch_size or None
        run = self.worker.run
        self.memory_view.measure_lanes(self.landscape, options, self._lane_specs(), run.config.dtype,
                                       cuda=run.device.type == "cuda", wait=wait)

    def _register_lane(self, name: str, values: dict[str, Any]) -> int:
        lane = self._next_lane
        self._next_lane += 1
        self.lane_names[lane] = name
        self.values[lane] = dict(values)
        return lane

    def _label(self, lane: int) -> str:
        name = self.lane_names[lane]
        same = [k for k, n in sorted(self.lane_names.items()) if n == name]
        label = get_spec(name).display_name
        return label if len(same) == 1 else f"{label} #{same.index(lane) + 1}"

    # -- user actions ----------------------------------------------------------------------------
    def play(self) -> None:
        self.running = True
        self._resume()
        self._update_counter()

    def pause(self) -> None:
        self.running = False
        self.worker.pause()
        self._update_counter()

    def step(self) -> None:
        """One step of every lane (pauses a running race first)."""
        if self.running:
            self.pause()
        self.worker.step_once()

    def reset(self) -> None:
        self._new_run()

    def set_hyperparameter(self, lane: int, name: str, value: Any) -> None:
        spec = get_spec(self.lane_names[lane])
        try:
            value = spec.hyperparameter(name).check(value, spec.name)
        except HyperparameterError as exc:
            self.show_error(str(exc))
            return
        self.values[lane][name] = value
        self.worker.submit(SetHyperparameter(lane, name, value))
        self._refresh_memory()
        self.streams.mark_event(f"{self._label(lane)}: {name} = {value:g}" if not isinstance(value, bool)
                                else f"{self._label(lane)}: {name} = {value}")

    def switch_optimizer(self, lane: int, name: str) -> None:
        """Swap a lane's optimizer; continue from its position or restart (``on_switch``)."""
        old = self._label(lane)
        spec = get_spec(name)
        self.lane_names[lane] = name
        self.values[lane] = spec.defaults()
        self.worker.submit(SwitchOptimizer(lane, name, self.values[lane],
                                           keep_position=self.on_switch == "continue from here"))
        if self.on_switch == "restart":
            self.streams.restart(lane)
        self.streams.mark_event(f"{old} → {spec.display_name}")
        self._redraw_lanes()
        self._sync_optimizer_selection()
        self._rebuild_cards()

    def _quietly(self, **values: Any) -> None:
        """Update parameters to mirror the run without reacting to the change."""
        self._syncing = True
        try:
            self.param.update(**values)
        finally:
            self._syncing = False

    def _one_message(self, freeze: bool = True) -> Any:
        """Hold the document's changes and send them as one message, the same property's
        changes combined (no-op without a session). Why: BokehJS lays the whole page out again on
        every change of a figure's renderers (0.1-0.3 s each on a small machine), and drawing 8
        lanes makes ~50 of them, one ``fig.line`` at a time: unheld, a new race froze the page for
        seconds. ``freeze`` defers Bokeh's walk over the document's models to the end (worth it
        when models are added; the pump adds none)."""
        return pn.io.hold(self._doc, freeze=freeze)

    def _redraw_lanes(self) -> None:
        """Curves for the current lanes (labels change when lanes come, go or switch)."""
        with self._one_message():
            self._draw_lanes()

    def _draw_lanes(self) -> None:
        for view in (self.landscape_view, self.loss_view, self.grad_view):
            view.drop_lanes()
            for k in self.lane_names:
                view.ensure_lane(k, self._label(k))
        self.network_view.drop_lanes()
        self.curvature_view.drop_lanes()
        self._refresh_memory()

    def _sync_optimizer_selection(self) -> None:
        self._quietly(optimizers=list(dict.fromkeys(self.lane_names[k] for k in sorted(self.lane_names))))

    def show_error(self, text: str) -> None:
        self.message = text
        self.error.object = text
        self.error.visible = bool(text)

    def _on_tap_event(self, x: float, y: float) -> None:
        """A click on the landscape, from Bokeh. Handled on the next tick: what the Bokeh event
        callback changed itself did not reach the page under Panel 1.9 (the browser test saw the start
        field keep its value). Held like Panel's own callbacks and the pump, so that its changes go
        to the page by the same route as theirs, in order: sent by Bokeh's route instead, a click's
        new candidate labels could be overtaken by a pump's older ones (the browser test saw a
        ranked candidate keep its "?")."""
        doc = self._doc
        if doc is None or doc.session_context is None:
            self._on_tap(x, y)
            return

        def on_tap() -> None:
            with self._one_message(freeze=False):
                self._on_tap(x, y)

        doc.add_next_tick_callback(on_tap)

    def _on_tap(self, x: float, y: float) -> None:
        """A click ranks the nearest candidate while a person is the oracle, else moves the start."""
        if self._waiting is not None:
            points = self.streams.project(self._waiting[1].cpu().numpy())
            free = [i for i in range(len(points)) if i not in self.ranked]
            if free:
                d = [float((points[i, 0] - x) ** 2 + (points[i, 1] - y) ** 2) for i in free]
                self.rank_candidate(free[d.index(min(d))])
            return
        if self.problem.dim != 2:
            self.show_error(f"{self.problem.name} starts from its own start point (set random starts with M)")
            return
        self.param.update(start_x=round(x, 4), start_y=round(y, 4))

    def _show_particles(self) -> None:
        """The first start's particle cloud of every population lane (CBO), or nothing."""
        data: dict[str, list] = {"x": [], "y": [], "color": []}
        for k, lane in list(self.worker.run.lanes.items()):
            particles = getattr(lane.optimizers[0], "particles", None)
            if particles is None or k not in self.lane_names:
                continue
            drawn = self.streams.project(particles().cpu().numpy())
            data["x"] += drawn[:, 0].tolist()
            data["y"] += drawn[:, 1].tolist()
            data["color"] += [lane_color(k)] * len(drawn)
        if data["x"] or self.landscape_view.cloud.data["x"]:
            self.landscape_view.cloud.data = data

    # -- a person as the ranking oracle ----------------------------------------------------------
    def rank_candidate(self, index: int) -> None:
        """Give candidate ``index`` the next rank; the last one sends the ranking to the run."""
        if self._waiting is None:
            self.show_error("no optimizer is waiting for a ranking")
            return
        lane, candidates = self._waiting
        m = candidates.shape[0]
        if not 0 <= index < m or index in self.ranked:
            self.show_error(f"pick one of the {m} candidates not ranked yet")
            return
        self.ranked.append(index)
        if len(self.ranked) == m:
            self.worker.submit(SubmitRanking(lane, tuple(self.ranked)))
            self.streams.mark_event(f"{self._label(lane)}: ranked {self.ranked}")
            self._answered, self._waiting, self.ranked = candidates, None, []
        self._show_waiting()

    def undo_rank(self) -> None:
        if self.ranked:
            self.ranked.pop()
        self._show_waiting()

    def _poll_waiting(self) -> None:
        """Pick up a lane that waits for a person (the first, if several do)."""
        awaiting = dict(self.worker.run.awaiting)  # a snapshot: the worker thread may change it
        current = self._waiting
        # the run re-raises its wait every tick with an equal copy of the candidates: compare values
        if current is not None and _same(awaiting.get(current[0]), current[1]):
            return
        fresh = [(k, c) for k, c in sorted(awaiting.items())
                 if not _same(c, self._answered) and k in self.lane_names]
        if not fresh and current is None:
            return  # nothing waits, nothing shown: send nothing to the browser
        self._waiting = fresh[0] if fresh else None
        self.ranked = []
        self._show_waiting()

    def _show_waiting(self) -> None:
        waiting = self._waiting
        if waiting is None or not self.is_drawn:
            self.ranking_prompt.visible = self.undo_rank_button.visible = False
            self.landscape_view.show_candidates(None, [])
            if waiting is not None:  # candidates in N dimensions can't be drawn
                self.show_error("a person can rank candidates on 2-D landscapes only: turn 'human' off")
            return
        lane, candidates = waiting
        m = candidates.shape[0]
        self.landscape_view.show_candidates(self.streams.project(candidates.cpu().numpy()), self.ranked)
        self.ranking_prompt.object = (f"**{self._label(lane)} is waiting for you**: click its {m} candidates "
                                      f"from best (lowest f) to worst. Ranked {len(self.ranked)} of {m}.")
        self.ranking_prompt.visible = self.undo_rank_button.visible = True

    # -- reacting to parameters --------------------------------------------------------------------
    @param.depends("landscape", "expression", "batch_size", "problem_options", watch=True)
    def _on_landscape(self) -> None:
        if self._syncing:
            return
        try:
            problem = self._make_problem()
        except (ExpressionError, ValueError) as exc:
            self.show_error(str(exc))  # the running race is left alone
            return
        self.show_error("")
        was_network = self.is_network
        self.problem = problem
        self._quietly(start_x=None, start_y=None)  # the new landscape's own start
        if self.is_network != was_network:  # each kind has its own affordable probe schedule
            self._quietly(probe_every=(NETWORK_PROBES if self.is_network else LANDSCAPE_PROBES).every)
        self._new_run()

    @param.depends("start_x", "start_y", "n_starts", "seed", watch=True)
    def _on_starts(self) -> None:
        if self._syncing or (self.start_x is None) != (self.start_y is None):
            return  # wait for the other coordinate
        self._new_run()

    @param.depends("optimizers", watch=True)
    def _on_optimizers(self) -> None:
        if self._syncing:
            return
        wanted = list(self.optimizers)
        if len(wanted) > MAX_LANES:
            self.show_error(f"a race holds at most {MAX_LANES} optimizers")
            self._sync_optimizer_selection()
            return
        have = {n: k for k, n in self.lane_names.items()}
        for lane, name in list(self.lane_names.items()):
            if name not in wanted:
                self.worker.submit(RemoveLane(lane))
                del self.lane_names[lane], self.values[lane]
                self.streams.forget(lane)
        for name in wanted:
            if name not in have:
                lane = self._register_lane(name, get_spec(name).defaults())
                self.worker.submit(AddLane(name, self.values[lane]))
        self._redraw_lanes()
        self._rebuild_cards()

    @param.depends("speed", watch=True)
    def _on_speed(self) -> None:
        if self.worker is not None:
            self.worker.steps_per_second = self.speed

    @param.depends("x_axis", watch=True)
    def _on_x_axis(self) -> None:
        self.loss_view.set_x(self.x_axis)
        self.grad_view.set_x(self.x_axis)
        self.network_view.set_x(self.x_axis)
        self.curvature_view.set_x(self.x_axis)

    # -- slices (networks) -------------------------------------------------------------------------
    def request_slice(self, plane: str, lane: int | None, n: int) -> SliceJob | None:
        """Slice the loss around lane ``lane``'s current weights, off the UI thread; the pump draws it."""
        if not self.is_network or lane is None or lane not in self.lane_names:
            self.show_error("pick a network problem and a lane to slice")
            return None
        if self._slice_job is not None and not self._slice_job.done:
            self.show_error("a slice is already being computed")
            return None
        job = SliceJob(self._label(lane))
        self._slice_job = job
        future = self.worker.call(lambda run: run.trajectory(lane))
        copied = self._private_problem()
        seed = self.seed

        def work() -> None:
            try:
                steps, traj = future.result(timeout=30)
                problem = copied.result(timeout=30)
            except Exception as exc:
                job.error, job.done = f"slice failed: {exc}", True
                return
            if len(traj) < 3 and plane.startswith("PCA"):
                job.error, job.done = "take a few steps first: a PCA plane needs a trajectory", True
                return
            compute_slice(problem, steps, traj, plane, n, seed, job)

        threading.Thread(target=work, name="optiscope-slice", daemon=True).start()
        return job

    # -- cards -------------------------------------------------------------------------------------
    def _rebuild_cards(self) -> None:
        cards = []
        for lane in sorted(self.lane_names):
            spec = get_spec(self.lane_names[lane])
            card = optimizer_card(spec, self.values[lane], lane_color(lane),
                                  lambda n, v, lane=lane: self.set_hyperparameter(lane, n, v),
                                  title=self._label(lane))
            switch = pn.widgets.Select(label="switch this lane to", groups=_optimizer_groups(),
                                       value=spec.name)
            switch.param.watch(lambda ev, lane=lane: ev.new != ev.old and self.switch_optimizer(lane, ev.new),
                               "value")
            card.append(switch)
            cards.append(card)
        self.cards.objects = cards
        self._show_rules()
        p = self.problem
        self.formula.object = inline_math(p.latex)
        self.description.object = getattr(p, "description", "")


    # -- presenter view -----------------------------------------------------------------------------
    @param.depends("presenter", watch=True)
    def _on_presenter(self) -> None:
        """Big type, every lane's update rule, and one step per click with the update drawn."""
        big = self.presenter
        if big and self.running:
            self.pause()
        size = {"font-size": "1.35em"} if big else {"font-size": "1em"}
        self.controls.styles = size
        self.views.styles = size
        for fig in (self.landscape_view.figure, self.loss_view.figure, self.grad_view.figure):
            scale_fonts(fig, big)
        self.step_button.width = 140 if big else 60
        self.step_button.label = "Step ▸" if big else "Step"
        self._show_rules()
        if not big:
            self.landscape_view.updates.data = dict(x0=[], y0=[], x1=[], y1=[], color=[])

    def _show_rules(self) -> None:
        self.rules.visible = self.presenter
        if not self.presenter:
            return
        self.rules.objects = [
            pn.Row(pn.pane.Markdown(f"**{self._label(k)}**", width=220, styles={"color": lane_color(k)}),
                   pn.pane.LaTeX(inline_math(get_spec(self.lane_names[k]).update_rule),
                                 sizing_mode="stretch_width"),
                   sizing_mode="stretch_width")
            for k in sorted(self.lane_names)]

    # -- presets, share links, event logs ------------------------------------------------------------
    def apply_preset(self, name: str) -> None:
        """Load a classroom preset (``app/presets.toml``): problem, race, starts, speed, x-axis."""
        try:
            preset = presets()[name]
        except KeyError:
            self.show_error(f"unknown preset {name!r}; presets: {', '.join(presets())}")
            return
        self._load(problem=preset.problem, options=preset.options, lanes=preset.lanes,
                   start=preset.start, n_starts=preset.n_starts, seed=preset.seed, speed=preset.speed,
                   x_axis=preset.x_axis, batch_size=preset.batch_size)
        self.preset_note.object = f"**{preset.title}.** {preset.explanation}"
        self.preset_note.visible = True

    def _load(self, *, problem: str, lanes: Any, options: dict | None = None, start: Any = None,
              n_starts: int = 1, seed: int = 0, speed: float | None = None, x_axis: str | None = None,
              batch_size: int | None = None, events: list[LoggedEvent] | None = None) -> bool:
        """Replace the whole race (one new run, not one per changed setting). False, with the
        reason shown and nothing changed, if any part is invalid."""
        try:
            if len(lanes) > MAX_LANES:
                raise ValueError(f"a race holds at most {MAX_LANES} optimizers, got {len(lanes)}")
            checked = [(name, get_spec(name).validate(values)) for name, values in lanes]
            old = {k: getattr(self, k) for k in ("landscape", "problem_options", "batch_size")}
            self._quietly(landscape=problem, problem_options=dict(options or {}), batch_size=batch_size)
            try:
                built = self._make_problem()
            except Exception:
                self._quietly(**old)
                raise
        except (ValueError, TypeError, HyperparameterError) as exc:
            self.show_error(str(exc))
            return False
        self.show_error("")
        self.preset_note.visible = False
        self.problem = built
        self.lane_names, self.values, self._next_lane = {}, {}, 0
        for name, values in checked:
            self._register_lane(name, values)
        x, y = (start if start is not None else (None, None))
        self._quietly(optimizers=list(dict.fromkeys(n for n, _ in checked)), start_x=x, start_y=y,
                      n_starts=int(n_starts), seed=int(seed), speed=float(speed or self.speed))
        if x_axis is not None:
            self.x_axis = x_axis
        self._new_run(events=events)
        return True

    def to_query(self) -> dict[str, str]:
        """The race as URL query parameters: opening the link reproduces it (:meth:`apply_query`)."""
        lanes = [[self.lane_names[k], self.values[k]] for k in sorted(self.lane_names)]
        q = {"problem": self.landscape, "lanes": json.dumps(lanes, separators=(",", ":")),
             "seed": str(self.seed), "starts": str(self.n_starts), "speed": f"{self.speed:g}",
             "x": self.x_axis}
        if self.landscape == CUSTOM:
            q["f"] = self.expression
        if self.problem_options:
            q["options"] = json.dumps(self.problem_options, separators=(",", ":"))
        if self.start_x is not None and self.start_y is not None:
            q["start"] = f"{self.start_x!r},{self.start_y!r}"
        if self.batch_size is not None:
            q["batch"] = str(self.batch_size)
        return q

    def apply_query(self, query: dict[str, str]) -> bool:
        """Load a race from :meth:`to_query`'s parameters; a bad link shows why and changes nothing."""
        if not query.get("problem"):
            return False
        try:
            lanes = [(str(n), dict(v)) for n, v in json.loads(query.get("lanes", "[]"))]
            options = json.loads(query["options"]) if query.get("options") else {}
            start = tuple(float(v) for v in query["start"].split(",")) if query.get("start") else None
            if query.get("f"):
                self._quietly(expression=query["f"])
            return self._load(problem=query["problem"], options=options, lanes=lanes, start=start,
                              n_starts=int(query.get("starts", 1)), seed=int(query.get("seed", 0)),
                              speed=float(query["speed"]) if query.get("speed") else None,
                              x_axis=query.get("x"),
                              batch_size=int(query["batch"]) if query.get("batch") else None)
        except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            self.show_error(f"this link does not describe a race: {exc}")
            return False

    def share_link(self) -> str:
        """A link to this race (also written into the page's address bar when served)."""
        query = self.to_query()
        loc = pn.state.location
        if loc is not None:
            loc.update_query(**query)
        base = f"{loc.pathname}" if loc is not None and loc.pathname else ""
        self.link.value = f"{base}?{urlencode(query)}"
        return self.link.value

    def event_log(self) -> dict[str, Any]:
        """Everything the user did, with the config and the problem: what :meth:`replay_log` takes."""
        log = self.worker.call(lambda run: run.event_log()).result(timeout=10)
        log["race"] = self.to_query()
        return log

    def export_bundle(self) -> bytes:
        """A zip of this race: every record (replayed exactly from the config and event log, so
        nothing the plots decimated is lost) as Parquet and JSON with the config, event log,
        package versions and device; the race as PNG and GIF (2-D problems); the loss curves as PNG."""
        log = self.worker.call(lambda run: run.event_log()).result(timeout=10)
        problem = self._private_problem().result(timeout=30)  # the race may be running meanwhile
        events = [LoggedEvent.from_dict(e) for e in log["events"]]
        run, records = Run.replay(problem, RunConfig.from_dict(log["config"]), events, log["ticks"])
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buffer, "w") as bundle:
            out = Path(tmp)
            files = [export_parquet(run, records, out / "records.parquet"),
                     export_json(run, records, out / "records.json")]
            if records:
                files.append(curves_png(records, out / "loss.png", x=self.x_axis,
                                        f_star=self.streams.f_star))
                if self.is_drawn and self.problem.dim == 2:
                    files += [race_png(self.problem, records, out / "race.png"),
                              race_gif(self.problem, records, out / "race.gif")]
            for f in files:
                bundle.write(f, f.name)
        return buffer.getvalue()

    def _event_log_file(self) -> io.StringIO:
        return io.StringIO(json.dumps(self.event_log(), indent=1))

    def replay_log(self, log: dict[str, Any]) -> bool:
        """Replay a saved session live: its race from the start, each event at its tick."""
        try:
            race = dict(log["race"])
            events = [LoggedEvent.from_dict(e) for e in log["events"]]
            race["lanes"] = json.dumps([[ln["optimizer"], ln["hyperparameters"]]
                                        for ln in log["config"]["lanes"]])
        except (KeyError, TypeError, ValueError) as exc:
            self.show_error(f"not an Optiscope event log: {exc}")
            return False
        self._pending_events = events
        ok = self.apply_query(race)
        self._pending_events = None
        if ok:
            self.streams.mark_event(f"replaying {len(events)} events")
        return ok

    def _on_upload(self, event: Any) -> None:
        try:
            log = json.loads(bytes(event.new).decode())
        except (ValueError, UnicodeDecodeError) as exc:
            self.show_error(f"not a JSON event log: {exc}")
            return
        self.replay_log(log)

    # -- streaming -----------------------------------------------------------------------------------
    def pump(self) -> int:
        """Move what the worker produced into the plots, as one message to the page; returns the
        number of records moved. One message: the page paints each plot once per pump rather
        than once per lane's stream (8 lanes: 17 updates/s reach Chromium instead of 11, and
        step-to-page latency drops from ~160 to ~105 ms, ``benchmarks/stream.py``)."""
        if self.worker is None:
            return 0
        with self._one_message(freeze=False):
            return self._pump()

    def _pump(self) -> int:
        records = self.worker.drain()
        labels = {k: self._label(k) for k in self.lane_names}
        records = [r for r in records if r.lane in self.lane_names]
        self.streams.push(records, labels)
        if self.presenter and records and self.is_drawn:
            self.landscape_view.updates.data = self.streams.last_updates()
        if records and self.is_drawn:
            self._show_particles()
        if self.is_network and self.network_view.missing_lanes(labels):
            with self._one_message():
                self.network_view.ensure_lanes(labels)
        job = self._slice_job
        if job is not None:
            self.network_view.show_progress(job)
            if job.done:
                self._slice_job = None
                if job.error:
                    self.show_error(job.error)
                else:
                    self.network_view.show_slice(job)
        self._poll_waiting()
        errors = self.worker.errors()
        if errors:
            self.show_error(errors[-1])
        self._pumps += 1
        # Text and tables re-render whole DOM nodes: refresh them at a few Hz, not at the pump's 20
        # (the plots stream incrementally and can keep up)
        if records and (self._pumps % TABLE_EVERY == 0 or not self.running):
            rows = self.streams.leaderboard([m.x for m in self.problem.minima])
            self.leaderboard.value = pd.DataFrame(rows)
        if self.streams.latest_probe and (self._pumps % PANEL_EVERY == 0 or not self.running):
            hvps = sum(r.counts.hvps for r in self.streams.latest.values())
            with self._one_message():
                self.curvature_view.update(labels, self.worker.run.probe_overhead, hvps)
        if self._pumps % COUNTER_EVERY == 0 or not self.running:
            self._update_counter()
            memory_error = self.memory_view.update()
            if memory_error:
                self.show_error(memory_error)
        return len(records)

    def _update_counter(self) -> None:
        tick = self.worker.tick if self.worker is not None else 0
        state = "running" if self.running else "paused"
        drawn = f" · {self.streams.points_streamed:,} points drawn" if self.is_drawn else ""
        text = f"**step {tick}** · {state}{drawn}"
        if text != self.counter.object:
            self.counter.object = text
