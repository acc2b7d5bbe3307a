"""Race images: PNG and GIF files of the requested size and frame count, and trajectories really
drawn: a pixel on a lane's path has the lane's colour, where the bare landscape does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageColor

from app.race_image import (
    RaceImage,
    curves_png,
    gif_ticks,
    log_ticks,
    nice_ticks,
    race_gif,
    race_png,
    tick_label,
)
from app.streams import lane_color
from engine.events import SetHyperparameter
from engine.records import Record
from engine.run import Run, RunConfig
from landscapes.catalog import get_landscape

PROBLEM = get_landscape("rosenbrock")


@pytest.fixture(scope="module")
def race() -> list[Record]:
    """SGD (lane 0, one start, from Rosenbrock's default start (-1.2, 1)) alone: its first steps
    are ~0.2 long, dozens of pixels, so a pixel on them is surely on the line."""
    run = Run(PROBLEM, RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 1e-3}},),
                                 n_starts=1, seed=0, device="cpu"))
    return run.run(40)


@pytest.fixture(scope="module")
def big_race() -> list[Record]:
    run = Run(PROBLEM, RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 1e-3}},
                                        {"optimizer": "adam", "hyperparameters": {"lr": 0.05}},
                                        {"optimizer": "sgd", "hyperparameters": {"lr": 0.05}}),
                                 n_starts=3, seed=1, device="cpu"))
    records = run.run(20)
    run.apply(SetHyperparameter(lane=1, name="lr", value=0.01))
    return records + run.run(20)


def _on_path(image: RaceImage, records: list[Record]) -> tuple[int, int]:
    """The pixel at the middle of lane 0's longest segment (in pixels), checked to be clear of the
    legend and of the start and end markers."""
    pts = image.layout.to_pixels(np.array([r.position[0] for r in records if r.lane == 0]), PROBLEM.bounds)
    lengths = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    k = int(np.argmax(lengths))
    assert lengths[k] > 15
    x, y = (pts[k] + pts[k + 1]) / 2
    left, top, right, bottom = image.legend_box
    assert not (left <= x <= right and top <= y <= bottom)
    assert min(np.linalg.norm(pts[[0, -1]] - (x, y), axis=1)) > 0.6 * image.layout.font  # marker radii
    return int(x), int(y)


def _close(pixel: tuple[int, ...], color: str, tol: int = 3) -> bool:
    return max(abs(a - b) for a, b in zip(pixel[:3], ImageColor.getrgb(color), strict=True)) <= tol


@pytest.mark.parametrize("size", [(800, 800), (640, 480)])
def test_race_png_has_the_size_and_draws_the_trajectory(tmp_path: Path, race: list[Record],
                                                        size: tuple[int, int]) -> None:
    path = race_png(PROBLEM, race, tmp_path / "race.png", size=size)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        png = im.convert("RGB")
    xy = _on_path(RaceImage(PROBLEM, race, size), race)
    assert _close(png.getpixel(xy), lane_color(0))
    # the same picture before any step: the landscape there is not the lane's colour
    bare = RaceImage(PROBLEM, race[:1], size).frame()
    assert not _close(bare.getpixel(xy), lane_color(0), tol=40)


def test_race_gif_has_the_frames_and_grows(tmp_path: Path, race: list[Record]) -> None:
    path = race_gif(PROBLEM, race, tmp_path / "race.gif", frames=12, fps=10, size=(500, 500))
    xy = _on_path(RaceImage(PROBLEM, race, (500, 500)), race)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.size == (500, 500) and im.n_frames == 12
        assert im.info["duration"] == 100
        first = im.convert("RGB").getpixel(xy)
        im.seek(11)
        last = im.convert("RGB").getpixel(xy)
    assert not _close(first, lane_color(0), tol=40)  # frame 0 shows the start only
    assert _close(last, lane_color(0))


def test_gif_frames_are_quantiles_of_the_ticks() -> None:
    np.testing.assert_array_equal(gif_ticks(np.arange(10), 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(gif_ticks(np.arange(3), 5), [0, 0, 1, 1, 2])


def test_a_full_race_renders(tmp_path: Path, big_race: list[Record]) -> None:
    """Three lanes x three starts, one diverging far outside the view, a learning-rate change."""
    path = race_png(PROBLEM, big_race, tmp_path / "big.png")
    with Image.open(path) as im:
        colors = {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}
    for lane in range(3):
        assert ImageColor.getrgb(lane_color(lane)) in colors


@pytest.mark.parametrize("log_y", [True, False])
def test_curves_png_draws_a_line_per_lane(tmp_path: Path, big_race: list[Record], log_y: bool) -> None:
    path = curves_png(big_race, tmp_path / "curves.png", y="loss", x="gradients", log_y=log_y,
                      size=(900, 560))
    with Image.open(path) as im:
        assert im.size == (900, 560)
        counts = {c: n for n, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}
    # the converging lanes' median lines span the plot: far more pixels than their legend sample
    for lane in (0, 1):
        assert counts.get(ImageColor.getrgb(lane_color(lane)), 0) > 1000


def test_ticks() -> None:
    values, step = nice_ticks(-2.0, 3.0)
    np.testing.assert_allclose(values, [-2, -1, 0, 1, 2, 3])
    assert step == 1
    values, step = nice_ticks(0.0, 1.0)
    np.testing.assert_allclose(values, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert [tick_label(v, step) for v in values] == ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    ticks, lo, hi = log_ticks(0.003, 40.0)
    np.testing.assert_allclose(ticks, [1e-3, 1e-2, 1e-1, 1, 10, 100])
    assert (lo, hi) == (1e-3, 100)
    ticks, lo, hi = log_ticks(1e-12, 1e3, n=5)
    np.testing.assert_allclose(ticks, [1e-12, 1e-9, 1e-6, 1e-3, 1, 1e3])  # 15 decades, every 3rd
