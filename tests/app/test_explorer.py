"""The explorer without a browser: build it, drive it through ``param`` and its widgets, and check
what reaches the plot streams, the run's event log and the worker thread."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import panel as pn
import param
import pytest
from bokeh.document import Document
from panel.io.state import set_curdoc

from app.explorer import CUSTOM, MAX_LANES, Explorer
from app.streams import lane_color
from engine.events import SetHyperparameter, SwitchOptimizer
from landscapes.networks import NetworkProblem
from tests.engine.test_oracles import closure_specs  # noqa: F401  (fixture)
from tests.engine.test_worker import wait_for


@pytest.fixture
def explorer():
    ex = Explorer(landscape="quadratic", optimizers=["sgd", "adam"], speed=500)
    yield ex
    ex.close()


def pump_until(ex: Explorer, cond, timeout: float = 5.0) -> None:
    def check() -> bool:
        ex.pump()
        return cond()
    wait_for(check, timeout)


def curve_len(ex: Explorer, lane: int) -> int:
    return len(ex.streams.curve(lane).data["step"])


def test_records_reach_the_plot_streams(explorer: Explorer) -> None:
    explorer.play()
    pump_until(explorer, lambda: curve_len(explorer, 0) > 30 and curve_len(explorer, 1) > 30)
    assert len(explorer.streams.segments.data["x0"]) > 0
    assert set(explorer.streams.heads.data["optimizer"]) == {"SGD", "Adam"}
    table = explorer.leaderboard.value
    pump_until(explorer, lambda: len(explorer.leaderboard.value) == 2)
    table = explorer.leaderboard.value
    assert list(table["optimizer"]) == ["SGD", "Adam"] and (table["status"] == "running").all()
    # curves show suboptimality f - f* (the bowl has f* = 0), which is the loss itself here
    rec = explorer.streams.latest[1]
    assert explorer.streams.curve(1).data["loss"][-1] == pytest.approx(float(np.median(rec.loss)))


def test_slider_change_mid_run_acts_at_next_step_and_is_logged(explorer: Explorer) -> None:
    explorer.step()
    pump_until(explorer, lambda: curve_len(explorer, 1) == 1)
    card = explorer.cards.objects[1]  # Adam's card: the first widget is its lr slider (log grid)
    lr_slider = card.objects[0]
    assert lr_slider.name == "lr"
    with param.edit_constant(lr_slider):  # what the browser sends when a drag ends
        lr_slider.param.update(value=0.1, value_throttled=0.1)
    explorer.step()
    pump_until(explorer, lambda: curve_len(explorer, 1) == 2)
    rec = explorer.streams.latest[1]
    assert rec.hyperparameters["lr"] == 0.1 and rec.step == 1
    run = explorer.worker.run
    assert [(e.tick, e.event) for e in run.log if isinstance(e.event, SetHyperparameter)] == \
        [(1, SetHyperparameter(1, "lr", 0.1))]
    assert explorer.streams.events.data["label"] == ["Adam: lr = 0.1"]


def test_pause_stops_stepping(explorer: Explorer) -> None:
    explorer.play()
    pump_until(explorer, lambda: explorer.worker.tick > 10)
    explorer.pause()
    wait_for(lambda: explorer.worker.paused)
    tick = explorer.worker.tick
    time.sleep(0.1)
    assert explorer.worker.tick == tick
    explorer.pump()
    assert "paused" in explorer.counter.object and f"step {tick}" in explorer.counter.object


def test_a_served_race_starts_when_its_page_has_loaded() -> None:
    """Under ``panel serve`` an autostarted race takes no step before the page reports it has
    loaded (Bokeh's document_ready, which Panel turns into its onload callbacks): updates sent
    while the browser is still building the page pile up, and the page then runs seconds late."""
    doc = Document()  # with what a served session's document has: a session context and its request
    session = SimpleNamespace(id="test", request=SimpleNamespace(arguments={}, cookies={}, headers={}))
    doc._session_context = lambda: session
    with set_curdoc(doc):
        ex = Explorer(landscape="quadratic", optimizers=["sgd"], speed=500, autostart=True)
        try:
            ex.start_streaming()
            time.sleep(0.3)
            assert ex.running and ex.worker.tick == 0 and ex._callback is None
            pn.state._on_load(doc)  # what Panel runs when the page says it is ready
            wait_for(lambda: ex.worker.tick > 10)
            assert ex._callback is not None
        finally:
            ex.close()


def test_close_stops_the_worker_thread(explorer: Explorer) -> None:
    explorer.play()
    worker = explorer.worker
    wait_for(lambda: worker.tick > 2)
    explorer.close()
    assert worker.join(2.0)


def test_bad_function_shows_an_error_and_the_race_goes_on(explorer: Explorer) -> None:
    explorer.play()
    worker = explorer.worker
    explorer.param.update(expression="sin(x", landscape=CUSTOM)
    assert explorer.error.visible and "column" in explorer.message
    assert explorer.worker is worker and worker.alive and explorer.problem.name == "quadratic"
    explorer.expression = "x**2 + 3*y**2"
    assert not explorer.error.visible and explorer.worker is not worker and worker.join(2.0)
    pump_until(explorer, lambda: curve_len(explorer, 0) > 3)


def test_changing_the_landscape_resets_the_race(explorer: Explorer) -> None:
    explorer.play()
    pump_until(explorer, lambda: explorer.worker.tick > 5)
    explorer.landscape = "himmelblau"
    assert explorer.worker.run.problem.name == "himmelblau"
    pump_until(explorer, lambda: curve_len(explorer, 0) > 0)
    assert explorer.streams.curve(0).data["step"][0] == 0
    assert len(explorer.landscape_view.minima.data["x"]) == 4


def test_switching_an_optimizer_continues_from_its_position(explorer: Explorer) -> None:
    for _ in range(5):
        explorer.step()
    pump_until(explorer, lambda: curve_len(explorer, 0) == 5)
    before = explorer.worker.run.positions(0).copy()
    switch = explorer.cards.objects[0].objects[-1]
    switch.value = "lion"
    explorer.step()
    pump_until(explorer, lambda: explorer.streams.latest[0].optimizer == "lion")
    rec = explorer.streams.latest[0]
    np.testing.assert_array_equal(rec.position, before)
    assert rec.step == 5
    assert any(isinstance(e.event, SwitchOptimizer) for e in explorer.worker.run.log)
    assert explorer.optimizers == ["lion", "adam"]


def test_adding_and_removing_optimizers_mid_race(explorer: Explorer) -> None:
    explorer.step()
    explorer.optimizers = ["adam", "rmsprop"]
    explorer.step()
    pump_until(explorer, lambda: 2 in explorer.streams.latest)
    assert explorer.streams.latest[2].optimizer == "rmsprop" and explorer.streams.latest[2].step == 0
    assert sorted(explorer.lane_names.values()) == ["adam", "rmsprop"]
    too_many = ["sgd", "momentum", "nesterov", "adam", "adamw", "amsgrad", "rmsprop", "adagrad", "lion"]
    assert len(too_many) > MAX_LANES
    explorer.optimizers = too_many
    assert "at most 8" in explorer.message and len(explorer.lane_names) == 2


def test_clicking_the_landscape_moves_the_start(explorer: Explorer) -> None:
    explorer._on_tap(0.5, -0.25)
    assert explorer.worker.run.starts[0].tolist() == [0.5, -0.25]
    assert explorer.landscape_view.start.data == {"x": [0.5], "y": [-0.25]}


def test_two_explorers_are_independent_sessions() -> None:
    a, b = Explorer(optimizers=["sgd"]), Explorer(optimizers=["adam"])
    try:
        a.step()
        wait_for(lambda: a.worker.tick == 1)
        time.sleep(0.05)
        assert b.worker.tick == 0 and a.worker is not b.worker
    finally:
        a.close()
        b.close()


def test_a_landscape_without_known_minima_plots_raw_loss_on_a_linear_axis(explorer: Explorer) -> None:
    from bokeh.models import LinearScale, LogScale

    assert isinstance(explorer.loss_view.figure.y_scale, LogScale)
    explorer.landscape = "saddle"  # x^2 - y^2: losses go negative
    assert isinstance(explorer.loss_view.figure.y_scale, LinearScale)
    explorer.step()
    pump_until(explorer, lambda: curve_len(explorer, 0) == 1)
    rec = explorer.streams.latest[0]
    assert explorer.streams.curve(0).data["loss"][-1] == float(rec.loss[0])


def streamed_sources(ex: Explorer) -> set[int]:
    s = ex.streams
    return set(map(id, (s.segments, *s.curves.values(), *s.metric_curves.values(),
                        *s.curvature_curves.values())))


def legend_entries(fig) -> dict[str, list]:
    """Label -> the renderers its legend item draws from."""
    return {item.label.value: list(item.renderers) for legend in fig.legend for item in legend.items}


def test_legends_draw_from_stand_ins_and_hiding_one_hides_its_lines() -> None:
    """A Bokeh legend listens to every source its items' renderers hold and rebuilds itself on
    each change: no legend may hold a streamed source (app.figures.lane_legend)."""
    ex = Explorer(landscape="quadratic", lanes=[("sgd", {"lr": 0.05}), ("adam", {})], probe_every=2,
                  speed=500)
    try:
        for _ in range(5):
            ex.step()
        pump_until(ex, lambda: len(ex.streams.curvature_curves) == 2
                   and all(len(ex.streams.curve(k).data["step"]) == 5 for k in (0, 1)))
        ex.curvature_view.update({0: "SGD", 1: "Adam"}, 0.0, 1)
        streamed = streamed_sources(ex)
        figures = (ex.landscape_view.figure, ex.loss_view.figure, ex.grad_view.figure,
                   ex.curvature_view.sharpness_fig)
        for fig in figures:
            entries = legend_entries(fig)
            assert {"SGD", "Adam"} <= set(entries), (fig.title.text, entries)
            held = [r for rs in entries.values() for r in rs if id(r.data_source) in streamed]
            assert held == [], fig.title.text
        # a lane's entry hides that lane's lines (the click's effect: click_policy "hide")
        lines = {r for r in ex.curvature_view.sharpness_fig.renderers
                 if id(getattr(r, "data_source", None)) == id(ex.streams.curvature_curve(0))}
        assert len(lines) == 3  # sharpness, threshold, along the update
        (stand_in,) = legend_entries(ex.curvature_view.sharpness_fig)["SGD"]
        stand_in.visible = False
        assert not any(r.visible for r in lines)
        assert all(r.visible for r in ex.curvature_view.sharpness_fig.renderers
                   if id(getattr(r, "data_source", None)) == id(ex.streams.curvature_curve(1)))
        stand_in.visible = True
        assert all(r.visible for r in lines)
        (loss_stand_in,) = legend_entries(ex.loss_view.figure)["Adam"]
        loss_stand_in.visible = False
        assert not ex.loss_view._lines[1].visible and ex.loss_view._lines[0].visible
    finally:
        ex.close()


def test_a_network_problem_shows_train_test_curves_and_a_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    import copy
    import threading

    copied_on: list[str] = []  # a module copied mid-step can hold functional_call's non-leaf tensors
    deepcopy = copy.deepcopy

    def spy(obj, memo=None):
        if isinstance(obj, NetworkProblem):
            copied_on.append(threading.current_thread().name)
        return deepcopy(obj, memo)

    monkeypatch.setattr(copy, "deepcopy", spy)
    import app.memory_view

    accounted_on = []  # the memory instrument steps each lane once, in its own thread
    account = app.memory_view.account

    def account_spy(name, problem, **kw):
        accounted_on.append(problem)
        return account(name, problem, **kw)

    monkeypatch.setattr(app.memory_view, "account", account_spy)
    ex = Explorer(landscape="moons_mlp", lanes=[("adam", {"lr": 0.02}), ("sgd", {"lr": 0.1})], speed=1000)
    try:
        assert ex.network_view.panel.visible and not ex.landscape_pane.visible
        ex.play()
        # generous bounds: a loaded 2-core CI machine (the memory bars account each lane meanwhile)
        pump_until(ex, lambda: ex.worker.tick > 40 and len(ex.streams.metric_curves) == 2, timeout=30)
        src = ex.streams.metric_curves[0]
        assert {"train_loss", "test_loss", "test_accuracy"} <= set(src.data)
        for fig in (ex.network_view.loss_fig, ex.network_view.acc_fig):  # legends hold no streamed source
            entries = legend_entries(fig)
            assert set(entries) == {"Adam", "SGD"}
            assert not {id(r.data_source) for rs in entries.values() for r in rs} & streamed_sources(ex)
        pump_until(ex, lambda: len(ex.leaderboard.value) == 2, timeout=30)
        assert "test accuracy" in ex.leaderboard.value.columns
        copied_on.clear()
        job = ex.request_slice("PCA of the trajectory", 0, 11)  # while the race runs
        pump_until(ex, lambda: job.done and ex._slice_job is None, timeout=30)
        assert not job.error, job.error
        assert copied_on and all(name.startswith("optiscope-run-") for name in copied_on), set(copied_on)
        assert accounted_on and all(p is not ex.worker.run.problem for p in accounted_on)
        (z,) = ex.network_view.image.data["image"]
        assert z.shape == (11, 11) and np.isfinite(z).all()
        assert len(ex.network_view.path.data["x"]) >= 3
        assert "121 evaluations" in ex.network_view.caption.object
        assert "PCA plane of Adam" in ex.network_view.caption.object
    finally:
        ex.close()


def test_an_n_d_problem_is_neither_drawn_nor_treated_as_a_network() -> None:
    """Block coordinate descent's 20-D quadratic: curves, table and instruments, but no landscape
    picture and none of a network's panels (train/test curves, slices, a minibatch loss label)."""
    ex = Explorer(landscape="quadratic", problem_options={"dim": 20, "kappa": 100.0},
                  lanes=[("bcd_cyclic", {}), ("bcd_gauss_southwell", {})], speed=500)
    try:
        assert not ex.landscape_pane.visible and not ex.network_view.panel.visible
        assert ex.loss_view.figure.yaxis.axis_label == "f(x) − f* (median over starts)"
        ex.play()
        pump_until(ex, lambda: curve_len(ex, 0) > 20 and curve_len(ex, 1) > 20, timeout=30)
        assert len(ex.streams.segments.data["x0"]) == 0  # nothing to draw a path on
        assert "points drawn" not in ex.counter.object
        assert ex.request_slice("PCA of the trajectory", 0, 11) is None  # slices are for networks
    finally:
        ex.close()


def test_curvature_panel_shows_sharpness_against_the_threshold_and_follows_lr() -> None:
    """On the bowl (Hessian diag(1, 10)) the sharpness is exactly 10; GD's threshold is 2/lr."""
    from engine.events import SetProbes

    ex = Explorer(landscape="quadratic", lanes=[("sgd", {"lr": 0.05})], probe_every=2, speed=500)
    try:
        for _ in range(5):
            ex.step()
        pump_until(ex, lambda: len(ex.streams.curvature_curve(0).data["step"]) == 3)
        src = ex.streams.curvature_curve(0).data
        assert src["step"] == [0, 2, 4]
        np.testing.assert_allclose(src["sharpness"], 10.0, rtol=1e-8)
        np.testing.assert_allclose(src["threshold"], 2 / 0.05)
        ex.set_hyperparameter(0, "lr", 0.1)
        ex.param.update(probe_density=True)
        ex.step()
        ex.step()
        pump_until(ex, lambda: len(ex.streams.curvature_curve(0).data["step"]) == 4)
        assert ex.streams.curvature_curve(0).data["threshold"][-1] == pytest.approx(20.0)
        assert any(isinstance(e.event, SetProbes) for e in ex.worker.run.log)
        ex.pump()
        ex.curvature_view.update({0: "SGD"}, ex.worker.run.probe_overhead, 1)
        assert "| SGD | 6 | 10 | 10, " not in ex.curvature_view.summary.object  # top-1 only
        assert "| SGD | 6 |" in ex.curvature_view.summary.object and "of the run's compute time" in \
            ex.curvature_view.summary.object
        ex.curvature_view.density_lane.value = 0
        ex.curvature_view._draw_density()
        assert len(ex.curvature_view.density.data["x"]) == 400
        np.testing.assert_allclose(sorted(ex.curvature_view.exact.data["x"]), [1.0, 10.0], rtol=1e-10)
    finally:
        ex.close()


@pytest.mark.usefixtures("closure_specs")
def test_a_person_ranks_candidates_by_clicking_them_and_the_run_takes_the_ranking() -> None:
    ex = Explorer(landscape="rosenbrock", lanes=[("t_pair", {"human": True}), ("sgd", {})], speed=500)
    try:
        ex.step()
        pump_until(ex, lambda: ex._waiting is not None)
        cands = ex.landscape_view.candidates.data
        assert len(cands["x"]) == 2 and cands["text"] == ["?", "?"] and ex.ranking_prompt.visible
        waiting = ex.worker.run.awaiting[0].numpy()
        # a click near candidate 1 ranks it first; undo and redo; then candidate 0
        ex._on_tap(float(waiting[1, 0]) + 1e-3, float(waiting[1, 1]))
        assert ex.ranked == [1] and ex.landscape_view.candidates.data["text"] == ["?", "1"]
        ex.undo_rank()
        assert ex.ranked == []
        ex.rank_candidate(1)
        start = ex.start_x
        ex._on_tap(float(waiting[0, 0]), float(waiting[0, 1]))  # completes the ranking, not a start move
        assert ex.start_x == start and not ex.ranking_prompt.visible
        ex.step()
        pump_until(ex, lambda: 0 in ex.streams.latest)
        rec = ex.streams.latest[0]
        assert rec.step == 0 and rec.counts.rankings == 1
        logged = [e.event for e in ex.worker.run.log if type(e.event).__name__ == "SubmitRanking"]
        assert [(e.lane, e.order) for e in logged] == [(0, (1, 0))]
        # the step followed the person's order: theta -= lr (xi_worse - xi_better)
        xi = (waiting - ex.worker.run.starts[0].numpy()) / 0.1
        expected = ex.worker.run.starts[0].numpy() - 0.05 * (xi[0] - xi[1])
        np.testing.assert_allclose(ex.worker.run.positions(0)[0], expected, rtol=1e-12)
    finally:
        ex.close()


def test_a_population_method_draws_its_particle_cloud() -> None:
    ex = Explorer(landscape="rastrigin", lanes=[("cbo", {}), ("sgd", {})], speed=500)
    try:
        ex.step()
        pump_until(ex, lambda: len(ex.landscape_view.cloud.data["x"]) > 0)
        particles = ex.worker.run.lanes[0].optimizers[0].particles().numpy()
        cloud = ex.landscape_view.cloud.data
        assert len(cloud["x"]) == len(particles) and set(cloud["color"]) == {lane_color(0)}
        np.testing.assert_allclose(sorted(cloud["x"]), sorted(particles[:, 0]))
    finally:
        ex.close()


def test_a_simplex_problem_is_drawn_on_its_triangle() -> None:
    ex = Explorer(landscape="simplex_quadratic", lanes=[("exp_gradient", {}), ("sgd", {})], speed=500)
    try:
        for _ in range(3):
            ex.step()
        pump_until(ex, lambda: all(ex.streams.latest.get(k) is not None and ex.streams.latest[k].step >= 2
                                   for k in (0, 1)))
        p = ex.streams.latest[0].position[0]
        heads = ex.streams.heads.data
        x, y = p[1] + 0.5 * p[2], np.sqrt(3) / 2 * p[2]  # barycentric, written out
        assert (heads["x"][0], heads["y"][0]) == pytest.approx((x, y), abs=1e-12)
        image = ex.landscape_view.image.data["image"][0]
        assert np.isnan(image).any() and np.isfinite(image).any()  # the triangle, blank outside
        star = ex.landscape_view.minima.data
        assert (star["x"][0], star["y"][0]) == pytest.approx((0.25 + 0.125, np.sqrt(3) / 8), abs=1e-12)
    finally:
        ex.close()


def test_an_x_axis_given_at_construction_is_applied() -> None:
    ex = Explorer(landscape="quadratic", optimizers=["sgd"], x_axis="function values")
    try:
        assert ex.loss_view.x == "function_values"
        assert ex.grad_view.figure.xaxis[0].axis_label == "function values"
    finally:
        ex.close()


@pytest.mark.parametrize("problem", ["bilinear_game", "simplex_quadratic"])
def test_games_and_constrained_problems_plot_raw_f_on_a_linear_axis(problem: str) -> None:
    ex = Explorer(landscape=problem, optimizers=["sgd"])
    try:
        assert ex.streams.f_star is None  # f - f* can be negative here: a log axis would hide it
        assert ex.loss_view.figure.yaxis[0].axis_label == "f(x) (median over starts)"
        assert type(ex.loss_view.figure.y_scale).__name__ == "LinearScale"
    finally:
        ex.close()


def test_update_rules_with_inequalities_survive_the_html_of_the_latex_pane() -> None:
    from app.controls import inline_math

    assert inline_math(r"\sum_{i<q} x > 0") == r"$\sum_{i\lt q} x \gt  0$"
    ex = Explorer(landscape="quadratic", lanes=[("zo_sgd", {})])
    try:
        rule = next(o for o in ex.cards.objects[0].objects if type(o).__name__ == "LaTeX")
        assert "<" not in rule.object and r"\lt" in rule.object
    finally:
        ex.close()
