"""The explorer without a browser: build it, drive it through its widgets (found by name) and its
public methods, and check what reaches the views' sources and the run's event log."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import panel as pn
import param
import pytest
import torch
from bokeh.document import Document
from bokeh.models import (
    CustomJSTicker,
    CustomJSTickFormatter,
    LabelSet,
    LayoutDOM,
    Legend,
    LinearScale,
    LogScale,
)
from bokeh.plotting import figure
from panel.io.state import set_curdoc

import app.explorer as explorer_module
from app import sharing
from app.batch import AXES, Mark
from app.explorer import CUSTOM, REFRESH_EVERY, Explorer
from app.figures import MERGE_TICKS, Marks
from app.lanes import PALETTE
from app.views import (
    CurvatureView,
    GradView,
    LandscapeView,
    LeaderboardView,
    LearnedView,
    LossView,
    NetworkView,
    SliceView,
)
from app.views.network import DIGITS_SHOWN, GRID
from engine.events import RemoveLane, SetHyperparameter, SwitchOptimizer
from landscapes.defaults import problem_defaults
from tests.app.conftest import pump_until, steps, wait_for, widget


def rows(ex: Explorer, lane_index: int, view: type = LossView) -> int:
    v = ex.view(view)
    slot = ex.session.lanes[lane_index].slot
    return len(v.slots.sources[slot].data["step"])


def test_records_reach_the_views(explorer: Explorer) -> None:
    explorer.session.play()
    pump_until(explorer, lambda: rows(explorer, 0) > 30 and rows(explorer, 1) > 30)
    landscape = explorer.view(LandscapeView)
    assert sum(len(s.data["x0"]) for s in landscape.paths.sources) > 0
    assert set(landscape.heads.data["optimizer"]) == {"SGD", "Adam"}
    explorer.view(LeaderboardView).refresh()
    table = explorer.view(LeaderboardView).rows()
    assert [r["optimizer"] for r in table] == ["SGD", "Adam"] and {r["status"] for r in table} == {"running"}
    # curves show suboptimality f - f* (the bowl has f* = 0), which is the loss itself here
    adam = explorer.session.lanes[1]
    rec = explorer.session.latest[adam.id]
    src = explorer.view(LossView).slots.sources[adam.slot].data
    assert src["loss"][-1] == pytest.approx(float(np.median(rec.loss)))
    assert src["step"][-1] == rec.tick  # the race's step (no reset yet)


def test_a_slider_release_reaches_the_run_at_the_next_step_with_a_labelled_marker(explorer: Explorer) -> None:
    steps(explorer, 1)
    card = explorer.sidebar.cards[explorer.session.lanes[1].id].card
    lr = widget(card, "lr")
    assert isinstance(lr, pn.widgets.DiscreteSlider)
    with param.edit_constant(lr):  # what the browser sends when a drag ends
        lr.param.update(value=0.1, value_throttled=0.1)
    steps(explorer, 1)
    adam = explorer.session.lanes[1]
    rec = explorer.session.latest[adam.id]
    assert rec.hyperparameters["lr"] == 0.1 and rec.step == 1 and adam.hyperparameters.lr == 0.1
    log = explorer.worker.call(lambda run: list(run.log)).result(timeout=10)
    assert [(e.tick, e.event) for e in log if isinstance(e.event, SetHyperparameter)] == \
        [(1, SetHyperparameter(adam.engine_id, "lr", 0.1))]
    marks = explorer.view(LossView).marks
    assert marks.source.data["label"] == ["Adam: lr 0.001 → 0.1"] and marks.source.data["step"] == [1]
    assert isinstance(marks.labels, LabelSet) and marks.labels in explorer.view(LossView).figure.center


def test_pause_stops_stepping_and_the_counter_says_so(explorer: Explorer) -> None:
    widget(explorer.controls, "▶ Run").clicks += 1
    pump_until(explorer, lambda: explorer.worker.tick > 10)
    widget(explorer.controls, "Pause").clicks += 1
    wait_for(lambda: explorer.worker.paused)
    tick = explorer.worker.tick
    time.sleep(0.1)
    assert explorer.worker.tick == tick
    for _ in range(REFRESH_EVERY):  # one round of refreshes
        explorer.pump()
    assert "paused" in explorer.sidebar.counter.object and f"step {tick}" in explorer.sidebar.counter.object


@contextmanager
def served_page() -> Iterator[tuple[Document, Explorer]]:
    """A document as ``panel serve`` gives a page (a session context) and its autostarted explorer,
    built before the page has loaded (``pn.state._on_load(doc)`` is the page saying it has)."""
    doc = Document()
    session = SimpleNamespace(id="test", request=SimpleNamespace(arguments={}, cookies={}, headers={}))
    doc._session_context = lambda: session
    with set_curdoc(doc):
        ex = Explorer(landscape="quadratic", optimizers=["sgd"], speed=500, autostart=True)
        try:
            yield doc, ex
        finally:
            ex.close()


def test_a_served_race_starts_when_its_page_has_loaded() -> None:
    """Under ``panel serve`` an autostarted race takes no step before the page reports it has
    loaded: updates sent while the browser still builds the page pile up, and it runs seconds late."""
    with served_page() as (doc, ex):
        ex.start_streaming()
        time.sleep(0.3)
        assert ex.running and ex.worker.tick == 0
        pn.state._on_load(doc)  # what Panel runs when the page says it is ready
        wait_for(lambda: ex.worker.tick > 10)


def test_a_link_opened_before_its_page_loads_replays_to_its_pause_and_stays_there() -> None:
    """A share link of a race paused at step 10, opened by a served page: nothing steps before the
    page has loaded; then the race replays to step 10 and stays paused there (it used to start
    before the page loaded, pause at 10, and be resumed past it when the page loaded)."""
    with served_page() as (doc, ex):
        spec = replace(ex.session.spec(), ticks=10, paused=True)
        assert ex.apply_query({"race": sharing.encode(spec)})
        ex.start_streaming()
        time.sleep(0.3)
        assert ex.worker.tick == 0
        pn.state._on_load(doc)
        pump_until(ex, lambda: not ex.running)
        time.sleep(0.3)
        assert ex.worker.tick == 10 and not ex.running and "paused" in ex.sidebar.counter.object


def test_close_stops_the_worker_and_the_pump(explorer: Explorer) -> None:
    explorer.session.play()
    worker = explorer.worker
    wait_for(lambda: worker.tick > 2)
    explorer.close()
    assert worker.join(2.0) and explorer.pump() == 0


def test_a_bad_function_shows_its_error_and_the_race_goes_on(explorer: Explorer) -> None:
    explorer.session.play()
    worker = explorer.worker
    explorer.session.param.update(expression="sin(x", problem=CUSTOM)  # refused as a whole
    assert explorer.sidebar.error.visible and "column" in explorer.message
    assert explorer.worker is worker and worker.alive and explorer.problem.name == "quadratic"
    assert widget(explorer.controls, "Problem").value == "quadratic"  # the page shows what runs
    widget(explorer.controls, "Problem").value = CUSTOM  # the default f(x, y)
    custom = explorer.worker
    assert custom is not worker and worker.join(2.0) and not explorer.sidebar.error.visible
    field = widget(explorer.controls, "f(x, y) (custom landscape)")
    field.value = "x**2 +* y"
    assert "column" in explorer.message and explorer.worker is custom
    assert explorer.session.expression == "sin(x)*y**2 + 0.1*x**2"  # the function that runs
    field.value = "x**2 + 3*y**2"
    assert explorer.worker is not custom and not explorer.sidebar.error.visible
    pump_until(explorer, lambda: rows(explorer, 0) > 3)


def test_changing_the_problem_from_its_select_starts_a_new_race(explorer: Explorer) -> None:
    explorer.session.play()
    pump_until(explorer, lambda: explorer.worker.tick > 5)
    widget(explorer.controls, "Problem").value = "himmelblau"
    assert explorer.worker.run.problem.name == "himmelblau"
    pump_until(explorer, lambda: rows(explorer, 0) > 0)
    assert explorer.view(LossView).slots.sources[0].data["step"][0] == 0
    assert explorer.view(LandscapeView).minima.data["marker"] == ["star"] * 4


def test_switching_a_lane_continues_from_its_position_as_a_new_segment(explorer: Explorer) -> None:
    steps(explorer, 5)
    before = explorer.worker.run.positions(0).copy()
    sgd = explorer.session.lanes[0]
    widget(explorer.sidebar.cards[sgd.id].card, "switch this lane to").value = "lion"
    steps(explorer, 1)
    rec = explorer.session.latest[sgd.id]
    np.testing.assert_array_equal(rec.position, before)
    assert rec.optimizer == "lion" and rec.step == 5 and sgd.label == "Lion"
    src = explorer.view(LossView).slots.sources[sgd.slot].data
    assert np.isnan(src["loss"][-2]) and src["optimizer"][-3:] == ["sgd", "lion",
                                                                   "lion"]  # a break, then Lion
    assert "SGD → Lion" in explorer.view(LossView).marks.source.data["label"]
    assert any(isinstance(e.event, SwitchOptimizer) for e in explorer.worker.run.log)


def test_adding_and_removing_lanes_from_the_sidebar(explorer: Explorer) -> None:
    steps(explorer, 3)
    widget(explorer.controls, "add an optimizer (up to 8)").value = "rmsprop"
    steps(explorer, 2)
    rms = explorer.session.lanes[2]
    assert rms.label == "RMSprop" and explorer.session.latest[rms.id].step == 1
    assert explorer.view(LossView).slots.sources[rms.slot].data["step"][0] == 3  # where it joined
    sgd = explorer.session.lanes[0]
    landscape = explorer.view(LandscapeView)
    assert len(landscape.paths.sources[sgd.slot].data["x0"]) > 0
    widget(explorer.sidebar.cards[sgd.id].card, "✕ remove").clicks += 1
    steps(explorer, 1)
    assert [ln.label for ln in explorer.session.lanes] == ["Adam", "RMSprop"]
    assert landscape.paths.sources[sgd.slot].data["x0"] == []  # its path left with it
    assert not any(r.visible for r in landscape.paths.renderers[sgd.slot])
    assert "− SGD" in explorer.view(LossView).marks.source.data["label"]
    assert any(isinstance(e.event, RemoveLane) for e in explorer.worker.run.log)


def test_a_click_on_the_landscape_moves_the_start(explorer: Explorer) -> None:
    explorer.view(LandscapeView).tap(0.5, -0.25)
    assert explorer.worker.run.starts[0].tolist() == [0.5, -0.25]
    assert explorer.view(LandscapeView).start.data == {"x": [0.5], "y": [-0.25]}


def test_dragging_the_start_marker_reruns_the_race_from_where_it_lands(explorer: Explorer) -> None:
    landscape = explorer.view(LandscapeView)
    assert landscape.figure.toolbar.active_drag is landscape.drag  # a drag on the picture drags the start
    before = explorer.worker.run
    landscape.start.data = {"x": [-0.75], "y": [1.25]}  # what the browser's drag tool sends on drop
    assert explorer.worker.run is not before and explorer.worker.run.starts[0].tolist() == [-0.75, 1.25]
    assert landscape.start.data == {"x": [-0.75], "y": [1.25]}


def test_two_explorers_are_independent_sessions() -> None:
    a, b = Explorer(optimizers=["sgd"]), Explorer(optimizers=["adam"])
    try:
        a.session.step()
        wait_for(lambda: a.worker.tick == 1)
        time.sleep(0.05)
        assert b.worker.tick == 0 and a.worker is not b.worker
    finally:
        a.close()
        b.close()


def test_a_problem_without_known_minima_plots_raw_loss_on_a_linear_axis(explorer: Explorer) -> None:
    fig = explorer.view(LossView).figure
    assert isinstance(fig.y_scale, LogScale)
    assert isinstance(fig.yaxis[0].ticker, CustomJSTicker)  # app.figures.quiet_log_ticks
    assert isinstance(fig.yaxis[0].formatter, CustomJSTickFormatter)  # labels inside a decade too
    explorer.session.problem = "saddle"  # x^2 - y^2: losses go negative
    assert isinstance(fig.y_scale, LinearScale)
    steps(explorer, 1)
    rec = explorer.session.latest[explorer.session.lanes[0].id]
    assert explorer.view(LossView).slots.sources[0].data["loss"][-1] == float(rec.loss[0])


def test_no_legend_is_drawn_over_the_data(explorer: Explorer) -> None:
    """The race's legend is HTML beside the plots (swatches): no canvas legend can cover a curve."""
    for cls in (LossView, GradView, LandscapeView, CurvatureView):
        fig = explorer.view(cls).figure if cls is not CurvatureView else explorer.view(cls).sharpness_fig
        assert not [item for legend in fig.select(type=Legend) for item in legend.items], cls.__name__
    legend = explorer.view(LossView).legend.object
    assert PALETTE[0] in legend and "SGD" in legend and "Adam" in legend


