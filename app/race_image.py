r"""A race as pictures, drawn by matplotlib (Agg, object-oriented API: nothing here touches pyplot's
global state, so sessions of one server can draw at the same time).

* :func:`race_figure` / :func:`race_png`: a 2-D problem's landscape (the colour on a log scale,
  :class:`~matplotlib.colors.LogNorm` of :math:`f - \min f + \delta`, when its values span decades),
  every lane's trajectories from all its starts in the lane's colour, the starts (rings), where
  each trajectory is at the end (a dot, a cross once it diverged), the known minima (a star for
  the global minimum, a diamond for a local one), a legend where it covers no path, the title and,
  on a line of its own, the step and time.
* :func:`race_gif`: the same picture growing as the race went, one frame per equal interval of the
  race's time (not of its steps), bounded in frames and bytes.
* :func:`app.curves_image.curves_figure` / `curves_png` (their own module): a recorded quantity
  against steps, oracle calls or time; a thick line per lane (the median over its starts) over a
  thin line per start; the y-range fits the trajectories that did not diverge, and says so when
  a diverged one leaves it.

Every function takes records (:class:`engine.records.Record`) or the table
:func:`engine.export.records_frame` makes of them (what an export holds).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from PIL import Image

from app.figures import wants_log
from app.lanes import lane_color
from app.pictures import (
    Records,
    broken,
    font_points,
    lane_labels,
    new_figure,
    place_legend,
    record_table,
    save_png,
    segments,
)
from engine.problem import Problem
from engine.records import RUNNING
from engine.views import grid_values

GRID = 300
"""Landscape grid per side (the image is interpolated between grid points)."""
LEVELS = 14
"""Contour lines over the landscape."""
MAX_FRAMES = 200
GIF_MAX_BYTES = 4_000_000
FINAL_FRAME_MS = 2000
"""How long the last frame of a GIF stays up before it loops (the finish is the point)."""
CMAP = mpl.colormaps["viridis"].with_extremes(bad="#404040")  # grey where f is not finite



# -- the race on its landscape -----------------------------------------------------------------------

@dataclass
class _Path:
    """One trajectory (a lane's start) as drawn: every recorded position in tick order, a NaN row
    between restarts; ``ticks`` and ``status`` per vertex."""

    lane: int
    start: int
    line: Line2D
    xy: np.ndarray
    ticks: np.ndarray
    status: np.ndarray


class _Race:
    """The race figure and the artists a GIF frame moves (:meth:`show`)."""

    def __init__(self, problem: Problem, records: Records, size: tuple[int, int], title: str | None) -> None:
        if problem.dim != 2 or problem.bounds is None:
            raise ValueError(f"{problem.name}: a race picture needs a 2-D problem with bounds "
                             f"(dim={problem.dim})")
        frame = record_table(records)
        if not {"x0", "x1"} <= set(frame.columns):
            raise ValueError("these records carry no positions to draw")
        self.figure = fig = new_figure(size)
        self.ax = ax = fig.add_subplot()
        font = font_points(size)
        low, high = problem.bounds.low, problem.bounds.high
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_xlabel("x", fontsize=font)
        ax.set_ylabel("y", fontsize=font)
        ax.tick_params(labelsize=0.85 * font)
        self._landscape(problem, font)

        # the trajectories: one line per lane and start, in the lane's colour (thinner when many)
        lw = font / 5 * float(np.clip(2 / np.sqrt(frame["start"].nunique()), 0.35, 1.0))
        self.paths: list[_Path] = []
        firsts: set[tuple[float, float]] = set()  # every segment's first point: the starts
        for (lane, start), sub in frame.groupby(["lane", "start"], sort=True):
            segment = segments(sub["step"].to_numpy())
            cuts = np.flatnonzero(np.diff(segment)) + 1
            points = sub[["x0", "x1"]].to_numpy(float)
            firsts |= {(a, b) for a, b in points[np.r_[0, cuts]] if np.isfinite(a) and np.isfinite(b)}
            xy = broken(points, segment)
            xy[~np.isfinite(xy).all(axis=1)] = np.nan  # a non-finite position breaks the line
            ticks = np.insert(sub["tick"].to_numpy(float), cuts, sub["tick"].to_numpy(float)[cuts])
            status = np.insert(sub["status"].to_numpy(object), cuts, RUNNING)
            (line,) = ax.plot(xy[:, 0], xy[:, 1], color=lane_color(int(lane)), lw=lw, solid_capstyle="round",
                              solid_joinstyle="round", zorder=3, gid=f"path lane={lane} start={start}")
            self.paths.append(_Path(int(lane), int(start), line, xy, ticks, status))

        starts = np.array(sorted(firsts)).reshape(-1, 2)  # lanes share starts: each is drawn once
        outline = [patheffects.Stroke(linewidth=font / 7 + 1.5, foreground="black"), patheffects.Normal()]
        ring = dict(marker="o", ms=0.9 * font, mfc="none", mec="white", mew=font / 7, ls="none", zorder=4,
                    path_effects=outline)
        ax.plot(starts[:, 0], starts[:, 1], **ring)

        # known minima inside the view: a star for the global one, a diamond for a local one
        star = dict(marker="*", ms=1.7 * font, mfc="white", mec="black", mew=1.0, ls="none", zorder=5)
        diamond = dict(marker="D", ms=0.75 * font, mfc="none", mec="white", mew=font / 8, ls="none", zorder=5,
                       path_effects=outline)
        handles: list = []
        labels: list[str] = []
        for lane, text in lane_labels(frame).items():
            handles.append(Line2D([], [], color=lane_color(lane), lw=1.5 * lw))
            labels.append(text)
        for is_global, style, text in ((True, star, "global minimum"), (False, diamond, "local minimum")):
            pts = np.array([m.x[:2] for m in problem.minima if m.is_global == is_global
                            and low[0] <= m.x[0] <= high[0] and low[1] <= m.x[1] <= high[1]]).reshape(-1, 2)
            if pts.size:
                ax.plot(pts[:, 0], pts[:, 1], **style)
                handles.append(Line2D([], [], **{**style, "ms": 0.7 * style["ms"]}))
                labels.append(text)

        # where each trajectory is (moved by show): a dot while it runs, a cross once it diverged
        area = (0.8 * font) ** 2
        self.now = ax.scatter([], [], s=area, marker="o", edgecolors="white", linewidths=1.2, zorder=6)
        self.gone = ax.scatter([], [], s=1.4 * area, marker="X", edgecolors="white", linewidths=1.0, zorder=6)
        handles += [Line2D([], [], **{**ring, "ms": 0.7 * font}),
                    Line2D([], [], marker="o", ms=0.7 * font, mfc="0.4", mec="white", ls="none")]
        labels += ["start", "end"]
        if (frame["status"] != RUNNING).any():
            handles.append(Line2D([], [], marker="X", ms=0.8 * font, mfc="0.4", mec="white", ls="none"))
            labels.append("diverged")

        n_lanes, n_starts = frame["lane"].nunique(), frame["start"].nunique()
        ticks = np.unique(frame["tick"].to_numpy())
        self.ticks = ticks
        self.times = frame.groupby("tick")["wall_time"].max().reindex(ticks).to_numpy(float)
        fig.suptitle(title or f"{getattr(problem, 'title', problem.name)}: {n_lanes} optimizers x {n_starts} "
                     f"start{'s' if n_starts > 1 else ''}, {ticks.size} steps", fontsize=1.15 * font)
        self.clock: Text = ax.set_title("", loc="right", fontsize=0.9 * font)
        self.show(None)
        place_legend(ax, handles, labels, 0.8 * font)

    def _landscape(self, problem: Problem, font: float) -> None:
        xs, ys, z = grid_values(problem, GRID)
        finite = z[np.isfinite(z)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if wants_log(problem, z) and hi > lo:
            delta = max(1e-12, 1e-6 * (hi - lo))  # the minimum itself is delta above min f, not log 0
            shown = np.where(np.isfinite(z), np.clip(z - lo, 0, None) + delta, np.nan)
            norm: Normalize = LogNorm(vmin=delta, vmax=hi - lo + delta)
            levels = np.geomspace(delta, hi - lo + delta, LEVELS + 2)[1:-1]
            label = "f - min f (log scale)"
        else:
            shown = np.where(np.isfinite(z), z, np.nan)
            norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
            levels = np.linspace(lo, hi, LEVELS + 2)[1:-1] if hi > lo else None
            label = "f(x, y)"
        b = problem.bounds
        image = self.ax.imshow(np.ma.masked_invalid(shown), extent=(b.low[0], b.high[0], b.low[1], b.high[1]),
                               origin="lower", cmap=CMAP, norm=norm, aspect="auto", interpolation="bilinear",
                               zorder=0)
        if levels is not None:
            self.ax.contour(xs, ys, shown, levels=levels, colors="white", linewidths=0.7, alpha=0.45,
                            zorder=1)
        bar = self.figure.colorbar(image, ax=self.ax, pad=0.02, fraction=0.05)
        bar.set_label(label, fontsize=0.85 * font)
        bar.ax.tick_params(labelsize=0.75 * font)

    def show(self, upto: float | None, time: float | None = None) -> None:
        """Show the race up to tick ``upto`` (all of it when None); ``time`` for the clock line."""
        upto = float(self.ticks[-1]) if upto is None and self.ticks.size else float(upto or 0)
        now: dict[bool, tuple[list[np.ndarray], list[str]]] = {False: ([], []), True: ([], [])}
        for p in self.paths:
            k = int(np.searchsorted(p.ticks, upto, side="right"))
            p.line.set_data(p.xy[:k, 0], p.xy[:k, 1])
            ok = np.flatnonzero(np.isfinite(p.xy[:k]).all(axis=1))
            if ok.size:
                points, colors = now[bool(p.status[k - 1] != RUNNING)]
                points.append(p.xy[ok[-1]])
                colors.append(lane_color(p.lane))
        for markers, (points, colors) in ((self.now, now[False]), (self.gone, now[True])):
            markers.set_offsets(np.array(points).reshape(-1, 2))
            markers.set_facecolors(colors)
        if self.ticks.size:
            i = max(int(np.searchsorted(self.ticks, upto, side="right")) - 1, 0)
            t = self.times[i] if time is None else time
            self.clock.set_text(f"step {int(self.ticks[i]):,}   t = {t:.{2 if t < 10 else 1}f} s")


def race_figure(problem: Problem, records: Records, size: tuple[int, int] = (800, 800),
                title: str | None = None) -> Figure:
    """The whole race on ``problem``'s landscape (not rendered yet: its artists can be read back).
    Path lines carry the gid ``"path lane=<k> start=<j>"``."""
    return _Race(problem, records, size, title).figure


def race_png(problem: Problem, records: Records, path: str | Path, size: tuple[int, int] = (800, 800),
             title: str | None = None) -> Path:
    """The whole race on ``problem``'s landscape, as a PNG of ``size`` pixels."""
    return save_png(race_figure(problem, records, size, title), path)


def frame_ticks(ticks: np.ndarray, times: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames at equal intervals of the race's time: frame k shows the race at
    :math:`t_k = t_0 + k (t_{end} - t_0) / (frames - 1)`, that is every tick recorded by then.
    ``times[i]`` is when tick ``ticks[i]`` was recorded (the ticks themselves stand in when no time
    passed). Returns ``(t_k, last tick shown by frame k)``."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    order = np.argsort(ticks, kind="stable")
    ticks = np.asarray(ticks)[order]
    times = np.maximum.accumulate(np.asarray(times, dtype=float)[order])  # time never runs back
    if ticks.size == 0:
        return np.zeros(frames), np.zeros(frames, dtype=np.int64)
    if not times[-1] > times[0]:  # no time recorded (records made by hand): pace by ticks
        times = ticks.astype(float)
    at = np.linspace(times[0], times[-1], frames) if frames > 1 else times[-1:]
    return at, ticks[np.searchsorted(times, at, side="right") - 1]


def _gif_frames(race: _Race, frames: int, tick_times: Mapping[int, float] | None) -> list[Image.Image]:
    """Every frame as an RGB image: the figure without its moving artists is drawn once, and each
    frame puts only those (paths, markers, clock) over a copy of it."""
    times = race.times if tick_times is None else np.array([tick_times[int(t)] for t in race.ticks], float)
    at, upto = frame_ticks(race.ticks, times, frames)
    moving = [p.line for p in race.paths] + [race.now, race.gone, race.clock]
    for artist in moving:
        artist.set_animated(True)
    canvas = race.figure.canvas
    canvas.draw()
    background = canvas.copy_from_bbox(race.figure.bbox)
    images = []
    for t, tick in zip(at, upto, strict=True):
        race.show(float(tick), float(t))
        canvas.restore_region(background)
        for artist in moving:
            race.figure.draw_artist(artist)
        rgba = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba())
        images.append(rgba.convert("RGB"))
    return images


def _gif_palette(last: Image.Image, lanes: Sequence[int]) -> Image.Image:
    """One palette for every frame, so frames differ only where the race moved (GIF then stores
    just those rectangles) and nothing flickers: the lane colours and greys exactly, 64 steps of the
    colour map (a median cut gives its dark end, seen only on the colour bar, two or three colours),
    and the 160 colours a median cut finds in the last frame (which shows every path)."""
    exact = [mpl.colors.to_hex(lane_color(k)) for k in dict.fromkeys(lanes)]
    exact += [mpl.colors.to_hex(str(v)) for v in np.linspace(0, 1, 9)] + [mpl.colors.to_hex(CMAP.get_bad())]
    colors = [tuple(round(255 * c) for c in mpl.colors.to_rgb(h)) for h in exact]
    colors += [tuple(round(255 * c) for c in CMAP(v)[:3]) for v in np.linspace(0, 1, 64)]
    found = last.quantize(colors=256 - len(colors), method=Image.Quantize.MEDIANCUT).getpalette()
    colors += [tuple(found[i:i + 3]) for i in range(0, 3 * (256 - len(colors)), 3)]
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for c in colors for v in c])
    return palette


