"""Curves as pictures: a record column against a step or oracle axis, one thick median line per lane
over thin lines per start, drawn by matplotlib (Agg) with the helpers every picture shares
(:mod:`app.pictures`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from app.batch import AXES as X_AXES
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
from engine.export import COUNT_COLUMNS
from engine.records import RUNNING


def _y_range(values: list[np.ndarray], log: bool) -> tuple[float, float]:
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if not finite.size:
        return (0.1, 10.0) if log else (0.0, 1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if log:
        lo, hi = np.log10(lo), np.log10(hi)
        if hi - lo < 1:  # at least a decade, so the axis has labelled powers of ten
            mid = (hi + lo) / 2
            lo, hi = mid - 0.5, mid + 0.5
        pad = 0.04 * (hi - lo)
        return 10 ** (lo - pad), 10 ** (hi + pad)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.04 * (hi - lo)
    return lo - pad, hi + pad


def curves_figure(records: Records, y: str = "loss", x: str = "step", log_y: bool = True,
                  size: tuple[int, int] = (900, 560), f_star: float | None = None,
                  title: str | None = None) -> Figure:
    """``y`` (a record column: loss, grad_norm, update_norm, a metric, a probe field) against ``x``
    (step, tick, wall_time, an oracle count, oracle_calls, or an app x-axis label): a thick line per
    lane (the median over its starts) over a thin line per start when there are several.
    ``f_star`` subtracts the known minimum (suboptimality); on a log axis, values <= 0 are gaps.
    The y-range fits the trajectories that did not diverge: a diverged one leaves the plot (and a
    note says so) rather than flattening every other curve. Curve lines carry the gid
    ``"curve lane=<k> start=<j>"`` (``start=median`` for the thick line)."""
    frame = record_table(records)
    xcol = X_AXES.get(x, x)
    if xcol == "oracle_calls" and xcol not in frame.columns:
        frame["oracle_calls"] = frame[list(COUNT_COLUMNS)].sum(axis=1)
    ycol = y if y in frame.columns else f"metric_{y}"
    for col, what in ((xcol, "x"), (ycol, "y")):
        if col not in frame.columns:
            raise ValueError(f"no column {col!r} for {what}; columns: {', '.join(frame.columns)}")
    values = frame[ycol].to_numpy(float) - (f_star or 0.0)
    values[~np.isfinite(values) | ((values <= 0) if log_y else False)] = np.nan
    frame = frame.assign(_y=values)

    fig = new_figure(size)
    ax = fig.add_subplot()
    font = font_points(size) * 1.2  # a curve plot is wider than tall: its text may be a little larger
    lw = font / 5
    labels = lane_labels(frame)
    live: list[np.ndarray] = []  # values of the trajectory segments that did not diverge
    gone: list[np.ndarray] = []  # and of those that did
    handles = []
    for lane, sub in frame.groupby("lane", sort=True):
        color = lane_color(int(lane))
        starts = sub["start"].nunique()
        for start, one in sub.groupby("start", sort=True):
            segment = segments(one["step"].to_numpy())
            yv = one["_y"].to_numpy(float)
            for s in np.unique(segment):
                part = segment == s
                (live if one["status"].to_numpy()[part][-1] == RUNNING else gone).append(yv[part])
            if starts > 1:
                ax.plot(broken(one[xcol].to_numpy(float), segment), broken(yv, segment), color=color,
                        lw=lw / 3, alpha=0.45, zorder=2, gid=f"curve lane={lane} start={start}")
        med = sub.groupby("tick").agg(x=(xcol, "first"), y=("_y", "median"), step=("step", "first"))
        segment = segments(med["step"].to_numpy())
        (line,) = ax.plot(broken(med["x"].to_numpy(float), segment),
                          broken(med["y"].to_numpy(float), segment), color=color, lw=lw, zorder=3,
                          gid=f"curve lane={lane} start=median")
        handles.append(line)
    lo, hi = _y_range(live or gone, log_y)
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())  # labels on powers of ten only: never crowded
    ax.set_ylim(lo, hi)
    if live and gone:
        ax.set_title("y fits the trajectories that did not diverge; diverged ones leave the plot",
                     loc="left", fontsize=0.75 * font, color="0.35")
    x_name = next((k for k, v in X_AXES.items() if v == xcol), xcol)
    y_name = f"{y} - f*" if f_star is not None else y
    ax.set_xlabel(x_name, fontsize=font)
    ax.set_ylabel(y_name + (" (log)" if log_y else ""), fontsize=font)
    ax.tick_params(labelsize=0.85 * font)
    ax.grid(True, which="major", color="0.9", lw=0.8)
    ax.margins(x=0)
    fig.suptitle(title or f"{y_name} vs {x_name}", fontsize=1.1 * font)
    place_legend(ax, handles, list(labels.values()), 0.8 * font)
    return fig


def curves_png(records: Records, path: str | Path, y: str = "loss", x: str = "step", log_y: bool = True,
               size: tuple[int, int] = (900, 560), f_star: float | None = None,
               title: str | None = None) -> Path:
    """:func:`curves_figure` as a PNG of ``size`` pixels."""
    return save_png(curves_figure(records, y, x, log_y, size, f_star, title), path)