def test_a_diverged_lane_never_stretches_the_loss_axis() -> None:
    ex = Explorer(landscape="quadratic", lanes=[("sgd", {"lr": 0.5}), ("adam", {})], speed=500)
    try:  # the bowl's curvature is 10: lr 0.5 blows up by 4x per step
        ex.session.play()
        pump_until(ex, lambda: ex.session.lanes[0].id in ex.session.latest
                   and ex.session.latest[ex.session.lanes[0].id].status[0] != "running", 20)
        view = ex.view(LossView)
        view.refresh()
        adam = ex.session.lanes[1]
        assert view.figure.y_range.end <= 125 and adam.id not in view._stopped  # Adam: loss 28 at its start
        assert "SGD stopped or diverged" in view.figure.title.text
        ex.view(LeaderboardView).refresh()
        status = {r["optimizer"]: r["status"] for r in ex.view(LeaderboardView).rows()}
        assert status["SGD"].startswith("diverged at step") and status["Adam"] == "running"
    finally:
        ex.close()


def test_a_network_shows_its_curves_and_a_slice_computed_off_the_loop() -> None:
    ex = Explorer(landscape="moons_mlp", lanes=[("adam", {"lr": 0.02}), ("sgd", {"lr": 0.1})], speed=1000)
    try:
        assert ex.view(NetworkView).applies() and not ex.view(LandscapeView).applies()
        assert "slice" in ex.instruments._names
        ex.session.play()
        pump_until(ex, lambda: ex.worker.tick > 40 and rows(ex, 0, NetworkView) > 2, 30)
        src = ex.view(NetworkView).slots.sources[0].data
        assert np.isfinite(src["test_accuracy"]).all() and np.isfinite(src["train_loss"]).all()
        slices = ex.view(SliceView)
        assert not slices.picture.visible  # no empty frame before there is a slice ...
        root = slices.panel.get_root()  # ... on the page either: the model holding the figure is hidden
        holder = next(m for m in root.select({"type": LayoutDOM})
                      if slices.figure in getattr(m, "children", ()))
        assert not holder.visible or not slices.figure.visible
        job = slices.request("PCA of the trajectory", ex.session.lanes[0].id, 11, wait=True)
        assert not job.error, job.error
        slices.refresh()
        (z,) = slices.image.data["image"]
        assert z.shape == (11, 11) and np.isfinite(z).all() and slices.picture.visible
        assert "121 evaluations" in slices.caption.object and "PCA plane of Adam" in slices.caption.object
    finally:
        ex.close()


