"""The experiments panel's model: an experiment built from the race, cancel leaves nothing
running, and a result row (or a basin pixel) reopens as a race with its configuration."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from app.experiments import ExperimentModel
from app.model import RaceSession
from app.views.experiments import ExperimentsView, profile_figure, sensitivity_figure, tuned_figure
from engine.experiments import row_to_race
from engine.registry import get_spec
from engine.run import Run
from landscapes import get_landscape


@pytest.fixture
def race() -> Iterator[RaceSession]:
    s = RaceSession(problem="rosenbrock", optimizers=["sgd", "adam"], n_starts=2, seed=4, speed=500)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


def test_an_experiment_built_from_the_race_has_its_lanes_seeds_and_a_grid_around_each_lr(race) -> None:
    lrs = {lane.optimizer: lane.values()["lr"] for lane in race.lanes}
    model = ExperimentModel(race, seeds=3, lr_points=5, lr_decades=1.0, budget=90.0)
    spec = model.build()
    assert [p.name for p in spec.problems] == ["rosenbrock"] and spec.budget == 90.0
    assert spec.seeds == (4, 5, 6) and spec.starts == 2
    assert [e.name for e in spec.optimizers] == ["sgd", "adam"]
    for entry in spec.optimizers:
        got = [c.hyperparameters["lr"] for c in spec.configurations(entry)]
        lr = lrs[entry.name]
        want = [lr * 10 ** (k / 2 - 1) for k in range(5)]  # 1/10 .. 10x, the lane's own in the middle
        hp = get_spec(entry.name).hyperparameter("lr")
        want = [v for v in want if (hp.low is None or v >= hp.low) and (hp.high is None or v <= hp.high)]
        # the optimizer's own default first (what "tuned vs default" compares), then the lane's grid
        assert got[0] == hp.default and np.allclose(got[1:], want, rtol=1e-12)


def test_bad_settings_fail_before_anything_runs(race) -> None:
    model = ExperimentModel(race)
    for lane in list(race.lanes):
        race.remove_lane(lane)
    with pytest.raises(ValueError, match="no lanes"):
        model.build()
    assert model.handle is None


def test_cancel_keeps_finished_rows_and_leaves_nothing_running(race) -> None:
    model = ExperimentModel(race, seeds=4, lr_points=16, budget=3e5, n_workers=1)  # minutes if not cancelled
    model.start()
    threading.Event().wait(0.5)
    assert model.running
    model.cancel(wait=60)
    assert not model.running and model.handle is None and model.result is not None
    assert model.result.metadata["cancelled"] and not model.result.complete
    assert not [t for t in threading.enumerate() if t.name == "optiscope-experiment"]


def test_results_give_figures_and_a_row_reopens_as_its_race(race, client) -> None:
    model = ExperimentModel(race, seeds=2, lr_points=3, budget=60.0, target=10.0)
    model.start(client=client)
    assert model.poll(120) and model.result is not None and model.result.complete
    f = model.frame
    assert len(f) == 2 * (1 + 3) * 2 * 2  # optimizers x (default + 3 lrs) x seeds x starts
    assert "oracle units" in model.cost() and f"{len(f)} rows" in model.cost()
    for make in (sensitivity_figure, tuned_figure, profile_figure):
        fig = make(model)
        assert fig.renderers  # each figure draws something
        # its legend sits under the plot, never over the points and whiskers it names
        assert fig.legend and all(lg in fig.below for lg in fig.legend)
        assert not set(fig.legend) & set(fig.center)
    row = f.sort_values("final_loss").iloc[0]
    race_spec = model.race_of_row(row)
    name, options, rc = row_to_race(row, device="cpu")
    assert race_spec.params.seed == rc.seed == int(row["seed"]) and race_spec.params.n_starts == 2
    assert race_spec.lanes == rc.lanes and dict(race_spec.lanes[0].hyperparameters) == {
        k: v for k, v in __import__("json").loads(row["hyperparameters"]).items()
    }
    # the reopened race reproduces the row (same config, seed and start row)
    records = Run(get_landscape(name, **options), race_spec.config()).run(int(row["steps"]) + 1)
    assert np.isclose(records[-1].loss[int(row["start"])], row["final_loss"], rtol=1e-12)
    assert model.open(race_spec)
    assert race.seed == rc.seed and [ln.optimizer for ln in race.lanes] == [row["optimizer"]]
    assert race.lanes[0].values()["lr"] == rc.lanes[0].hyperparameters["lr"]


def test_a_basin_pixel_reopens_as_the_race_from_its_start(race) -> None:
    model = ExperimentModel(race, basin_grid=8, basin_steps=20)
    job = model.start_basins()
    assert job is not None and job.wait(60) and not job.error
    assert [m.optimizer for m in model.basins] == ["sgd", "adam"]
    view = ExperimentsView(race, lambda _m: None, model)
    view.refresh()
    assert len(view.basin_row.objects) == 2
    for bmap, pane in zip(model.basins, view.basin_row.objects, strict=True):
        caption = pane.objects[1].object  # what the colours mean, with the share of each kind
        white = 100 * np.count_nonzero(bmap.label == -1) / bmap.label.size
        assert f"after 20 steps; white = not there ({white:.0f}% of starts)" in caption
    bmap = model.basins[1]
    x, y = bmap.start(3, 5)
    view.open_pixel(bmap, x + 1e-9, y)
    assert (race.start_x, race.start_y) == (x, y) and [ln.optimizer for ln in race.lanes] == ["adam"]


def test_a_basin_map_runs_each_lane_as_it_races_with_its_schedule_and_clipping(race) -> None:
    """A lane whose lr drops 100-fold every 5 steps and clipped to norm 1 must map as that lane, not as
    its bare optimizer (which the old code drew): each map is the engine's map of the lane's own
    configuration, and says so."""
    from engine.experiments import basin_map

    race.lanes[0].wrap.param.update(schedule="step", every=5, gamma=0.01)
    race.lanes[1].wrap.param.update(clip="norm", threshold=1.0)
    model = ExperimentModel(race, basin_grid=8, basin_steps=30)
    rc = model.race()[2]
    job = model.start_basins()
    assert job is not None and job.wait(60) and not job.error
    problem = get_landscape("rosenbrock")
    for lane, got in zip(rc.lanes, model.basins, strict=True):
        assert lane.schedules or lane.clip is not None
        wraps = {"schedules": dict(lane.schedules), "clip": lane.clip}
        own = basin_map(problem, lane.optimizer, dict(lane.hyperparameters), grid=8, steps=30,
                        device="cpu", lane_options=wraps)
        np.testing.assert_array_equal(got.label, own.label)
        np.testing.assert_array_equal(got.steps, own.steps)
        assert got.lane_options == own.lane_options == wraps


def test_a_diverged_learning_rate_is_marked_not_plotted_as_a_loss(race, monkeypatch) -> None:
    """SGD at lr 0.1 diverges on every seed: its "final loss" (1e24, where the run was stopped) is an
    "x" on the top edge, not a point of the curve, and the axis spans the losses that are results
    (with it drawn as a value the axis ran over 24 decades and read as a result)."""
    import pandas as pd

    rows = [
        {"entry": "sgd", "hyperparameter": "lr", "value": v, "median": m, "low": m / 2, "high": h,
         "n": 3, "diverged": d}
        for v, m, h, d in [(1e-3, 1.0, 2.0, 0), (1e-2, 0.1, 1e24, 1), (1e-1, 1e24, 1e24, 3)]
    ]
    model = ExperimentModel(race)
    monkeypatch.setattr(model, "sensitivity", lambda: pd.DataFrame(rows))
    fig = sensitivity_figure(model)
    assert 0.1 / 2 >= fig.y_range.start > 0 and 2.0 <= fig.y_range.end < 1e3
    line = next(r for r in fig.renderers if type(r.glyph).__name__ == "Line")
    median = np.asarray(line.data_source.data["median"], dtype=float)
    np.testing.assert_array_equal(median[:2], [1.0, 0.1])
    assert np.isnan(median[2])  # the diverged configuration breaks the curve
    high = np.asarray(line.data_source.data["high"], dtype=float)
    assert high[1] == fig.y_range.end  # a band past the axis is cut at its edge, not stretched to
    crosses = [r for r in fig.renderers if getattr(r.glyph, "marker", None) == "x"]
    assert len(crosses) == 1
    xs, ys = crosses[0].data_source.data["x"], crosses[0].data_source.data["y"]
    assert list(xs) == [1e-1] and fig.y_range.start < ys[0] <= fig.y_range.end
    assert "sgd diverged" in [item.label.value for item in fig.legend[0].items]


def test_without_a_typed_target_the_profile_aims_1e_3_above_the_known_minimum(race) -> None:
    """Rosenbrock's minimum is f(1, 1) = 0, so the profile's target is 1e-3 (the old model passed
    None: no trial could reach anything and the profile was always empty); a typed target wins; a
    problem with no known minimum has none, and the caption says to type one."""
    model = ExperimentModel(race)
    assert get_landscape("rosenbrock").minima[0].value == 0.0
    assert model.build().target == pytest.approx(1e-3, abs=1e-15)
    model.target = 0.5
    assert model.build().target == 0.5
    net = RaceSession(problem="digits_mlp", optimizers=["sgd"], n_starts=1, seed=0, speed=1)
    try:
        m = ExperimentModel(net)
        assert m.build().target is None
        from app.views.experiments import profile_caption

        assert "type a target" in profile_caption(m)
    finally:
        net.close()


def test_each_basin_pixel_is_drawn_centred_on_its_start(race) -> None:
    """Pixel (i, j) holds the start (xs[j], ys[i]): drawn, its square must be centred there (the
    old picture stretched the image from the first centre to the last, so pixels sat up to half a
    pixel off their starts and a click near an edge opened the neighbour's race)."""
    model = ExperimentModel(race, basin_grid=8, basin_steps=5)
    job = model.start_basins()
    assert job is not None and job.wait(60) and not job.error
    view = ExperimentsView(race, lambda _m: None, model)
    view.refresh()
    for bmap, pane in zip(model.basins, view.basin_row.objects, strict=True):
        fig = pane.objects[0].object
        glyph = next(r.glyph for r in fig.renderers if type(r.glyph).__name__ == "Image")
        nx, ny = len(bmap.xs), len(bmap.ys)
        centres_x = glyph.x + (np.arange(nx) + 0.5) * glyph.dw / nx
        centres_y = glyph.y + (np.arange(ny) + 0.5) * glyph.dh / ny
        np.testing.assert_allclose(centres_x, bmap.xs, rtol=0, atol=1e-12)
        np.testing.assert_allclose(centres_y, bmap.ys, rtol=0, atol=1e-12)
        # a click anywhere inside a drawn pixel opens that pixel's start
        i, j = 2, nx - 1
        assert bmap.pixel(centres_x[j] + 0.49 * glyph.dw / nx, centres_y[i] - 0.49 * glyph.dh / ny) == (i, j)


def test_a_profile_with_one_corner_is_drawn_to_the_right_edge(race, monkeypatch) -> None:
    """Adam fastest on all 3 seeds, SGD on none (every finite ratio is 1, so the profile's only tau
    is 1): rho_adam = 1 and rho_sgd = 0 for every tau >= 1 must show as two lines across the plot
    (the old figure drew one point each, i.e. nothing)."""
    import pandas as pd

    from app.views.experiments import profile_figure

    model = ExperimentModel(race)
    rows = pd.DataFrame({"entry": ["adam", "sgd"], "tau": [1.0, 1.0], "fraction": [1.0, 0.0]})
    monkeypatch.setattr(model, "profile", lambda: rows)
    fig = profile_figure(model)
    steps = [r.data_source.data for r in fig.renderers if type(r.glyph).__name__ == "Step"]
    assert len(steps) == 2
    for data, rho in zip(steps, (1.0, 0.0), strict=True):
        x, y = np.asarray(data["x"], dtype=float), np.asarray(data["y"], dtype=float)
        assert x[0] == 1.0 and x[-1] >= 2.0 and len(x) >= 2 and (y == rho).all()


def test_a_loss_of_exactly_zero_does_not_stretch_the_sensitivity_axis(race, monkeypatch) -> None:
    """A configuration that reached the minimum exactly (loss 0) sits on the bottom edge of a log axis
    that starts near the analysis' floor (1e-16), not 300 decades down."""
    import pandas as pd

    from engine.experiments.analysis import LOG_FLOOR

    rows = [{"entry": "sgd", "hyperparameter": "lr", "value": v, "median": m, "low": m, "high": m, "n": 1,
             "diverged": 0} for v, m in [(1e-2, 1.0), (1e-1, 0.0)]]
    model = ExperimentModel(race)
    monkeypatch.setattr(model, "sensitivity", lambda: pd.DataFrame(rows))
    fig = sensitivity_figure(model)
    assert fig.y_range.start == pytest.approx(LOG_FLOOR / 3) and fig.y_range.end == pytest.approx(30.0)
    line = next(r for r in fig.renderers if type(r.glyph).__name__ == "Line")
    assert list(line.data_source.data["median"]) == [1.0, fig.y_range.start]
