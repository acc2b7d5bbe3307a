"""Race pictures, checked on the figures they are drawn from (before rendering) and on the files:
PNG and GIF of the requested size; every path goes through its trajectory's recorded positions;
global and local minima marked apart; the legend off the paths; the title and step line apart;
GIF frames at equal intervals of the race's time, within a byte budget; a diverged lane leaves
the loss plot's y-range to the lanes that did not diverge."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from PIL import Image

from app.curves_image import curves_figure, curves_png
from app.pictures import legend_overlaps
from app.race_image import (
    FINAL_FRAME_MS,
    frame_ticks,
    race_figure,
    race_gif,
    race_png,
)
from engine.events import Reset, SetHyperparameter
from engine.export import records_frame
from engine.records import RUNNING, Record
from engine.run import Run, RunConfig
from landscapes.catalog import get_landscape

PROBLEM = get_landscape("rosenbrock")


@pytest.fixture(scope="module")
def race() -> list[Record]:
    """SGD alone, one start, from Rosenbrock's default start (-1.2, 1): it runs down the valley."""
    run = Run(PROBLEM, RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 1e-3}},),
                                 n_starts=1, seed=0, device="cpu"))
    return run.run(40)


@pytest.fixture(scope="module")
def big_race() -> list[Record]:
    """Three lanes x three starts: SGD, Adam (its lr changed at tick 20) and an SGD that diverges
    (lr 0.05: inf loss within a few steps), then a Reset at tick 40 and 10 more steps."""
    run = Run(PROBLEM, RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 1e-3}},
                                        {"optimizer": "adam", "hyperparameters": {"lr": 0.05}},
                                        {"optimizer": "sgd", "hyperparameters": {"lr": 0.05}}),
                                 n_starts=3, seed=1, device="cpu"))
    records = run.run(20)
    run.apply(SetHyperparameter(lane=1, name="lr", value=0.01))
    records += run.run(20)
    run.apply(Reset())
    return records + run.run(10)


def _paths(fig: Figure, kind: str = "path") -> dict[tuple[int, str], np.ndarray]:
    """The data of the lines with gid ``"<kind> lane=<k> start=<j>"``: (lane, start) -> [T, 2]."""
    out = {}
    for line in fig.axes[0].get_lines():
        gid = line.get_gid() or ""
        if gid.startswith(kind + " "):
            lane, start = (part.split("=")[1] for part in gid.split()[1:])
            out[(int(lane), start)] = np.asarray(line.get_xydata(), dtype=float)
    return out


def _trajectory(records: list[Record], lane: int, start: int) -> list[np.ndarray]:
    """Recorded positions of one trajectory, split where the lane restarted (its step went back)."""
    pieces: list[list[np.ndarray]] = []
    last_step = None
    for r in sorted((r for r in records if r.lane == lane), key=lambda r: r.tick):
        if last_step is None or r.step <= last_step:
            pieces.append([])
        pieces[-1].append(r.position[start])
        last_step = r.step
    return [np.array(p) for p in pieces]


@pytest.mark.parametrize("size", [(800, 800), (640, 480), (333, 217)])
def test_race_png_has_the_requested_size(tmp_path: Path, race: list[Record], size: tuple[int, int]) -> None:
    path = race_png(PROBLEM, race, tmp_path / "race.png", size=size)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size


def test_every_path_goes_through_its_recorded_positions(big_race: list[Record]) -> None:
    """Each (lane, start) line holds exactly the recorded positions in tick order, a NaN break at
    the Reset, and non-finite positions (the diverged lane) as breaks: nothing resampled or lost."""
    paths = _paths(race_figure(PROBLEM, big_race))
    assert set(paths) == {(lane, str(s)) for lane in range(3) for s in range(3)}
    for (lane, start), xy in paths.items():
        pieces = _trajectory(big_race, lane, int(start))
        assert len(pieces) == 2  # before and after the Reset
        expected = np.concatenate([pieces[0], [[np.nan, np.nan]], pieces[1]])
        expected[~np.isfinite(expected).all(axis=1)] = np.nan
        np.testing.assert_array_equal(xy, expected)
    assert np.isnan(paths[(2, "0")]).any()  # the diverged lane's positions went non-finite