@pytest.mark.parametrize(("batch", "label"), [(None, "minibatch training loss (64 samples)"),
                                              (0, "training loss (full batch)")])
def test_minibatch_is_said_only_of_minibatch_curves(batch: int | None, label: str) -> None:
    ex = Explorer(landscape="digits_mlp", optimizers=["sgd"], batch_size=batch)
    try:
        assert ex.view(LossView).figure.title.text == label
    finally:
        ex.close()


def test_an_n_d_problem_is_neither_drawn_nor_treated_as_a_network() -> None:
    ex = Explorer(landscape="quadratic", problem_options={"dim": 20, "kappa": 100.0},
                  lanes=[("bcd_cyclic", {}), ("bcd_gauss_southwell", {})], speed=500)
    try:
        assert not ex.race_area.visible and "slice" not in ex.instruments._names
        assert ex.view(LossView).figure.title.text == "f(x) − f*"
        ex.session.play()
        pump_until(ex, lambda: rows(ex, 0) > 20 and rows(ex, 1) > 20, 30)
        assert "points drawn" not in ex.sidebar.counter.object
    finally:
        ex.close()


def test_the_curvature_panel_shows_sharpness_against_the_threshold_and_follows_lr() -> None:
    """On the bowl (Hessian diag(1, 10)) the sharpness is exactly 10; GD's threshold is 2/lr."""
    ex = Explorer(landscape="quadratic", lanes=[("sgd", {"lr": 0.05})], probe_every=2, speed=500)
    try:
        steps(ex, 5)
        view = ex.view(CurvatureView)
        src = view.slots.sources[0].data
        assert src["step"] == [0, 2, 4]
        np.testing.assert_allclose(src["sharpness"], 10.0, rtol=1e-8)
        np.testing.assert_allclose(src["threshold"], 2 / 0.05)
        ex.session.lanes[0].hyperparameters.lr = 0.1
        ex.session.probe_density = True
        steps(ex, 2)
        assert src["threshold"][-1] == pytest.approx(20.0)
        view.refresh()
        assert "<td>SGD</td><td>6</td><td>10</td>" in view.summary.object
        assert view.density_box.visible and len(view.density.data["x"]) == 400
        np.testing.assert_allclose(sorted(view.exact.data["x"]), [1.0, 10.0], rtol=1e-10)
    finally:
        ex.close()


