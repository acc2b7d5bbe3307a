r"""A race as still images and an animated GIF (numpy + Pillow; no browser, no matplotlib).

:func:`race_png` draws a 2-D problem's landscape (the heatmap the app shows: :math:`\log_{10}(f -
\min f + \delta)` when values span decades, see :func:`app.figures._color_values`, with contour
lines and a colour bar), every lane's trajectories from all its starts in the lane's colour, the
known minima as stars, the starts as rings, where each trajectory is now (a dot; hollow once it
diverged), a legend and a title. :func:`race_gif` shows the same picture growing over time, and
:func:`curves_png` plots loss (or any recorded quantity) against steps, oracle calls or time.

Everything is drawn at ``SUPERSAMPLE`` times the size and reduced by averaging pixel blocks,
which anti-aliases lines and text while the inside of a thick line keeps its exact colour. Lines
are thick and text is large (about 1/40 of the image) so the pictures read on a projector.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bokeh.palettes import Viridis256
from PIL import Image, ImageColor, ImageDraw, ImageFont

from app.figures import _color_values, wants_log
from app.streams import X_AXES, lane_color
from engine.export import COUNT_COLUMNS, records_frame
from engine.problem import Bounds, Problem
from engine.records import RUNNING, Record
from engine.registry import HyperparameterError, get_spec
from engine.views import grid_values

SUPERSAMPLE = 2
N_LEVELS = 14
"""Contour lines drawn over the heatmap (as in the app's landscape view)."""
GRID_MAX = 500
"""Largest grid the landscape is evaluated on (one value per output pixel up to this size)."""
VIRIDIS = np.array([ImageColor.getrgb(c) for c in Viridis256], dtype=np.uint8)
NAN_COLOR = (64, 64, 64)
INK = (30, 30, 30)
GRID_INK = (225, 225, 225)
DIVERGED_CAP = 1e6
"""A log-scale curve plot shows at most this factor above the largest first value."""
FINAL_FRAME_MS = 2000
"""How long the last frame of a GIF stays up before it loops (the finish is the point)."""

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]


def _rgb(color: str) -> RGB:
    r, g, b = ImageColor.getrgb(color)[:3]
    return r, g, b


def _font(px: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(6, round(px)))


def _lighter(color: RGB, amount: float) -> RGB:
    r, g, b = (round(c + (255 - c) * amount) for c in color)
    return r, g, b


