"""The bilevel & SSO panel: what it draws is the engine's trace (units from the documented costs, the
lower-level gap from its closed form), a diverged method is drawn as diverged and never stretches the
axis, Cancel stops a run and leaves the panel usable, bad settings get a message and lose nothing, and
SSO's two oracle counts shown are the run's."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from app import bilevel as model
from app.figures import FLOOR
from app.views import VIEWS
from app.views.bilevel import BilevelView
from engine.bilevel import penalty_bias, trace
from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_landscape, get_network

MU = 2.0  # the toy's lower-level curvature: g = mu/2 y^2 - mu y sin x


@pytest.fixture
def view() -> BilevelView:
    messages: list[str] = []
    v = BilevelView(None, messages.append)
    v.messages = messages  # type: ignore[attr-defined]
    yield v
    v.close()


@pytest.fixture(scope="module")
def toy():
    return get_landscape("bilevel_toy")


def line(fig, name: str) -> dict[str, np.ndarray]:
    (r,) = [r for r in fig.renderers if r.name == name]
    return {k: np.asarray(v) for k, v in r.data_source.data.items()}


def test_the_panel_is_on_the_page() -> None:
    assert BilevelView in VIEWS


def test_the_drawn_curves_are_the_engines_trace(view, toy) -> None:
    view.methods.value = ["penalty_bilevel", "bo_rep"]
    view.steps.value, view.sigma.value = 8, 0.3
    job = view.run(wait=True)
    view.refresh()
    assert job.error == "" and view.message.object == ""
    best = toy.minima[0].value
    for name, hp in (("penalty_bilevel", {"sigma": 0.3}), ("bo_rep", {})):
        tr = trace(toy, name, hp, steps=8)
        # a gradient costs 3 units with its forward, an HVP 4
        units = np.concatenate([[0], 3 * tr.gradients + 4 * tr.hvps])
        obj = line(view.shown["objective"], name)
        np.testing.assert_array_equal(obj["x"], units)
        np.testing.assert_array_equal(obj["y"], np.maximum(tr.hyperobjective - best, FLOOR))
        err = line(view.shown["error"], name)
        np.testing.assert_array_equal(err["x"], units[1:])
        np.testing.assert_array_equal(err["y"], np.maximum(tr.hypergradient_error, FLOOR))
        gap = line(view.shown["gap"], name)  # g(x, y) - min_y g(x, .) = mu/2 (y - sin x)^2 on the toy
        want = 0.5 * MU * (tr.lower[:, 0] - np.sin(tr.upper[:, 0])) ** 2
        np.testing.assert_allclose(gap["y"], np.maximum(want, FLOOR), rtol=1e-9, atol=1e-15)
        table = view.figures.objects[0].object  # the lower level's work, as the engine counts it
        assert f"<td>{int(tr.gradients[-1] + tr.hvps[-1]):,}</td><td>{int(tr.inner_oracles[-1]):,} (" in table
        path = line(view.shown["trajectory"], name)
        np.testing.assert_array_equal(path["x"], tr.upper[:, 0])
        np.testing.assert_array_equal(path["y"], tr.lower[:, 0])


def test_a_diverged_method_is_marked_and_does_not_stretch_the_axis(view, toy) -> None:
    view.methods.value = ["implicit_hypergradient", "lv_hba"]
    view.steps.value = 10
    planned = dict(model.plan("bilevel_toy", view.methods.value, 10, 0.1))
    planned["implicit_hypergradient"]["lr"] = 100.0  # x grows ~ (1 - 100 rho)^t = (-9)^t
    result = model.run_methods("bilevel_toy", list(planned.items()), 10)
    view.draw(result)
    exact, lv = result.methods
    assert exact.status.startswith("diverged at step ") and not lv.diverged
    k = int(exact.status.split(":")[0].rsplit(" ", 1)[1])
    tr = trace(toy, "implicit_hypergradient", planned["implicit_hypergradient"], steps=10)  # no rule there
    f = 0.5 * (tr.lower[:, 0] - 1) ** 2 + 0.05 * tr.upper[:, 0] ** 2  # the toy's upper objective, rho = 0.1
    limit = model.DIVERGENCE * max(abs(f[0]), 1.0)
    assert np.all(np.abs(f[:k]) <= limit) and abs(f[k]) > limit  # the race's rule first fails at x_k
    fig = view.shown["objective"]
    drawn = line(view.shown["trajectory"], "implicit_hypergradient")  # the panel draws x_0 .. x_{k-1}
    np.testing.assert_array_equal(drawn["x"], tr.upper[:k, 0])
    np.testing.assert_array_equal(drawn["y"], tr.lower[:k, 0])
    (r,) = [r for r in fig.renderers if r.name == "implicit_hypergradient"]
    assert r.glyph.line_dash == [6] or r.glyph.line_dash == "dashed"
    assert [r.name for r in fig.y_range.renderers] == ["lv_hba"]  # only the live method fits the axis
    labels = [item.label["value"] for item in fig.legend[0].items]
    assert any(lbl.endswith(f"diverged at step {k}") for lbl in labels)
    assert f"<td>diverged at step {k}</td>" in view.figures.objects[0].object  # the table says so too


def test_cancel_stops_the_run_and_leaves_the_panel_usable(view) -> None:
    view.methods.value = ["penalty_bilevel"]
    view.steps.value = model.MAX_STEPS  # ~half a minute if not cancelled
    job = view.run()
    while job.fraction == 0.0 and not job.done:
        threading.Event().wait(0.01)
    job.cancel()
    assert job.wait(10) and job.error.endswith("cancelled")
    view.refresh()
    assert not view.jobs.busy and "cancelled" in view.message.object
    assert not [t for t in threading.enumerate() if t.name == f"optiscope-job-{job.title}" and t.is_alive()]
    view.steps.value = 5
    again = view.run(wait=True)
    view.refresh()
    assert again.error == "" and len(line(view.shown["objective"], "penalty_bilevel")["x"]) == 6


@pytest.mark.parametrize("sigma", [0.0, -1.0, math.nan])
def test_a_non_positive_penalty_parameter_gets_a_message_and_loses_nothing(view, sigma: float) -> None:
    view.methods.value, view.steps.value = ["lv_hba"], 3
    view.run(wait=True)
    view.refresh()
    drawn = list(view.figures.objects)
    view.sigma.value = sigma
    assert view.run() is None and view.sweep() is None
    assert view.message.object.startswith("the penalty parameter σ must be a number > 0")
    assert view.messages[-1] == view.message.object and not view.jobs.busy
    assert view.figures.objects == drawn and view.methods.value == ["lv_hba"]  # nothing redrawn or reset
    view.sigma.value, view.steps.value = 0.1, 0
    assert view.run() is None and "steps must be a whole number from 1" in view.message.object


def test_a_sweep_below_the_penalty_methods_range_is_refused_before_it_starts(view) -> None:
    view.sigma.value = 1e-4  # the smallest sigma the method takes; the sweep would go 1.5 decades below
    assert view.sweep() is None and not view.jobs.busy
    assert "below the penalty method's smallest σ (0.0001): start it from σ >= 0.00316" in view.message.object
    view.sigma.value, view.problem.value = 0.1, "ridge_bilevel"
    assert view.sweep() is None and view.message.object.startswith("the bias sweep runs on bilevel_toy")


def test_the_sweep_draws_the_engines_penalty_bias(view, toy) -> None:
    view.sigma.value, view.sweep_steps.value = 1.0, 8
    view.sweep(wait=True)
    view.refresh()
    sigmas = [1.0, 10 ** -0.5, 0.1, 10 ** -1.5]
    pb = penalty_bias(toy, sigmas, steps=8, hyperparameters={"lr": 0.5})  # app.bilevel.SWEEP_LR
    drawn = line(view.shown["sweep"], "bias")
    np.testing.assert_allclose(drawn["x"], sigmas, rtol=1e-15)
    np.testing.assert_array_equal(drawn["y"], np.maximum(pb.bias, FLOOR))


def test_sso_shows_its_loss_gradients_and_model_steps_apart_as_the_run_counts_them(view) -> None:
    view.sso_problem.value = "logistic_regression"
    assert view.sso_eta.value == 4.0  # the logistic loss's majorization bound
    view.sso_steps.value, view.sso_inner.value = 4, 5
    job = view.sso(wait=True)
    view.refresh()
    assert job.error == ""
    hp = {"inner_steps": 5, "eta": 4.0}
    counts = Run(get_network("logistic_regression"), RunConfig(lanes=(LaneConfig("sso", hp),), device="cpu",
                                                                seed=0)).run(4)[-1].counts
    sso, sgd = view.counts
    assert (sso.loss_gradients, sso.model_steps, sso.function_values) == (
        counts.gradients, counts.surrogate_gradients, counts.function_values)
    assert sso.loss_gradients == 4 and 4 <= sso.model_steps <= 4 * 4  # a loss gradient a step, <= m - 1 more
    assert (sgd.loss_gradients, sgd.model_steps) == (4, 0)
    table = view.sso_row.objects[0].object
    assert f"<td>SSO</td><td>{counts.gradients}</td><td>{counts.surrogate_gradients}</td>" in table