def test_a_person_ranks_candidates_by_clicking_them_and_the_run_takes_the_ranking() -> None:
    ex = Explorer(landscape="quadratic", lanes=[("zo_ranksgd", {"human": True, "m": 2, "k": 2}), ("sgd", {})],
                  speed=500)
    try:
        ex.session.step()
        view = ex.view(LandscapeView)
        pump_until(ex, lambda: len(view.candidates.data["x"]) == 2)
        assert view.candidates.data["text"] == ["?", "?"] and view.prompt.visible
        waiting = ex.worker.run.awaiting[0].numpy()
        view.tap(float(waiting[1, 0]) + 1e-3, float(waiting[1, 1]))  # candidate 1 first
        assert view.candidates.data["text"] == ["?", "1"]
        widget(view.panel, "undo last rank").clicks += 1
        assert view.candidates.data["text"] == ["?", "?"]
        view.tap(float(waiting[1, 0]), float(waiting[1, 1]))
        start = ex.session.start_x
        view.tap(float(waiting[0, 0]), float(waiting[0, 1]))  # completes the ranking, not a start move
        assert ex.session.start_x == start and not view.prompt.visible
        ex.session.step()
        pump_until(ex, lambda: ex.session.lanes[0].id in ex.session.latest)
        assert ex.session.latest[ex.session.lanes[0].id].counts.rankings >= 1
        logged = [e.event for e in ex.worker.run.log if type(e.event).__name__ == "SubmitRanking"]
        assert [(e.lane, e.order) for e in logged] == [(0, (1, 0))]
    finally:
        ex.close()


def test_a_population_method_draws_its_particle_cloud() -> None:
    ex = Explorer(landscape="rastrigin", lanes=[("cbo", {}), ("sgd", {})], speed=500)
    try:
        steps(ex, 1)
        cloud = ex.view(LandscapeView).cloud.data
        particles = ex.worker.run.lanes[0].optimizers[0].particles().numpy()
        assert len(cloud["x"]) == len(particles) and set(cloud["color"]) == {PALETTE[0]}
        np.testing.assert_allclose(sorted(cloud["x"]), sorted(particles[:, 0]))
    finally:
        ex.close()


def test_a_simplex_problem_is_drawn_on_its_triangle() -> None:
    ex = Explorer(landscape="simplex_quadratic", lanes=[("exp_gradient", {}), ("sgd", {})], speed=500)
    try:
        steps(ex, 3)
        p = ex.session.latest[ex.session.lanes[0].id].position[0]
        heads = ex.view(LandscapeView).heads.data
        x, y = p[1] + 0.5 * p[2], np.sqrt(3) / 2 * p[2]  # barycentric, written out
        assert (heads["x"][0], heads["y"][0]) == pytest.approx((x, y), abs=1e-12)
        image = ex.view(LandscapeView).image.data["image"][0]
        assert np.isnan(image).any() and np.isfinite(image).any()
    finally:
        ex.close()


def test_an_x_axis_given_at_construction_is_applied() -> None:
    ex = Explorer(landscape="quadratic", optimizers=["sgd"], x_axis="function values")
    try:
        loss = ex.view(LossView)
        assert loss.slots.renderers[0][0].glyph.x == "function_values"
        assert ex.view(GradView).figure.xaxis[0].axis_label == "function values"
    finally:
        ex.close()


@pytest.mark.parametrize("problem", ["bilinear_game", "simplex_quadratic"])
def test_games_and_constrained_problems_plot_raw_f_on_a_linear_axis(problem: str) -> None:
    ex = Explorer(landscape=problem, optimizers=["sgd"])
    try:
        view = ex.view(LossView)
        assert view.f_star is None and view.figure.title.text == "f(x)"
        assert isinstance(view.figure.y_scale, LinearScale)
    finally:
        ex.close()


def test_presenter_rules_with_inequalities_survive_the_html_of_the_latex_pane() -> None:
    from app.controls import inline_math

    assert inline_math(r"\sum_{i<q} x > 0") == r"$\sum_{i\lt q} x \gt  0$"
    ex = Explorer(landscape="quadratic", lanes=[("zo_sgd", {})])
    try:
        ex.presenter = True
        rule = next(iter(ex.rules.select(pn.pane.LaTeX)))
        assert "<" not in rule.object and r"\lt" in rule.object
    finally:
        ex.close()


def test_presenter_rules_put_each_equation_of_a_rule_on_its_own_line() -> None:
    """Adam's rule is three equations (m_t, v_t, theta): three lines, each one whole formula, which
    together are the registered rule (none lost, none split inside)."""
    from engine.registry import get_spec

    ex = Explorer(landscape="quadratic", lanes=[("adam", {}), ("sgd", {})])
    try:
        ex.presenter = True
        adam, sgd = ([q.object for q in row.select(pn.pane.LaTeX)] for row in ex.rules.objects)
        assert [line.split(" =")[0] for line in adam] == ["$m_t", "$v_t", r"$\theta_{t+1}"]
        assert ",\\;".join(line.strip("$") for line in adam) == get_spec("adam").update_rule
        assert sgd == ["$" + get_spec("sgd").update_rule + "$"]
    finally:
        ex.close()