# -- layout and coordinates -------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where things go in an image of ``size`` (final pixels): ``plot`` is the data rectangle
    ``(left, top, right, bottom)``; ``font`` the body text size in pixels."""

    size: tuple[int, int]
    plot: tuple[int, int, int, int]
    font: int

    @property
    def plot_size(self) -> tuple[int, int]:
        left, top, right, bottom = self.plot
        return right - left, bottom - top

    def to_pixels(self, points: np.ndarray, bounds: Bounds) -> np.ndarray:
        """Data points ``[N, 2]`` -> image coordinates ``[N, 2]`` (x right, y down; pixel ``(i, j)``
        covers ``[i, i+1) x [j, j+1)``). The bounds' corners map to the plot's corners."""
        left, top, right, bottom = self.plot
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        u = (p[:, 0] - bounds.low[0]) / (bounds.high[0] - bounds.low[0])
        v = (p[:, 1] - bounds.low[1]) / (bounds.high[1] - bounds.low[1])
        return np.stack([left + u * (right - left), bottom - v * (bottom - top)], axis=1)


def race_layout(size: tuple[int, int]) -> Layout:
    """The layout :func:`race_png` and :func:`race_gif` use for an image of ``size``: a title
    line on top, tick labels left and below, a colour bar on the right."""
    w, h = size
    f = max(12, round(min(w, h) / 40))
    return Layout(size, (round(4.2 * f), round(2.6 * f), w - round(6.8 * f), h - round(3.2 * f)), f)


def curves_layout(size: tuple[int, int]) -> Layout:
    w, h = size
    f = max(12, round(min(w, h) / 32))
    return Layout(size, (round(5.0 * f), round(2.6 * f), w - round(1.2 * f), h - round(3.4 * f)), f)


# -- ticks ------------------------------------------------------------------------------------------

def nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[np.ndarray, float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 x 10^k) within ``[lo, hi]``, and the step."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return np.array([lo]), 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return (float(first) + np.arange(last - first + 1)) * step, step


def tick_label(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or step < 1e-4:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def log_ticks(lo: float, hi: float, n: int = 7) -> tuple[np.ndarray, float, float]:
    """Powers of ten covering ``[lo, hi]`` (``lo > 0``), at most about ``n`` of them; returns the
    ticks and the axis range (whole decades)."""
    e_lo, e_hi = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if e_hi == e_lo:
        e_hi += 1
    stride = max(1, math.ceil((e_hi - e_lo) / n))
    e_lo -= e_lo % stride  # ticks on multiples of the stride: 1e-6, 1e-3, 1, ...
    e_hi += (-e_hi) % stride
    exps = np.arange(e_lo, e_hi + 1, stride)
    return 10.0 ** exps, 10.0 ** e_lo, 10.0 ** e_hi


def log_label(value: float) -> str:
    e = round(math.log10(value))
    return f"{value:g}" if -2 <= e <= 3 else f"1e{e}"


# -- drawing helpers --------------------------------------------------------------------------------

def _clip_segment(p: np.ndarray, q: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray] | None:
    """Liang-Barsky: the part of segment pq inside ``box`` (None if it misses), so a trajectory that
    jumps far outside the view is drawn in its true direction up to the edge."""
    x0, y0, x1, y1 = box
    d = q - p
    t0, t1 = 0.0, 1.0
    for den, num in ((-d[0], p[0] - x0), (d[0], x1 - p[0]), (-d[1], p[1] - y0), (d[1], y1 - p[1])):
        if den == 0:
            if num < 0:
                return None
            continue
        t = num / den
        if den < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    return p + t0 * d, p + t1 * d


def _runs(points: np.ndarray, box: Box) -> Iterator[list[tuple[float, float]]]:
    """Polylines to draw for ``points`` ``[T, 2]``: runs of consecutive points inside ``box``, and
    each segment that leaves it clipped to it."""
    inside = ((points[:, 0] >= box[0]) & (points[:, 0] <= box[2])
              & (points[:, 1] >= box[1]) & (points[:, 1] <= box[3]))
    run: list[tuple[float, float]] = []
    for i in range(len(points)):
        if inside[i]:
            run.append((float(points[i, 0]), float(points[i, 1])))
            if i + 1 < len(points) and inside[i + 1]:
                continue
        if len(run) > 1:
            yield run
        run = []
        if i + 1 < len(points) and not (inside[i] and inside[i + 1]):
            clipped = _clip_segment(points[i], points[i + 1], box)
            if clipped is not None:
                yield [tuple(map(float, clipped[0])), tuple(map(float, clipped[1]))]


def _polyline(draw: ImageDraw.ImageDraw, pts: list[tuple[float, float]], color: RGB, width: int) -> None:
    draw.line(pts, fill=color, width=width, joint="curve")
    r = width / 2  # round caps, so consecutive pieces of one trajectory join seamlessly
    for x, y in (pts[0], pts[-1]):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)


def _star(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: RGB, outline: RGB,
          width: int) -> None:
    angles = -math.pi / 2 + np.arange(10) * math.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    draw.polygon([(x + rr * math.cos(a), y + rr * math.sin(a)) for a, rr in zip(angles, radii, strict=True)],
                 fill=fill, outline=outline, width=width)


def _rotated_text(canvas: Image.Image, xy: tuple[float, float], text: str, font: ImageFont.ImageFont,
                  fill: RGB) -> None:
    """Text turned 90 degrees counter-clockwise, centred at ``xy``."""
    x0, y0, x1, y1 = font.getbbox(text)
    tile = Image.new("L", (x1 - x0 + 4, y1 - y0 + 4), 0)
    ImageDraw.Draw(tile).text((2 - x0, 2 - y0), text, font=font, fill=255)
    tile = tile.rotate(90, expand=True)
    canvas.paste(Image.new("RGB", tile.size, fill), (round(xy[0] - tile.width / 2),
                                                     round(xy[1] - tile.height / 2)), tile)


def _display_name(optimizer: str) -> str:
    try:
        return get_spec(optimizer).display_name
    except HyperparameterError:  # records of an optimizer this process has not registered
        return optimizer


def _lane_label(recs: Sequence[Record]) -> str:
    """Optimizer name(s), learning rate (and where it went), and how many starts diverged."""
    names = list(dict.fromkeys(_display_name(r.optimizer) for r in recs))
    label = " -> ".join(names)
    lrs = [r.hyperparameters.get("lr") for r in recs if "lr" in r.hyperparameters]
    if lrs:
        first, last = float(lrs[0]), float(lrs[-1])
        label += f"  lr {first:g}" + (f" -> {last:g}" if last != first else "")
    status = recs[-1].status
    bad = sum(s != RUNNING for s in status)
    if bad:
        label += f"  ({bad}/{len(status)} diverged)"
    return label


# -- the race -------------------------------------------------------------------------------------------

@dataclass
class _Path:
    """One unbroken piece of one trajectory, in plot-layer coordinates."""

    lane: int
    row: int
    ticks: np.ndarray  # [T]
    points: np.ndarray  # [T, 2]
    drawn: int = 0  # points already drawn on the layer


class RaceImage:
    """Renders a race on a 2-D problem; :meth:`frame` shows it up to a tick. Trajectories are drawn
    onto a persistent layer as time advances, so a GIF costs one pass over the records."""

    def __init__(self, problem: Problem, records: Sequence[Record], size: tuple[int, int] = (800, 800),
                 title: str | None = None) -> None:
        if problem.dim != 2 or problem.bounds is None:
            raise ValueError(f"{problem.name}: a race image needs a 2-D problem with bounds "
                             f"(dim={problem.dim})")
        self.problem, self.records = problem, sorted(records, key=lambda r: (r.tick, r.lane))
        if any(r.position is None for r in self.records):
            raise ValueError("these records carry no positions to draw")
        self.layout = race_layout(size)
        self.s = SUPERSAMPLE
        self.bounds = problem.bounds
        f = self.layout.font * self.s
        self.fonts = {"body": _font(f), "small": _font(0.85 * f), "title": _font(1.2 * f)}
        self.line_width = max(3, round(0.22 * f))
        self.by_lane: dict[int, list[Record]] = defaultdict(list)
        for r in self.records:
            self.by_lane[r.lane].append(r)
        self.paths = self._make_paths()
        self.ticks = np.unique([r.tick for r in self.records])
        self.heatmap, (lo, hi), self.color_label = self._heatmap()
        self.layer = self.heatmap.copy()  # heatmap + the trajectories drawn so far (supersampled)
        self.background = self._background(lo, hi, title)
        self.legend_box = self._place_legend()
        """Where the legend sits, in final image pixels ``(left, top, right, bottom)``."""
        self.legend = self._legend_tile()

    # -- geometry ------------------------------------------------------------------------------
    def to_layer(self, points: np.ndarray) -> np.ndarray:
        """Data points -> supersampled plot-layer coordinates."""
        left, top, _, _ = self.layout.plot
        return (self.layout.to_pixels(points, self.bounds) - (left, top)) * self.s

    def _make_paths(self) -> list[_Path]:
        paths: list[_Path] = []
        for lane, recs in self.by_lane.items():
            steps = np.array([r.step for r in recs])
            ticks = np.array([r.tick for r in recs])
            pos = np.stack([r.position[:, :2] for r in recs])  # [T, M, 2]
            # a restart (Reset, or a switch that goes back to the starts) begins a new path
            cuts = [0, *np.flatnonzero(np.diff(steps) <= 0) + 1, len(recs)]
            for a, b in itertools.pairwise(cuts):
                for row in range(pos.shape[1]):
                    pts = pos[a:b, row]
                    ok = np.isfinite(pts).all(axis=1)
                    # an unbroken run of finite points is one path (a non-finite position breaks it)
                    edges = np.flatnonzero(np.diff(np.concatenate([[0], ok.astype(int), [0]])))
                    for s, e in zip(edges[::2], edges[1::2], strict=True):
                        paths.append(_Path(lane, row, ticks[a:b][s:e], self.to_layer(pts[s:e])))
        return paths

    # -- static parts --------------------------------------------------------------------------
    def _heatmap(self) -> tuple[Image.Image, tuple[float, float], str]:
        pw, ph = self.layout.plot_size
        n = min(max(pw, ph), GRID_MAX)
        _, _, z = grid_values(self.problem, n)
        shown, label = _color_values(z, wants_log(self.problem, z))
        finite = shown[np.isfinite(shown)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        t = np.clip((shown - lo) / (hi - lo), 0.0, 1.0)
        rgb = VIRIDIS[np.where(np.isfinite(t), np.round(t * 255), 0).astype(np.int64)].astype(np.float64)
        rgb[~np.isfinite(shown)] = NAN_COLOR
        # contour lines: where the level band changes between neighbouring grid cells
        band = np.where(np.isfinite(t), np.floor(t * (N_LEVELS + 1)), -1)
        edge = np.zeros(band.shape, dtype=bool)
        edge[:, 1:] |= band[:, 1:] != band[:, :-1]
        edge[1:, :] |= band[1:, :] != band[:-1, :]
        rgb[edge] = 0.55 * rgb[edge] + 0.45 * 255
        img = Image.fromarray(np.flipud(rgb).round().astype(np.uint8), "RGB")  # row 0 = top = high y
        return img.resize((pw * self.s, ph * self.s), Image.Resampling.BILINEAR), (lo, hi), label

    def _background(self, lo: float, hi: float, title: str | None) -> Image.Image:
        """Title, axes, ticks and the colour bar at final size (the plot is pasted in per frame)."""
        s, L = self.s, self.layout
        w, h = L.size
        canvas = Image.new("RGB", (w * s, h * s), "white")
        draw = ImageDraw.Draw(canvas)
        left, top, right, bottom = (v * s for v in L.plot)
        f = L.font * s
        if title is None:
            m = len(self.records[0].loss) if self.records else 0
            steps = int(self.ticks.max()) + 1 if self.ticks.size else 0
            title = f"{getattr(self.problem, 'title', self.problem.name)}:  {len(self.by_lane)} optimizers" \
                    f" x {m} starts, {steps} steps"
        draw.text((left, 0.5 * f), title, font=self.fonts["title"], fill=INK)
        # axes ticks
        for axis in (0, 1):
            lo_b, hi_b = self.bounds.low[axis], self.bounds.high[axis]
            values, step = nice_ticks(lo_b, hi_b)
            for v in values:
                pt = np.array([[v, self.bounds.low[1]]] if axis == 0 else [[self.bounds.low[0], v]])
                px = self.layout.to_pixels(pt, self.bounds)[0] * s
                text = tick_label(float(v), step)
                if axis == 0:
                    draw.line((px[0], bottom, px[0], bottom + 0.35 * f), fill=INK, width=s * 2)
                    draw.text((px[0], bottom + 0.45 * f), text, font=self.fonts["small"], fill=INK,
                              anchor="mt")
                else:
                    draw.line((left - 0.35 * f, px[1], left, px[1]), fill=INK, width=s * 2)
                    draw.text((left - 0.5 * f, px[1]), text, font=self.fonts["small"], fill=INK, anchor="rm")
        draw.text(((left + right) / 2, bottom + 1.7 * f), "x", font=self.fonts["body"], fill=INK, anchor="mt")
        _rotated_text(canvas, (left - 3.4 * f, (top + bottom) / 2), "y", self.fonts["body"], INK)
        # colour bar
        x0, x1 = right + 0.6 * f, right + 1.5 * f
        ramp = VIRIDIS[np.linspace(255, 0, max(2, round(bottom - top))).astype(np.int64)]
        bar = Image.fromarray(np.repeat(ramp[:, None, :], max(1, round(x1 - x0)), axis=1), "RGB")
        canvas.paste(bar, (round(x0), round(top)))
        draw.rectangle((round(x0), round(top), round(x0) + bar.width, round(top) + bar.height), outline=INK,
                       width=s)
        values, step = nice_ticks(lo, hi, 6)
        for v in values:
            y = bottom - (v - lo) / (hi - lo) * (bottom - top)
            draw.line((x1, y, x1 + 0.3 * f, y), fill=INK, width=s * 2)
            draw.text((x1 + 0.4 * f, y), tick_label(float(v), step), font=self.fonts["small"], fill=INK,
                      anchor="lm")
        _rotated_text(canvas, (L.size[0] * s - 0.9 * f, (top + bottom) / 2), self.color_label,
                      self.fonts["small"], INK)
        return canvas.reduce(s)

    # -- legend ------------------------------------------------------------------------------------
    def _legend_entries(self) -> list[tuple[str, str]]:
        entries = [(lane_color(lane), _lane_label(recs)) for lane, recs in self.by_lane.items()]
        if self.problem.minima:
            entries.append(("star", "known minima"))
        if self.paths:
            entries.append(("ring", "starts"))
        return entries

    def _place_legend(self) -> Box:
        """The plot corner whose legend box would hide the fewest trajectory points."""
        f, pad = self.layout.font, 0.5 * self.layout.font
        entries = self._legend_entries()
        width = max((self.fonts["body"].getlength(t) / self.s for _, t in entries), default=0) + 3.2 * f
        height = len(entries) * 1.45 * f + 2 * pad
        left, top, right, bottom = self.layout.plot
        m = 0.6 * f
        corners = [(left + m, top + m), (right - m - width, top + m),
                   (left + m, bottom - m - height), (right - m - width, bottom - m - height)]
        pts = np.concatenate([p.points for p in self.paths]) / self.s + (left, top) if self.paths \
            else np.zeros((0, 2))
        px, py = pts[:, 0], pts[:, 1]
        hidden = [int(((px >= x) & (px <= x + width) & (py >= y) & (py <= y + height)).sum())
                  for x, y in corners]
        x, y = corners[int(np.argmin(hidden))]
        return x, y, x + width, y + height

    def _legend_tile(self) -> tuple[Image.Image, tuple[int, int]]:
        """The legend drawn once (supersampled RGBA, translucent box) and where it goes on the plot layer."""
        s, f = self.s, self.layout.font * self.s
        left, top = self.layout.plot[:2]
        x0, y0, x1, y1 = ((v - o) * s for v, o in zip(self.legend_box, (left, top, left, top), strict=True))
        ox, oy = int(x0), int(y0)
        tile = Image.new("RGBA", (int(x1) - ox + 1, int(y1) - oy + 1), (0, 0, 0, 0))
        draw = ImageDraw.Draw(tile)
        draw.rounded_rectangle((x0 - ox, y0 - oy, x1 - ox, y1 - oy), radius=0.3 * f,
                               fill=(255, 255, 255, 215), outline=(80, 80, 80, 255), width=s)
        for i, (kind, text) in enumerate(self._legend_entries()):
            y = y0 - oy + 0.5 * f + (i + 0.5) * 1.45 * f
            x = x0 - ox
            cx = x + 1.5 * f
            if kind == "star":
                _star(draw, cx, y, 0.5 * f, (255, 255, 255), (0, 0, 0), s)
            elif kind == "ring":
                r = 0.3 * f
                draw.ellipse((cx - r - s, y - r - s, cx + r + s, y + r + s), fill=(120, 120, 120, 255))
                draw.ellipse((cx - r, y - r, cx + r, y + r), outline=(255, 255, 255), width=round(0.14 * f))
            else:
                draw.line((x + 0.5 * f, y, x + 2.5 * f, y), fill=_rgb(kind), width=self.line_width * 2)
            draw.text((x + 2.9 * f, y), text, font=self.fonts["body"], fill=INK, anchor="lm")
        return tile, (ox, oy)

    def _draw_legend(self, img: Image.Image) -> None:
        tile, (ox, oy) = self.legend
        under = img.crop((ox, oy, ox + tile.width, oy + tile.height)).convert("RGBA")
        img.paste(Image.alpha_composite(under, tile).convert("RGB"), (ox, oy))

    # -- frames --------------------------------------------------------------------------------
    def _advance(self, upto: float) -> None:
        """Draw every path's points with tick <= ``upto`` that are not drawn yet onto the layer."""
        draw = ImageDraw.Draw(self.layer)
        w, h = self.layer.size
        margin = 4 * self.line_width
        box = (-margin, -margin, w + margin, h + margin)
        for p in self.paths:
            end = int(np.searchsorted(p.ticks, upto, side="right"))
            if end <= p.drawn:
                continue
            begin = max(p.drawn - 1, 0)  # overlap one point: the new piece continues the old
            for run in _runs(p.points[begin:end], box):
                _polyline(draw, run, _rgb(lane_color(p.lane)), self.line_width)
            p.drawn = end

    def frame(self, upto: float | None = None) -> Image.Image:
        """The image with every record of tick <= ``upto`` (all of them when None). Calls must not go
        back in time (the trajectory layer only grows)."""
        upto = float(self.ticks.max()) if upto is None and self.ticks.size else (upto or 0.0)
        self._advance(upto)
        img = self.layer.copy()
        draw = ImageDraw.Draw(img)
        s, f = self.s, self.layout.font * self.s
        # starts: white rings
        r = 0.32 * f
        for x, y in {(round(p.points[0, 0], 1), round(p.points[0, 1], 1)) for p in self.paths
                     if p.ticks[0] <= upto}:
            draw.ellipse((x - r, y - r, x + r, y + r), outline=(255, 255, 255), width=round(0.14 * f))
        # known minima: stars
        for mn in self.problem.minima:
            (x, y), = self.to_layer(np.array([mn.x[:2]]))
            if 0 <= x <= img.width and 0 <= y <= img.height:
                _star(draw, x, y, (0.55 if mn.is_global else 0.4) * f, (255, 255, 255), (0, 0, 0), s)
        # where each trajectory is now (its lane's latest path shown so far): a dot, hollow once diverged
        latest: dict[tuple[int, int], np.ndarray] = {}
        for p in self.paths:
            if p.ticks[0] <= upto:
                k = int(np.searchsorted(p.ticks, upto, side="right")) - 1
                latest[(p.lane, p.row)] = p.points[k]
        for (lane, row), (x, y) in latest.items():
            rec = next(r for r in reversed(self.by_lane[lane]) if r.tick <= upto)
            r = 0.42 * f
            if not (-r <= x <= img.width + r and -r <= y <= img.height + r):
                continue
            color = _rgb(lane_color(lane))
            running = rec.status[row] == RUNNING
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color if running else None,
                         outline=(255, 255, 255) if running else color, width=round(0.12 * f))
        self._draw_legend(img)
        out = self.background.copy()
        out.paste(img.reduce(s), self.layout.plot[:2])
        ImageDraw.Draw(out).rectangle(self.layout.plot, outline=INK, width=2)
        step_text = f"step {int(upto)}"
        ImageDraw.Draw(out).text((self.layout.plot[2], round(0.5 * self.layout.font)), step_text,
                                 font=_font(self.layout.font), fill=INK, anchor="ra")
        return out


