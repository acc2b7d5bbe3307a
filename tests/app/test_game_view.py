"""The simplex-game panel: the triangle's coordinates, the drawn curves against the engine and a hand
computation, the claim it shows (multiplicative weights spirals out, mirror prox converges), bad input
and Cancel."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest

from app.views.game import ACTIONS, FLOOR, METHODS, TRIANGLE, GameStudy, GameView
from landscapes import get_landscape
from landscapes.simplex_games import RPS, GamePlay, play

STEPS = 150


def _view() -> tuple[GameView, list[str]]:
    messages: list[str] = []
    return GameView(SimpleNamespace(problem_obj=None, lanes=[], _applied=None), messages.append), messages


@pytest.fixture(scope="module")
def drawn() -> GameView:
    view, messages = _view()
    job = view.request(GameStudy(steps=STEPS), wait=True)
    assert job is not None and not job.error
    view.refresh()
    assert messages == []
    yield view
    view.close()


def _unbary(x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """Drawing coordinates back to probabilities (the inverse of x = p2 + p3/2, y = sqrt(3)/2 p3)."""
    p3 = y2 / (math.sqrt(3.0) / 2.0)
    p2 = x2 - p3 / 2.0
    return np.stack([1.0 - p2 - p3, p2, p3], axis=-1)


def test_the_triangle_puts_each_action_on_its_vertex_and_the_uniform_mix_at_the_centroid(drawn) -> None:
    np.testing.assert_allclose(TRIANGLE, [[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]], atol=1e-15)
    fig, _, (nash, _start) = drawn.triangles["row"]
    labels = {lab.text: (lab.x, lab.y) for lab in fig.center if hasattr(lab, "text")}
    assert [labels[a][0] for a in ACTIONS] == [0.0, 1.0, 0.5]  # rock, paper, scissors at their corners
    # rock-paper-scissors' equilibrium is uniform: the star sits at the centroid (1/2, sqrt(3)/6)
    assert nash.data["x"][0] == pytest.approx(0.5, abs=1e-15)
    assert nash.data["y"][0] == pytest.approx(math.sqrt(3.0) / 6.0, abs=1e-15)


def test_the_drawn_gap_is_the_engines_and_a_hand_computation(drawn) -> None:
    game = get_landscape("rps_game")
    a = np.array(RPS)
    for m in METHODS:
        engine = play(game, m, STEPS, {"lr": 0.1})
        curve = drawn.curves[m].data
        np.testing.assert_array_equal(curve["gap"], engine.duality_gap)
        np.testing.assert_array_equal(curve["gap_drawn"], np.maximum(engine.duality_gap, FLOOR))
        np.testing.assert_array_equal(curve["kl"], engine.kl_to_equilibrium)
        # by hand, from the drawn paths: gap(x, y) = max_j (A^T x)_j - min_i (A y)_i at tau = 0
        row, col = (drawn.triangles[w][1][m].data for w in ("row", "column"))
        x, y = (
            _unbary(np.asarray(row["x"]), np.asarray(row["y"])),
            _unbary(np.asarray(col["x"]), np.asarray(col["y"])),
        )
        by_hand = (x @ a).max(axis=1) - (y @ a.T).min(axis=1)
        np.testing.assert_allclose(curve["gap"], by_hand, atol=1e-12)


def test_it_shows_the_claim_mw_spirals_out_mirror_prox_and_optimistic_mw_converge(drawn) -> None:
    kl = {m: drawn.curves[m].data["kl"] for m in METHODS}
    start = kl["exp_gradient"][0]
    assert kl["exp_gradient"][-1] > 1.5 * start  # the last iterate moves away from the equilibrium
    assert kl["mirror_prox_entropic"][-1] < 0.6 * start and kl["optimistic_mw"][-1] < 0.6 * start
    assert "mirror prox (300 gradients)" in drawn.caption.object  # two gradients per step, stated


def test_values_below_machine_precision_are_drawn_at_the_stated_floor() -> None:
    view, _ = _view()
    game = get_landscape("rps_game")
    z = np.full((2, 3), 1 / 3)
    exact = GamePlay(
        "optimistic_mw",
        np.arange(2),
        z,
        z,
        z[:, :2],
        z[:, :2],
        np.array([0.1, 0.0]),
        np.array([0.2, 0.0]),
        np.array([0.1, 0.0]),
        np.full(6, 1 / 3),
    )
    view.show(GameStudy(methods=("optimistic_mw",), steps=1), game, {"optimistic_mw": exact}, 0.0)
    assert list(view.curves["optimistic_mw"].data["gap_drawn"]) == [0.1, FLOOR]
    assert view.curves["exp_gradient"].data["step"] == []  # a method not played is not drawn
    assert "2.2e-16" in view.caption.object and "machine epsilon" in view.caption.object


@pytest.mark.parametrize(
    ("study", "words"),
    [
        (GameStudy(steps=0), "steps must be a whole number from 1"),
        (GameStudy(steps=10**7), "steps must be a whole number from 1"),
        (GameStudy(tau=-1.0), "tau must be a number in [0"),
        (GameStudy(lr=float("nan")), "step size"),
        (GameStudy(methods=()), "pick at least one method"),
        (GameStudy(methods=("sgd",)), "sgd cannot play on the simplices"),
        (GameStudy(game="rosenbrock"), "pick a game"),
    ],
)
def test_bad_input_says_why_starts_nothing_and_keeps_the_picture(drawn, study, words) -> None:
    before = {m: dict(drawn.curves[m].data) for m in METHODS}
    messages: list[str] = []
    drawn.notify = messages.append
    assert drawn.request(study) is None and not drawn.jobs.busy
    assert len(messages) == 1 and words in messages[0] and "Error" not in messages[0]
    for m in METHODS:
        np.testing.assert_array_equal(drawn.curves[m].data["gap"], before[m]["gap"])


def test_cancel_stops_the_play_and_the_view_plays_again() -> None:
    view, messages = _view()
    job = view.request(GameStudy(steps=5_000))
    assert job is not None and view.jobs.busy
    view.jobs.cancel.clicks += 1  # the strip's Cancel button
    assert job.wait(10) and job.error == "game study cancelled"
    view.refresh()
    assert not view.jobs.busy and "cancelled" in view.caption.object and messages == []
    assert view.curves["exp_gradient"].data["step"] == []  # nothing half-drawn
    job = view.request(GameStudy(methods=("optimistic_mw",), steps=5), wait=True)
    view.refresh()
    assert not job.error and len(view.curves["optimistic_mw"].data["step"]) == 6


def test_a_game_preset_opens_the_tab_with_the_races_game_tau_methods_and_step_size() -> None:
    from app.explorer import Explorer
    from app.views import LandscapeView
    from app.views.connectivity import ConnectivityView

    ex = Explorer(landscape="rosenbrock")
    try:
        assert not ex.view(GameView).applies()  # no game, no tab
        assert ex.apply_preset("rps_regularized")
        view = ex.view(GameView)
        assert view.applies() and not ex.view(ConnectivityView).applies()
        assert ex.instruments._names[ex.instruments.active] == "game"
        # two players, each on its own triangle (this tab): no single landscape picture of the race
        landscape = ex.view(LandscapeView)
        assert not landscape.applies() and all(obj is not landscape.panel for obj in ex.race_area.objects)
        study = view.study()
        assert (study.game, study.tau, study.methods, study.lr) == ("rps_game", 0.1, METHODS, 0.1)
    finally:
        ex.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rps_cycles", "rps_regularized"])
def test_the_game_presets_claims_hold_at_the_views_defaults(name: str) -> None:
    """The numbers the presets' claims state, at the tab's 1,000 steps."""
    from app.presets import presets
    from app.views.game import run_study

    preset = presets()[name]
    study = GameStudy(
        game=preset.problem,
        tau=preset.options.get("tau", 0.0),
        methods=tuple(n for n, _ in preset.lanes),
        lr=0.1,
        steps=GameStudy().steps,
    )
    _, plays, _ = run_study(study)
    mw, om, mp = (plays[m] for m in METHODS)
    assert mw.kl_to_equilibrium[0] == pytest.approx(0.14, abs=0.005)
    if name == "rps_cycles":  # KL 0.14 -> 2.3 and gap 1.7 for MW; KL 0.005, gap 0.09 for the others
        assert mw.kl_to_equilibrium[-1] == pytest.approx(2.3, abs=0.1) and mw.duality_gap[
            -1
        ] == pytest.approx(1.7, abs=0.1)
        for p in (om, mp):
            assert p.kl_to_equilibrium[-1] == pytest.approx(0.005, abs=0.001)
            assert p.duality_gap[-1] == pytest.approx(0.09, abs=0.01)
    else:  # every method converges: MW to ~1e-8, the others to ~1e-11, straight on a log axis
        assert 1e-9 < mw.kl_to_equilibrium[-1] < 1e-7
        for p in (om, mp):
            assert 1e-12 < p.kl_to_equilibrium[-1] < 1e-10
        for p in (mw, om, mp):  # linear convergence: equal log-decrements over the two halves
            k = np.log(p.kl_to_equilibrium[[200, 600, 1000]])
            assert (k[1] - k[0]) == pytest.approx(k[2] - k[1], rel=0.2)


def test_each_method_is_drawn_as_soon_as_it_has_played(monkeypatch) -> None:
    """The second method is held until the page has drawn the first (no timing involved)."""
    import threading

    from app.views import game as game_view

    release, real = threading.Event(), game_view.play

    def held(game, method, steps, hyperparameters):
        if method == "exp_gradient":
            assert release.wait(10)
        return real(game, method, steps, hyperparameters)

    monkeypatch.setattr(game_view, "play", held)
    view, _ = _view()
    job = view.request(GameStudy(methods=("optimistic_mw", "exp_gradient"), steps=20))
    done = view._partial[2]
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    view.refresh()
    assert (
        len(view.curves["optimistic_mw"].data["step"]) == 21
        and view.curves["exp_gradient"].data["step"] == []
    )
    assert "Still playing: 1 of 2 methods" in view.caption.object
    release.set()
    assert job.wait(10) and not job.error
    view.refresh()
    assert len(view.curves["exp_gradient"].data["step"]) == 21 and "Computed in" in view.caption.object