def test_a_network_gives_its_lanes_its_own_defaults_and_a_landscape_takes_them_back() -> None:
    """Issue 14: networks no longer inherit Rosenbrock's learning rates (landscapes/defaults.py):
    switching the problem, adding a lane and switching a lane's optimizer all take the problem's row."""
    ex = Explorer(landscape="rosenbrock", speed=500)
    try:
        s = ex.session
        assert [ln.values()["lr"] for ln in s.lanes] == [1e-3, 1e-3, 0.1]  # Rosenbrock's race
        widget(ex.controls, "Problem").value = "digits_mlp"
        assert s.problem == "digits_mlp" and s.message == ""
        want = [problem_defaults("digits_mlp", ln.optimizer)["lr"] for ln in s.lanes]
        assert [ln.values()["lr"] for ln in s.lanes] == want == [1.0, 0.3, 0.03]
        run_lrs = s.worker.call(lambda run: [ln.optimizer.param_groups[0]["lr"]
                                             for ln in run.lanes.values()]).result(timeout=30)
        assert run_lrs == want  # the engine runs them (they were not only shown)
        lane = s.add_lane("adamw")
        assert lane.values()["lr"] == problem_defaults("digits_mlp", "adam")["lr"]
        assert s.switch_optimizer(s.lanes[0], "nesterov")
        assert s.lanes[0].values()["lr"] == problem_defaults("digits_mlp", "momentum")["lr"]
        widget(ex.controls, "Problem").value = "himmelblau"  # no row: each optimizer's own lr
        assert s.lanes[1].values()["lr"] == 1e-3 and s.lanes[2].values()["lr"] == 1e-3
    finally:
        ex.close()


def test_rastrigin_trap_counts_trajectories_per_basin_and_at_the_global_minimum() -> None:
    """Issue 14: the Rastrigin preset asks to count trajectories, so the picture counts them: per
    basin (numbers that sum to every start of every lane) and per lane at the global minimum."""
    ex = Explorer(landscape="rosenbrock", speed=500)
    try:
        assert ex.apply_preset("rastrigin_trap")
        s, view = ex.session, ex.view(LandscapeView)
        ex.session.play()
        pump_until(ex, lambda: s.worker.tick > 300, timeout=60)
        s.pause()
        ex.pump()
        view.refresh()
        n = s.n_starts
        assert sum(int(t) for t in view.basins.data["text"]) == n * len(s.lanes) == 24
        ends = {ln.label: s.latest[ln.id].position for ln in s.lanes}
        # by hand: a trajectory is at the global minimum (0, 0) when it ends within 0.1 of it
        want = [f"{label} {int((np.hypot(p[:, 0], p[:, 1]) < 0.1).sum())}/{n}" for label, p in ends.items()]
        assert " · ".join(want) in view.basin_title.text
        # the markers tell the global minimum (star) from the listed local one (triangle)
        assert sorted(view.minima.data["marker"]) == ["star", "triangle"]
        # each basin's number sits where its trajectories ended: every end is near one of them
        centres = np.c_[view.basins.data["x"], view.basins.data["y"]]
        for p in ends.values():
            assert (np.linalg.norm(p[:, None, :] - centres[None], axis=2).min(axis=1) < 0.3).all()
    finally:
        ex.close()


def test_a_path_fades_behind_its_bright_trail() -> None:
    """Fading trails: the whole path is drawn faint, the newest TRAIL segments per start bright."""
    from app.views.landscape import TRAIL

    ex = Explorer(landscape="rosenbrock", optimizers=["adam"], speed=500)
    try:
        view, s = ex.view(LandscapeView), ex.session
        s.play()
        slot = s.lanes[0].slot
        pump_until(ex, lambda: len(view.paths.sources[slot].data["x0"]) > 2 * TRAIL, timeout=60)
        s.pause()
        ex.pump()
        path, trail = view.paths.sources[slot].data, view.trails.sources[slot].data
        assert len(trail["x0"]) == TRAIL and trail["x1"][-1] == path["x1"][-1]
        assert trail["x0"] == path["x0"][-TRAIL:]
        faint, bright = view.paths.renderers[slot][0].glyph, view.trails.renderers[slot][0].glyph
        assert faint.line_alpha < 0.5 < bright.line_alpha
    finally:
        ex.close()


def test_a_bouncing_lane_draws_each_pixel_of_its_path_once() -> None:
    """RMSprop at its default lr bounces about Rosenbrock's minimum, a visible move at every step: the
    faint path keeps one segment per pair of cells (``min_move``, about a pixel) however often the
    lane crosses it, and every segment the lane took (its trail) lies on a drawn one."""
    ex = Explorer(landscape="rosenbrock", optimizers=["rmsprop"], speed=1000)
    try:
        view, s = ex.view(LandscapeView), ex.session
        slot = s.lanes[0].slot
        offered, taken = [], set()
        unseen = view._unseen

        def cells(data: dict, i: int) -> tuple[int, ...]:
            a, b, c, d = (int(np.floor(data[k][i] / view.min_move)) for k in ("x0", "y0", "x1", "y1"))
            return (a, b, c, d) if (a, b) <= (c, d) else (c, d, a, b)

        def counted(lane_id: int, seg: dict) -> dict:
            offered.append(len(seg["x0"]))
            taken.update(cells(seg, i) for i in range(len(seg["x0"])))
            return unseen(lane_id, seg)

        view._unseen = counted
        s.play()
        pump_until(ex, lambda: sum(offered) >= 3000, timeout=120)
        s.pause()
        ex.pump()
        path = view.paths.sources[slot].data
        drawn = [cells(path, i) for i in range(len(path["x0"]))]
        assert len(drawn) == len(set(drawn))  # no pair of cells twice
        assert taken == set(drawn)  # every segment the lane took is on the picture
        assert len(drawn) < sum(offered) / 5  # it bounced: most steps crossed drawn pixels
    finally:
        ex.close()