def race_png(problem: Problem, records: Sequence[Record], path: str | Path,
             size: tuple[int, int] = (800, 800), title: str | None = None) -> Path:
    """The whole race on ``problem``'s landscape, as a PNG of ``size`` pixels."""
    path = Path(path)
    RaceImage(problem, records, size, title).frame().save(path, format="PNG")
    return path


def gif_ticks(ticks: np.ndarray, frames: int) -> np.ndarray:
    """The last tick each of ``frames`` frames shows: quantiles ``k / (frames - 1)`` of the run's
    ticks (the first frame shows the starts, the last the whole race)."""
    if ticks.size == 0:
        return np.zeros(frames)
    q = np.linspace(0.0, 1.0, frames) if frames > 1 else np.ones(1)
    return np.quantile(np.sort(ticks), q, method="lower")


def _gif_palette(last: Image.Image) -> Image.Image:
    """One 256-colour palette for every frame (no flicker between frames): the lane colours and
    greys exactly, 150 steps of viridis (a median cut would drop the dark end, which only the colour
    bar shows), and the 80 colours a median cut finds in the last frame (contours, anti-aliasing)."""
    colors = [_rgb(c) for c in dict.fromkeys(lane_color(i) for i in range(64))]
    colors += [(v, v, v) for v in np.linspace(0, 255, 16).round().astype(int)] + [INK, NAN_COLOR]
    colors += [tuple(c) for c in VIRIDIS[np.linspace(0, 255, 150).round().astype(int)]]
    found = last.quantize(colors=80, method=Image.Quantize.MEDIANCUT).getpalette()[:240]
    colors += [tuple(found[i:i + 3]) for i in range(0, len(found), 3)]
    flat = [int(v) for c in colors[:256] for v in c]
    palette = Image.new("P", (1, 1))
    palette.putpalette(flat + flat[-3:] * (256 - len(flat) // 3))
    return palette


def race_gif(problem: Problem, records: Sequence[Record], path: str | Path, frames: int = 60, fps: float = 15,
             size: tuple[int, int] = (800, 800), title: str | None = None) -> Path:
    """The race growing over time: frame k shows the records up to the k-th of ``frames`` quantiles
    of the run's steps; the last frame is held for ``FINAL_FRAME_MS``. A progress bar along the top
    edge keeps every frame distinct (GIF writers merge identical frames)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    path = Path(path)
    race = RaceImage(problem, records, size, title)
    images = []
    for k, upto in enumerate(gif_ticks(race.ticks, frames)):
        img = race.frame(float(upto))
        ImageDraw.Draw(img).rectangle((0, 0, round(img.width * (k + 1) / frames) - 1, 3), fill=(90, 90, 90))
        images.append(img)
    palette = _gif_palette(images[-1])
    frames_p = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    durations = [round(1000 / fps)] * (len(frames_p) - 1) + [max(round(1000 / fps), FINAL_FRAME_MS)]
    frames_p[0].save(path, format="GIF", save_all=True, append_images=frames_p[1:], duration=durations,
                     loop=0)
    return path


# -- curves -----------------------------------------------------------------------------------------

def curves_png(records: Sequence[Record], path: str | Path, y: str = "loss", x: str = "step",
               log_y: bool = True, size: tuple[int, int] = (900, 560), f_star: float | None = None,
               title: str | None = None) -> Path:
    """``y`` (a record column: loss, grad_norm, update_norm, a metric, a probe field) against ``x``
    (step, tick, wall_time, an oracle count, oracle_calls, or an app x-axis label), a thick line per
    lane (the median over its live starts, as in the app) over thin lines for each start.
    ``f_star`` subtracts the known minimum (suboptimality). On a log axis, values <= 0 are gaps."""
    path = Path(path)
    frame = records_frame(records)
    xcol = X_AXES.get(x, x)
    if xcol == "oracle_calls":
        frame["oracle_calls"] = frame[list(COUNT_COLUMNS)].sum(axis=1)
    ycol = y if y in frame.columns else f"metric_{y}"
    for col, what in ((xcol, "x"), (ycol, "y")):
        if col not in frame.columns:
            raise ValueError(f"no column {col!r} for {what}; columns: {', '.join(frame.columns)}")
    frame["_y"] = frame[ycol].astype(float) - (f_star or 0.0)
    if log_y:
        frame.loc[~(frame["_y"] > 0), "_y"] = np.nan
    frame.loc[~np.isfinite(frame["_y"]), "_y"] = np.nan

    # per lane: thin lines per start, a thick median line; breaks where x goes back (a restart)
    series: list[tuple[int, bool, np.ndarray, np.ndarray]] = []
    diverged: list[bool] = []
    by_lane: dict[int, list[Record]] = defaultdict(list)
    for r in records:
        by_lane[r.lane].append(r)
    labels = {lane: _lane_label(recs) for lane, recs in sorted(by_lane.items())}
    for lane, sub in frame.groupby("lane", sort=True):
        for _, one in sub.groupby("start"):
            series.append((int(lane), False, one[xcol].to_numpy(float), one["_y"].to_numpy(float)))
            diverged.append(one["status"].iloc[-1] != RUNNING)
        med = sub.groupby("tick").agg(x=(xcol, "first"), y=("_y", "median"))
        series.append((int(lane), True, med["x"].to_numpy(float), med["y"].to_numpy(float)))
        diverged.append(bool((sub.groupby("tick")["status"].last() != RUNNING).any()))
    xs = np.concatenate([s[2] for s in series]) if series else np.zeros(0)
    # the y range fits the trajectories that did not diverge (if any): a diverging one would squash
    # the others into a line at the bottom; it leaves through the top instead
    kept = [s for s, bad in zip(series, diverged, strict=True) if not bad] or series
    ys = np.concatenate([s[3] for s in kept]) if kept else np.zeros(0)
    ys = ys[np.isfinite(ys)]
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    if log_y:
        y_lo, y_hi = (float(ys.min()), float(ys.max())) if ys.size else (0.1, 10.0)
        # and a curve that grows a millionfold above the largest first value is diverging too
        firsts = [v[np.isfinite(v)][0] for _, _, _, v in series if np.isfinite(v).any()]
        y_hi = min(y_hi, max(max(firsts) * DIVERGED_CAP, y_lo * 10)) if firsts else y_hi
        yticks, y_lo, y_hi = log_ticks(y_lo, y_hi)
        ylabels = [log_label(v) for v in yticks]
    else:
        y_lo, y_hi = (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0)
        if y_hi <= y_lo:
            y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
        pad = 0.04 * (y_hi - y_lo)
        y_lo, y_hi = y_lo - pad, y_hi + pad
        yticks, ystep = nice_ticks(y_lo, y_hi)
        ylabels = [tick_label(float(v), ystep) for v in yticks]
    xticks, xstep = nice_ticks(x_lo, x_hi, 6)

    L, s = curves_layout(size), SUPERSAMPLE
    f = L.font * s
    left, top, right, bottom = (v * s for v in L.plot)
    canvas = Image.new("RGB", (size[0] * s, size[1] * s), "white")
    draw = ImageDraw.Draw(canvas)
    body, small = _font(f), _font(0.85 * f)

    def px(xv: np.ndarray, yv: np.ndarray) -> np.ndarray:
        u = (xv - x_lo) / (x_hi - x_lo)
        v = (np.log10(yv) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo)) if log_y \
            else (yv - y_lo) / (y_hi - y_lo)
        return np.stack([left + u * (right - left), bottom - v * (bottom - top)], axis=1)

    for v, text in zip(yticks, ylabels, strict=True):
        yy = px(np.array([x_lo]), np.array([v]))[0, 1]
        draw.line((left, yy, right, yy), fill=GRID_INK, width=s)
        draw.line((left - 0.35 * f, yy, left, yy), fill=INK, width=2 * s)
        draw.text((left - 0.5 * f, yy), text, font=small, fill=INK, anchor="rm")
    for v in xticks:
        xx = px(np.array([v]), np.array([y_hi]))[0, 0]
        draw.line((xx, top, xx, bottom), fill=GRID_INK, width=s)
        draw.line((xx, bottom, xx, bottom + 0.35 * f), fill=INK, width=2 * s)
        draw.text((xx, bottom + 0.45 * f), tick_label(float(v), xstep), font=small, fill=INK, anchor="mt")
    x_name = next((k for k, v in X_AXES.items() if v == xcol), xcol)
    y_name = f"{y} - f*" if f_star is not None else y
    draw.text(((left + right) / 2, bottom + 1.8 * f), x_name, font=body, fill=INK, anchor="mt")
    _rotated_text(canvas, (0.9 * f, (top + bottom) / 2), y_name + (" (log)" if log_y else ""), body, INK)
    draw.text((left, 0.5 * f), title or f"{y_name} vs {x_name}", font=_font(1.2 * f), fill=INK)

    plot = Image.new("RGB", (right - left, bottom - top), "white")
    plot.paste(canvas.crop((left, top, right, bottom)))
    pdraw = ImageDraw.Draw(plot)
    width = max(3, round(0.2 * f))
    box = (-4 * width, -4 * width, plot.width + 4 * width, plot.height + 4 * width)
    for thick in (False, True):  # every start's thin line first, the medians on top
        for lane, is_median, xv, yv in series:
            if is_median != thick:
                continue
            color = _rgb(lane_color(lane)) if thick else _lighter(_rgb(lane_color(lane)), 0.6)
            pts = px(xv, yv) - (left, top)
            ok = np.isfinite(pts).all(axis=1)
            back = np.concatenate([[False], np.diff(xv) < 0])  # x went back: the lane restarted
            piece = np.cumsum(~ok | back)
            for key in np.unique(piece[ok]):
                run = pts[ok & (piece == key)]
                for seg in _runs(run, box):
                    _polyline(pdraw, seg, color, width if thick else max(2, width // 2))
    canvas.paste(plot, (left, top))
    draw.rectangle((left, top, right, bottom), outline=INK, width=2 * s)
    # legend, top right
    entries = [(lane_color(lane), text) for lane, text in labels.items()]
    if entries:
        w_text = max(body.getlength(t) for _, t in entries)
        x1 = right - 0.6 * f
        x0 = x1 - w_text - 3.4 * f
        y0 = top + 0.6 * f
        y1 = y0 + len(entries) * 1.45 * f + 0.8 * f
        draw.rounded_rectangle((x0, y0, x1, y1), radius=0.3 * f, fill=(255, 255, 255),
                               outline=(120, 120, 120), width=s)
        for i, (color, text) in enumerate(entries):
            yy = y0 + 0.4 * f + (i + 0.5) * 1.45 * f
            draw.line((x0 + 0.5 * f, yy, x0 + 2.5 * f, yy), fill=_rgb(color), width=width)
            draw.text((x0 + 2.9 * f, yy), text, font=body, fill=INK, anchor="lm")
    canvas.reduce(s).save(path, format="PNG")
    return path