def _gif_bytes(images: list[Image.Image], palette: Image.Image, fps: float) -> bytes:
    """The frames as a looping GIF with ``palette``, ``fps`` a second, the last one held."""
    frames = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    step = round(1000 / fps)
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                   duration=[step] * (len(frames) - 1) + [max(step, FINAL_FRAME_MS)])
    return out.getvalue()


def race_gif(problem: Problem, records: Records, path: str | Path, frames: int = 60, fps: float = 10,
             size: tuple[int, int] = (640, 640), title: str | None = None, max_bytes: int = GIF_MAX_BYTES,
             tick_times: Mapping[int, float] | None = None) -> Path:
    """The race growing over its time: ``frames`` frames at equal intervals of the race's time
    (:func:`frame_ticks`: the records' ``wall_time``, or ``tick_times`` — tick -> seconds — when
    given, e.g. when the race was shown live), ``fps`` frames a second, the last held for
    ``FINAL_FRAME_MS``. Over ``max_bytes``, it is drawn again with half the frames (down to 2)."""
    if not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be between 1 and {MAX_FRAMES}, got {frames}")
    if not 0 < fps <= 50:
        raise ValueError(f"fps must be in (0, 50], got {fps}")
    race = _Race(problem, records, size, title)
    while True:
        images = _gif_frames(race, frames, tick_times)
        data = _gif_bytes(images, _gif_palette(images[-1], [p.lane for p in race.paths]), fps)
        if len(data) <= max_bytes:
            break
        if frames <= 2:
            raise ValueError(f"a {size[0]} x {size[1]} GIF of this race needs more than {max_bytes:,} "
                             "bytes even with 2 frames: ask for a smaller size")
        frames = max(2, frames // 2)
    path = Path(path)
    path.write_bytes(data)
    return path