def test_the_landscape_is_log_scaled_where_the_values_span_decades() -> None:
    run = Run(get_landscape("rastrigin"), RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {}},),
                                                     device="cpu"))
    rastrigin = race_figure(get_landscape("rastrigin"), run.run(3))
    sgd = Run(PROBLEM, RunConfig(lanes=({"optimizer": "sgd"},), device="cpu"))
    rosenbrock = race_figure(PROBLEM, sgd.run(3))
    assert not isinstance(rastrigin.axes[0].images[0].norm, LogNorm)
    norm = rosenbrock.axes[0].images[0].norm
    assert isinstance(norm, LogNorm)
    # f - min f on [-2, 2] x [-1, 3]: 0 at (1, 1) up to f(-2, -1) = 9 + 100 * 25 = 2509
    assert norm.vmax == pytest.approx(2509, rel=1e-3) and norm.vmin < 1e-2


def test_global_and_local_minima_are_marked_differently() -> None:
    problem = get_landscape("rastrigin")
    run = Run(problem, RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {}},), device="cpu"))
    ax = race_figure(problem, run.run(2)).axes[0]
    by_marker = {line.get_marker(): np.asarray(line.get_xydata()) for line in ax.get_lines()
                 if line.get_marker() in ("*", "D")}
    global_x = [m.x for m in problem.minima if m.is_global]
    local_x = [m.x for m in problem.minima if not m.is_global]
    assert local_x, "rastrigin declares a local minimum"
    np.testing.assert_array_equal(by_marker["*"], global_x)
    np.testing.assert_array_equal(by_marker["D"], local_x)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "global minimum" in labels and "local minimum" in labels


def _legend_box_in_data(fig: Figure):
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None, "the legend went outside although there was room"
    return legend.get_window_extent().transformed(ax.transData.inverted())


def test_the_legend_sits_where_no_recorded_position_is(race: list[Record], big_race: list[Record]) -> None:
    """``loc="best"``, checked in data space: no recorded position lies under the legend box."""
    for records in (race, big_race):
        fig = race_figure(PROBLEM, records)
        box = _legend_box_in_data(fig)
        points = np.concatenate([r.position for r in records])
        points = points[np.isfinite(points).all(axis=1)]
        assert not box.count_contains(points)
        assert legend_overlaps(fig.axes[0], fig.axes[0].get_legend()) == 0


def test_a_legend_with_no_room_inside_goes_below_the_plot() -> None:
    """64 random starts over the whole view leave no free corner: the legend moves out of the axes."""
    run = Run(PROBLEM, RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 1e-4}},),
                                 n_starts=64, seed=0, device="cpu"))
    fig = race_figure(PROBLEM, run.run(30))
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
    fig.draw_without_rendering()
    assert fig.legends[0].get_window_extent().y1 <= fig.axes[0].get_window_extent().y0


@pytest.mark.parametrize("title", [None, "a very long title that runs across the whole width of the picture"])
def test_the_title_and_the_step_line_never_overlap(race: list[Record], title: str | None) -> None:
    fig = race_figure(PROBLEM, race, size=(500, 500), title=title)
    fig.draw_without_rendering()
    ax = fig.axes[0]
    assert ax.get_title(loc="right").startswith("step 39") and fig.get_suptitle()
    # matplotlib has no public getter of these two Text artists, only of their strings
    a, b = fig._suptitle.get_window_extent(), ax._right_title.get_window_extent()
    assert not a.overlaps(b)


def test_frames_are_equal_intervals_of_time_not_of_steps() -> None:
    """100 ticks whose times grow as t^2 (late steps slow): frame k is at time k/4 of the race and
    shows every tick recorded by then."""
    ticks = np.arange(100)
    times = (ticks / 99.0) ** 2 * 8.0
    at, shown = frame_ticks(ticks, times, 5)
    np.testing.assert_allclose(at, [0, 2, 4, 6, 8])
    np.testing.assert_allclose(np.diff(at), 2.0)
    # the last tick with time <= t: 99 * sqrt(t / 8)
    np.testing.assert_array_equal(shown, np.floor(99 * np.sqrt(at / 8) + 1e-9).astype(int))
    assert list(shown) == [0, 49, 70, 85, 99]  # evenly spaced in steps would be 0, 25, 50, 74, 99
    # ticks given out of order, one frame: the end
    at, shown = frame_ticks(ticks[::-1], times[::-1], 1)
    assert list(at) == [8.0] and list(shown) == [99]
    # no time passed (hand-made records): paced by ticks
    at, shown = frame_ticks(ticks, np.zeros(100), 4)
    assert list(shown) == [0, 33, 66, 99]