def test_a_preset_shows_its_own_learning_rates_on_the_sliders() -> None:
    """A card reused for a preset's lane shows the preset's lr (0.019), not its slider's first
    option (before: "1e-06", the old grid lacked 0.019)."""
    ex = Explorer(landscape="rosenbrock", speed=500)
    try:
        assert ex.apply_preset("valley")
        card = ex.sidebar.cards[ex.session.lanes[0].id].card
        lr = widget(card, "lr")
        assert lr.value == 0.019 and 0.019 in lr.values and lr.value_throttled == 0.019
    finally:
        ex.close()


def test_keyboard_shortcuts_run_pause_and_step(explorer: Explorer) -> None:
    """What the page's key listener reports (app.keys.Shortcuts.press) runs, pauses and steps."""
    s = explorer.session
    assert not s.running
    explorer.shortcuts.press = "space:1.1"
    assert s.running
    explorer.shortcuts.press = "space:2.2"
    assert not s.running
    wait_for(lambda: s.worker.paused)
    tick = s.worker.tick
    explorer.shortcuts.press = "right:3.3"
    wait_for(lambda: s.worker.tick == tick + 1)
    explorer.shortcuts.press = "x:4.4"  # not a shortcut: nothing happens
    assert not s.running and s.worker.tick == tick + 1


def _learned(ex: Explorer) -> Any:
    view = ex.view(LearnedView)
    assert view.applies()
    s = ex.session
    s.pause()
    wait_for(lambda: s.worker.paused)
    ex.pump()
    if view._future is not None:  # one asked earlier (when the lane was shown): drawn first
        wait_for(view._future.done)
        view.refresh()
    view._ask()  # the picture of the paused race
    wait_for(lambda: view._future is not None and view._future.done())
    view.refresh()
    return view


def test_what_a_moons_network_learned_is_its_decision_boundary() -> None:
    """The two-moons picture: P(class 1) on a grid over the data; the training points it classifies
    right (read off the picture, nearest grid cell) match the run's own train accuracy."""
    ex = Explorer(landscape="moons_mlp", optimizers=["adam"], speed=500)
    try:
        s = ex.session
        s.play()
        pump_until(ex, lambda: s.worker.tick > 150, timeout=60)
        view = _learned(ex)
        d = view.image.data
        prob = np.asarray(d["image"][0])
        assert prob.shape == (GRID, GRID) and 0 <= prob.min() and prob.max() <= 1
        p = s.problem_obj
        X, y = p.X_train.numpy(), p.y_train.numpy()
        col = np.rint((X[:, 0] - d["x"][0]) / d["dw"][0] * (GRID - 1)).astype(int)
        row = np.rint((X[:, 1] - d["y"][0]) / d["dh"][0] * (GRID - 1)).astype(int)
        read = (prob[row, col] > 0.5).astype(int)
        theta = torch.as_tensor(s.worker.run.positions(s.lanes[0].engine_id)[0])
        model = p.make_module(0).double()  # an independent path: the module's own forward
        for name, value in p.unflatten(theta).items():
            model.get_parameter(name).data.copy_(value)
        truth_acc = float((model(p.X_train.double()).argmax(-1).numpy() == y).mean())
        assert truth_acc > 0.8  # it learned the moons
        assert abs(float((read == y).mean()) - truth_acc) < 0.05  # the picture shows that model
        assert len(view.points.data["x"]) == len(X)
    finally:
        ex.close()


def test_what_a_digits_network_learned_is_its_predictions() -> None:
    ex = Explorer(landscape="digits_mlp", optimizers=["sgd"], speed=500)
    try:
        s = ex.session
        s.play()
        pump_until(ex, lambda: s.worker.tick > 100, timeout=60)
        view = _learned(ex)
        p = s.problem_obj
        theta = torch.as_tensor(s.worker.run.positions(s.lanes[0].engine_id)[0])
        model = p.make_module(0).double()
        for name, value in p.unflatten(theta).items():
            model.get_parameter(name).data.copy_(value)
        X = p.X_test[:DIGITS_SHOWN].double()
        want = model(X).argmax(-1).numpy()
        assert view.labels.data["text"] == [str(int(k)) for k in want]
        right = want == p.y_test[:DIGITS_SHOWN].numpy()
        assert view.labels.data["color"] == ["#1a7f37" if r else "#d62728" for r in right]
        assert f"{int(right.sum())}/{DIGITS_SHOWN} right" in view.fig.title.text
        assert len(view.image.data["image"]) == DIGITS_SHOWN
    finally:
        ex.close()


def test_each_plot_has_log_linear_and_range_controls_and_a_preset_can_set_them() -> None:
    from bokeh.models import DataRange1d, Range1d

    ex = Explorer(landscape="rosenbrock", speed=500)
    try:
        ax = ex.axes
        ax.panel.collapsed = False  # opening the card lists the page's plots
        loss = ex.view(LossView).figure
        ax.plot.value = ex.figures().index(loss)
        was_log = isinstance(loss.y_scale, LogScale)
        ax.log.value = not was_log
        assert isinstance(loss.y_scale, LogScale) == (not was_log)
        ax.log.value = False
        ax.low.value, ax.high.value = 0.5, 40.0
        assert isinstance(loss.y_range, Range1d) and (loss.y_range.start, loss.y_range.end) == (0.5, 40.0)
        ax.log.value = True
        ax.low.value = -1.0  # a log axis cannot show it: refused, said why, range kept
        assert "log axis" in ax.note.object and loss.y_range.start == 0.5
        ax.auto.clicks += 1
        assert isinstance(loss.y_range, DataRange1d) and ax.low.value is None
        # the edge-of-stability preset reads its sharpness on a linear axis over 2.5 .. 9 ...
        assert ex.apply_preset("edge_of_stability")
        sharp = ex.view(CurvatureView).sharpness_fig
        assert isinstance(sharp.y_scale, LinearScale)
        assert (sharp.y_range.start, sharp.y_range.end) == (2.5, 9.0)
        # ... and gives the axis back when another race starts
        assert ex.apply_preset("valley")
        assert isinstance(sharp.y_scale, LogScale) and isinstance(sharp.y_range, DataRange1d)
    finally:
        ex.close()


