"""The linear-mode-connectivity panel: its numbers are the engine's on a tiny config (and the
barrier is the curve's rise above the chord by hand), bad input is refused before any work, Cancel
leaves it usable, and it offers itself only where weight matching applies."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.sharing import RunParams
from app.views.connectivity import ConnectivityStudy, ConnectivityView
from engine.limits import LimitError
from landscapes.connectivity import mode_connectivity, train_pair
from landscapes.networks import get_network

TINY = {"width": 4}


def _view(name: str = "moons_mlp", options: dict | None = None) -> tuple[ConnectivityView, list[str]]:
    options = TINY if options is None else options
    session = SimpleNamespace(
        problem_obj=get_network(name, **options),
        lanes=[],
        _applied=RunParams(problem=name, options=tuple(sorted(options.items()))),
    )
    messages: list[str] = []
    view = ConnectivityView(session, messages.append)
    view.set_problem()
    return view, messages


@pytest.fixture(scope="module")
def drawn() -> ConnectivityView:
    view, messages = _view()
    view.steps.value, view.points.value = 20, 7
    job = view.request(view.study(), wait=True)
    assert job is not None and not job.error
    view.refresh()
    assert messages == [] and view.picture.visible
    yield view
    view.close()


def test_the_drawn_paths_and_numbers_are_the_engines_on_the_same_config(drawn) -> None:
    study = drawn.shown
    assert (study.problem, study.width, study.steps, study.seeds, study.points) == (
        "moons_mlp",
        4,
        20,
        (1, 2),
        7,
    )
    problem = get_network("moons_mlp", **TINY)
    a, b = train_pair(problem, seeds=(1, 2), steps=20, hyperparameters={"lr": 0.1})
    ref = mode_connectivity(problem, a, b, k=7)
    got = drawn.result
    assert got.barrier_naive == ref.barrier_naive and got.barrier_matched == ref.barrier_matched
    assert (got.l2_naive, got.l2_matched) == (ref.l2_naive, ref.l2_matched)
    np.testing.assert_array_equal(drawn.paths["naive", "loss"].data["value"], ref.naive.curves["loss"])
    np.testing.assert_array_equal(
        drawn.paths["matched", "test_loss"].data["value"], ref.matched.curves["test_loss"]
    )
    # the barrier in the title is the drawn curve's largest rise above its chord, by hand
    for kind, barrier in (("naive", ref.barrier_naive["loss"]), ("matched", ref.barrier_matched["loss"])):
        alpha, v = (np.asarray(drawn.paths[kind, "loss"].data[c]) for c in ("alpha", "value"))
        assert np.max(v - ((1 - alpha) * v[0] + alpha * v[-1])) == pytest.approx(barrier, abs=1e-12)
    title = drawn.figure.title.text
    assert f"barrier {ref.barrier_naive['loss']:.3g} → {ref.barrier_matched['loss']:.3g}" in title
    assert f"{ref.l2_naive:.3g} → {ref.l2_matched:.3g}" in title
    assert (
        f"test {ref.barrier_naive['test_loss']:.3g} → {ref.barrier_matched['test_loss']:.3g}"
        in drawn.caption.object
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"width": 0}, "width must be a whole number >= 1"),
        ({"width": 5_000}, "limit"),  # sized by engine.limits: memory of a 5,000-wide moons MLP run
        ({"steps": 0}, "steps must be a whole number from 1 to 5,000"),
        ({"points": 2}, "points along the path"),
        ({"seeds": (3, 3)}, "the two seeds must differ"),
        ({"lr": -0.1}, "SGD step size"),
    ],
)
def test_bad_input_says_why_starts_nothing_and_keeps_the_figure(drawn, change, words) -> None:
    from dataclasses import replace

    before = (drawn.figure.title.text, list(drawn.paths["naive", "loss"].data["value"]))
    messages: list[str] = []
    drawn.notify = messages.append
    assert drawn.request(replace(drawn.shown, **change)) is None and not drawn.jobs.busy
    assert len(messages) == 1 and words in messages[0] and messages[0].startswith("connectivity: ")
    assert (drawn.figure.title.text, list(drawn.paths["naive", "loss"].data["value"])) == before


def test_a_width_beyond_the_budget_is_a_limit_error_from_engine_limits() -> None:
    with pytest.raises(LimitError, match="connectivity study needs"):
        ConnectivityStudy(problem="digits_mlp", width=8_000, steps=10).check()


def test_cancel_stops_the_training_and_the_view_runs_again() -> None:
    view, messages = _view()
    view.steps.value = 5_000
    job = view.request(view.study())
    assert job is not None and view.jobs.busy
    view.jobs.cancel.clicks += 1
    assert job.wait(10) and job.error == "connectivity study cancelled"
    view.refresh()
    assert not view.jobs.busy and not view.picture.visible and "cancelled" in view.caption.object
    assert messages == []
    view.steps.value, view.points.value = 5, 3
    job = view.request(view.study(), wait=True)
    view.refresh()
    assert not job.error and view.picture.visible and len(view.paths["naive", "loss"].data["alpha"]) == 3


def test_it_applies_to_mlps_only_and_takes_the_sessions_width() -> None:
    view, _ = _view("moons_mlp", {"width": 6})
    assert view.applies() and view.width.value == 6
    linear = SimpleNamespace(problem_obj=get_network("logistic_regression"), lanes=[], _applied=None)
    assert not ConnectivityView(linear, print).applies()  # one linear layer: no hidden units to permute
    assert not ConnectivityView(SimpleNamespace(problem_obj=None), print).applies()


@pytest.mark.slow
def test_the_lmc_presets_claim_holds_at_the_views_defaults() -> None:
    """Barrier ~0.38 -> ~0.05, distance ~10.6 -> ~6.9 (digits MLP, width 32, 300 SGD steps each)."""
    from app.presets import presets
    from app.views.connectivity import run_study

    preset = presets()["lmc_weight_matching"]
    ((optimizer, hyperparameters),) = preset.lanes
    assert optimizer == "sgd"  # the tab trains with SGD at the race's step size
    study = ConnectivityStudy(problem=preset.problem, width=preset.options["width"], lr=hyperparameters["lr"])
    assert (study.steps, study.seeds, study.points) == (300, (1, 2), 21)  # the tab's defaults
    result, _ = run_study(study)
    assert result.barrier_naive["loss"] == pytest.approx(0.38, abs=0.03)
    assert result.barrier_matched["loss"] == pytest.approx(0.05, abs=0.02)
    assert (result.l2_naive, result.l2_matched) == (pytest.approx(10.6, abs=0.2), pytest.approx(6.9, abs=0.2))