def test_race_gif_has_its_frames_size_and_timing(tmp_path: Path, big_race: list[Record]) -> None:
    """Records whose wall times say the first 10 ticks took 90% of the race: the GIF still has one
    frame per equal interval (12), each 1/fps long but the held last one."""
    late = [dataclasses.replace(r, wall_time=0.9 * min(r.tick, 10) / 10 + 0.1 * max(r.tick - 10, 0) / 40)
            for r in big_race]
    path = race_gif(PROBLEM, late, tmp_path / "race.gif", frames=12, fps=10, size=(400, 400))
    with Image.open(path) as im:
        assert im.format == "GIF" and im.size == (400, 400) and im.n_frames == 12
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert durations == [100] * 11 + [FINAL_FRAME_MS]


def test_race_gif_fits_its_byte_budget_with_fewer_frames(tmp_path: Path, big_race: list[Record]) -> None:
    """Paced by ticks, not by the records' wall times: a stall on a loaded machine would put most of
    the 16 frames on one tick, and identical frames cost the GIF next to nothing."""
    by_tick = {r.tick: float(r.tick) for r in big_race}
    full = race_gif(PROBLEM, big_race, tmp_path / "full.gif", frames=16, size=(300, 300), tick_times=by_tick)
    budget = full.stat().st_size * 2 // 3
    small = race_gif(PROBLEM, big_race, tmp_path / "small.gif", frames=16, size=(300, 300), max_bytes=budget,
                     tick_times=by_tick)
    assert small.stat().st_size <= budget
    with Image.open(full) as a, Image.open(small) as b:
        assert b.n_frames < a.n_frames
    with pytest.raises(ValueError, match="smaller size"):
        race_gif(PROBLEM, big_race, tmp_path / "none.gif", size=(300, 300), max_bytes=1000)
    assert not (tmp_path / "none.gif").exists()


def test_pictures_draw_from_the_exported_table_too(tmp_path: Path, big_race: list[Record]) -> None:
    table = records_frame(big_race)
    np.testing.assert_array_equal(np.concatenate(list(_paths(race_figure(PROBLEM, table)).values())),
                                  np.concatenate(list(_paths(race_figure(PROBLEM, big_race)).values())))
    path = curves_png(table, tmp_path / "curves.png", size=(900, 560))
    with Image.open(path) as im:
        assert im.size == (900, 560)


def test_a_diverged_lane_does_not_set_the_loss_axis(big_race: list[Record]) -> None:
    """Lane 2 (SGD, lr 0.05) blows up to ~1e100 before it turns inf: the y-range fits lanes 0 and 1
    (and the diverged lane's later run after the Reset, which diverges too), and a note says so."""
    fig = curves_figure(big_race, y="loss", log_y=True)
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    frame = records_frame(big_race)
    gone = frame[frame.lane == 2]["loss"].to_numpy()
    assert np.nanmax(gone[np.isfinite(gone)]) > 1e6 * hi  # would have stretched the axis
    live = frame[frame.lane < 2]["loss"].to_numpy()
    assert lo <= live.min() and live.max() <= hi
    assert "diverged" in ax.get_title(loc="left")
    # without the diverged lane, no note and the same range
    fig = curves_figure([r for r in big_race if r.lane < 2], y="loss", log_y=True)
    assert fig.axes[0].get_ylim() == pytest.approx((lo, hi)) and fig.axes[0].get_title(loc="left") == ""


def test_the_thick_curve_is_the_median_over_starts_and_the_legend_is_off_the_curves(
        big_race: list[Record]) -> None:
    recs = [r for r in big_race if r.lane < 2]
    fig = curves_figure(recs, y="loss", x="gradients", log_y=True, f_star=0.0)
    curves = _paths(fig, "curve")
    assert set(curves) == {(lane, s) for lane in (0, 1) for s in ("0", "1", "2", "median")}
    for lane in (0, 1):
        mine = sorted((r for r in recs if r.lane == lane), key=lambda r: r.tick)
        med = curves[(lane, "median")]
        expected_y = [np.median(r.loss) for r in mine]
        expected_x = [r.counts.gradients for r in mine]
        ok = ~np.isnan(med[:, 1])
        assert ok.sum() == len(mine)  # one NaN break at the Reset
        np.testing.assert_allclose(med[ok, 1], expected_y)
        np.testing.assert_array_equal(med[ok, 0], expected_x)
        assert all(r.status == (RUNNING,) * 3 for r in mine)
    assert legend_overlaps(fig.axes[0], fig.axes[0].get_legend()) == 0


def test_curves_refuse_an_unknown_column(race: list[Record]) -> None:
    with pytest.raises(ValueError, match="no column 'metric_nope' for y"):
        curves_figure(race, y="nope")