def test_the_decision_boundary_colours_class_1_like_its_points() -> None:
    """P(class 1) = 1 is drawn in the colour of class 1's points (red), 0 in class 0's (blue)."""
    view = LearnedView.__new__(LearnedView)
    LearnedView.__init__(view, SimpleNamespace(), lambda _: None)
    palette = view.mapper.palette
    view._draw("boundary", "Adam", 1, np.zeros((GRID, GRID)), ((0, 1), (0, 1)), np.zeros((2, 2)),
               np.array([0, 1]))
    assert view.points.data["color"] == [palette[1], palette[-2]]  # near the low end, near the high end
    assert palette[0].startswith("#05") and palette[-1].startswith("#67")  # dark blue .. dark red


def test_a_new_start_drops_the_old_race_the_picture_had_not_drawn_yet(
        explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a race runs the picture is sent what several pumps drained (RACE_EVERY); a new start
    in between must not draw the old race's waiting records onto the new paths."""
    monkeypatch.setattr(explorer_module, "RACE_EVERY", 10**6)  # running, the picture always waits
    landscape = explorer.view(LandscapeView)
    explorer.session.play()
    pump_until(explorer, lambda: explorer.worker.tick > 3)
    assert explorer._later[id(landscape)].records  # drained, waiting for the picture
    landscape.start.data = {"x": [-0.75], "y": [1.25]}  # a drop: a new race from there
    explorer.session.pause()
    steps(explorer, 5)  # paused: the picture is sent at once
    firsts = [(src.data["x0"][0], src.data["y0"][0]) for src in landscape.paths.sources if src.data["x0"]]
    assert firsts and all(f == (-0.75, 1.25) for f in firsts), firsts


def test_an_instrument_tab_opened_mid_race_shows_every_step_so_far(explorer: Explorer) -> None:
    """The gradient-norm tab is closed while the race runs (it is sent records every few pumps); opened,
    it holds the same steps as the loss curve, each once."""
    grad, loss = explorer.view(GradView), explorer.view(LossView)
    explorer.session.play()
    pump_until(explorer, lambda: explorer.worker.tick > 30)
    explorer.session.pause()
    titles = list(explorer.instruments._names)
    explorer.instruments.active = titles.index(GradView.title)
    for slot in (0, 1):
        steps_loss, steps_grad = loss.slots.sources[slot].data["step"], grad.slots.sources[slot].data["step"]
        assert steps_grad == steps_loss and steps_loss == sorted(set(steps_loss)) and len(steps_loss) > 30


def test_the_cards_follow_the_lanes_through_removals_and_adds_in_the_same_places(explorer: Explorer) -> None:
    """The sidebar holds eight cards from the start: a lane that leaves hides its card, a new lane
    takes a hidden one (a card put in or taken out of the page made Bokeh walk the whole document).
    The cards shown are the race's lanes, in its order and colours, and a reused card's widgets
    drive its new lane only."""
    s, sidebar = explorer.session, explorer.sidebar
    column = list(sidebar.lanes.objects)
    assert len(column) == explorer_module.MAX_LANES

    def shown() -> list[tuple[str, str]]:
        assert list(sidebar.lanes.objects) == column  # no card in, none out
        cards = [c for c in sidebar.lanes.objects if c.visible]
        assert [sidebar.cards[ln.id].card for ln in s.lanes] == cards
        return [(c.title, c.header_background) for c in cards]

    assert shown() == [("SGD", PALETTE[0]), ("Adam", PALETTE[1])]
    add = widget(explorer.controls, "add an optimizer (up to 8)")
    for name in ("rmsprop", "adam", "lion"):
        add.value = name
    assert shown() == [(ln.label, ln.color) for ln in s.lanes] == [
        ("SGD", PALETTE[0]), ("Adam #1", PALETTE[1]), ("RMSprop", PALETTE[2]), ("Adam #2", PALETTE[3]),
        ("Lion", PALETTE[4])]
    rms = s.lanes[2]
    widget(sidebar.cards[rms.id].card, "✕ remove").clicks += 1  # a card in the middle
    assert shown() == [("SGD", PALETTE[0]), ("Adam #1", PALETTE[1]), ("Adam #2", PALETTE[3]),
                       ("Lion", PALETTE[4])]
    add.value = "nesterov"  # after Lion: a hidden card after Lion's
    nesterov = s.lanes[-1]
    assert shown()[-1] == ("Nesterov momentum", PALETTE[5])  # a colour not just left
    steps(explorer, 1)  # it has joined the run
    card = sidebar.cards[nesterov.id]
    card.card.collapsed = False  # five lanes: cards start closed; opened, its widgets are Nesterov's
    lr = widget(card.card, "lr")
    others = {ln.id: ln.values() for ln in s.lanes if ln is not nesterov}
    new = next(v for v in lr.values if v != nesterov.hyperparameters.lr)
    with param.edit_constant(lr):  # a drag's end, as the browser sends it
        lr.param.update(value=new, value_throttled=new)
    steps(explorer, 1)
    assert nesterov.hyperparameters.lr == new
    assert {ln.id: ln.values() for ln in s.lanes if ln is not nesterov} == others
    log = explorer.worker.call(lambda run: list(run.log)).result(timeout=10)
    events = [e.event for e in log if isinstance(e.event, SetHyperparameter)]
    assert events == [SetHyperparameter(nesterov.engine_id, "lr", new)]
    assert explorer.session.latest[nesterov.id].hyperparameters["lr"] == new
    widget(card.card, "switch this lane to").value = "lion"  # its switch drives it too
    assert nesterov.optimizer == "lion" and shown()[-1] == ("Lion #2", nesterov.color)
    for lane in list(s.lanes)[:-1]:  # all but one leave; the cards still match
        widget(sidebar.cards[lane.id].card, "✕ remove").clicks += 1
        shown()
    assert shown() == [("Lion", nesterov.color)]


def test_reset_shows_step_zero_in_its_own_click(explorer: Explorer) -> None:
    """Reset's click waits for the worker (it takes it between two steps) and shows the fresh start
    at once: the counter and the curves, before any pump of the page's clock."""
    steps(explorer, 3)
    assert "step 3" in explorer.sidebar.counter.object
    explorer.sidebar.reset_button.clicks += 1
    assert "step 0" in explorer.sidebar.counter.object
    assert all(len(src.data["step"]) == 0 for src in explorer.view(LossView).slots.sources)
    steps(explorer, 1)
    assert "step 1" in explorer.sidebar.counter.object


def test_reset_clicked_as_the_page_closes_raises_nothing(explorer: Explorer) -> None:
    """A Reset whose page is closing: the worker stops and cancels the reset it had not taken; the
    click's wait for it and the pump end quietly (a CancelledError traceback reached the server's
    log in 5 of 30 pages closed right after a Reset)."""
    from concurrent.futures import Future

    steps(explorer, 2)
    cancelled: Future = Future()
    cancelled.cancel()
    explorer.session._pending_reset = cancelled
    explorer._reset_shown()  # raised CancelledError
    assert "step 2" in explorer.sidebar.counter.object and explorer.session._pending_reset is None


def _placed(mark: Mark) -> Mark:
    """``mark`` as the views get it: placed on every x-axis (at its tick)."""
    return replace(mark, at=dict.fromkeys(AXES.values(), float(mark.tick)))


def _change(tick: int, lane: int, value: str, prefix: str, before: str, after: str) -> Mark:
    return _placed(Mark.of_change(tick, value, prefix, before, after, lane))


def test_quick_changes_of_one_value_share_one_marker_and_nothing_else_does() -> None:
    """A few presses of an arrow key on a slider land a few ticks apart: their texts would be
    written over each other. Changes of one value of one lane within MERGE_TICKS of the last are
    one marker at the first, from its first value to the latest; anything else is its own."""
    marks = Marks(figure())
    lr = lambda t, a, b, lane=1: _change(t, lane, "lr", f"L{lane}: lr", a, b)  # noqa: E731
    marks.add([lr(10, "0.001", "0.002"), lr(20, "0.002", "0.005")])  # in one drain
    marks.add([lr(30, "0.005", "0.01")])  # a later drain: the drawn marker's text changes
    assert marks.source.data["label"] == ["L1: lr 0.001 → 0.01"] and marks.source.data["step"] == [10]
    marks.add([lr(31, "0.002", "0.003", lane=2),  # another lane
               _change(32, 1, "momentum", "L1: momentum", "0.9", "0.5"),  # another value
               _change(33, 1, "schedule", "L1:", "constant lr", "lr cosine"),
               lr(34, "0.01", "0.02")])  # after others: its own marker again
    marks.add([lr(34 + MERGE_TICKS + 1, "0.02", "0.05")])  # too late to join
    marks.add([_placed(Mark(200, "reset"))])
    marks.add([_placed(Mark(201, "reset"))])  # not a value's change: never merged
    assert marks.source.data["label"] == [
        "L1: lr 0.001 → 0.01", "L2: lr 0.002 → 0.003", "L1: momentum 0.9 → 0.5",
        "L1: constant lr → lr cosine", "L1: lr 0.01 → 0.02", "L1: lr 0.02 → 0.05", "reset", "reset"]
    marks.clear()
    marks.add([lr(300, "0.05", "0.1")])
    assert marks.source.data["label"] == ["L1: lr 0.05 → 0.1"]
    # the text reads upwards from its anchor just above the x-axis (screen y counts from the frame's
    # bottom): aligned right it ran down out of the frame and only its last character showed
    t = marks.labels
    assert t.y_units == "screen" and 0 <= t.y <= 10 and t.angle == pytest.approx(np.pi / 2)
    assert t.text_align == "left"


def test_arrow_keys_on_a_slider_leave_one_marker(explorer: Explorer) -> None:
    steps(explorer, 1)
    adam = explorer.session.lanes[1]
    lr = widget(explorer.sidebar.cards[adam.id].card, "lr")
    options = list(lr.options.values()) if isinstance(lr.options, dict) else list(lr.options)
    values = [v for v in options if float(v) > 0.001][:3]
    for v in values:  # each press: one event, a step apart
        with param.edit_constant(lr):
            lr.param.update(value=v, value_throttled=v)
        steps(explorer, 1)
    assert explorer.session.latest[adam.id].hyperparameters["lr"] == values[-1]
    view = explorer.view(LossView)
    labels = view.marks.source.data["label"]
    assert labels == [f"Adam: lr 0.001 → {values[-1]:g}"], labels
    text = view.marks.labels
    px = {}
    for big in (True, False):  # the markers' text grows for a projector, as the ticks' does
        explorer.presenter = big
        px[big] = int(text.text_font_size.removesuffix("px"))
    assert px[True] >= 1.3 * px[False]
