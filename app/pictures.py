"""What every matplotlib picture of a race shares (the race on its landscape, the curves): a figure
of exactly the asked pixels, type sized for a projector, the records as one sorted table, a label per
lane, trajectories broken at restarts, and a legend placed where it covers no data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend

from engine.export import records_frame
from engine.records import RUNNING, Record
from engine.registry import HyperparameterError, get_spec

DPI = 100
"""Figures are ``size / DPI`` inches at this resolution, so a picture has exactly ``size`` pixels."""
Records = Sequence[Record] | pd.DataFrame


def new_figure(size: tuple[int, int]) -> Figure:
    w, h = size
    if w < 120 or h < 120:
        raise ValueError(f"a picture needs at least 120 x 120 pixels, got {w} x {h}")
    fig = Figure(figsize=(w / DPI, h / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def font_points(size: tuple[int, int]) -> float:
    """Body text in points: 1/40 of the picture's smaller side, so it reads on a projector."""
    return min(size) / 40 * 72 / DPI


def save_png(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def record_table(records: Records) -> pd.DataFrame:
    frame = records if isinstance(records, pd.DataFrame) else records_frame(records)
    return frame.sort_values(["lane", "start", "tick"], kind="stable").reset_index(drop=True)


def display_name(optimizer: str) -> str:
    try:
        return get_spec(optimizer).display_name
    except HyperparameterError:  # records of an optimizer this process has not registered
        return optimizer


def lane_labels(frame: pd.DataFrame) -> dict[int, str]:
    """Per lane: its optimizer(s), learning rate (and where it went) and how many starts diverged."""
    labels: dict[int, str] = {}
    for lane, sub in frame.groupby("lane", sort=True):
        sub = sub.sort_values("tick", kind="stable")
        label = " -> ".join(dict.fromkeys(map(display_name, sub["optimizer"])))
        lrs = sub["hp_lr"].dropna().to_numpy(float) if "hp_lr" in sub else np.zeros(0)
        if lrs.size:
            label += f"  lr {lrs[0]:g}" + (f" -> {lrs[-1]:g}" if lrs[-1] != lrs[0] else "")
        last = sub[sub["tick"] == sub["tick"].max()]
        bad = int((last["status"] != RUNNING).sum())
        if bad:
            label += f"  ({bad}/{len(last)} diverged)"
        labels[int(lane)] = label
    return labels


def segments(steps: np.ndarray) -> np.ndarray:
    """Segment number of each row of one trajectory: a restart (Reset, or a switch back to the
    starts: the lane's step goes back) begins a new one."""
    return np.concatenate([[0], np.cumsum(np.diff(steps) <= 0)]) if steps.size else steps


def broken(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """``values`` ``[T, ...]`` with a NaN row between segments, so one line shows separate pieces."""
    cuts = np.flatnonzero(np.diff(segment)) + 1
    return np.insert(values.astype(float), cuts, np.nan, axis=0)


def place_legend(ax: Axes, handles: list, labels: list[str], fontsize: float) -> Legend:
    """``loc="best"`` in the axes, which matplotlib puts where the fewest line vertices and crossings
    are; when every place inside covers a path, the legend goes below the axes instead."""
    legend = ax.legend(handles, labels, loc="best", fontsize=fontsize, framealpha=0.85)
    fig = ax.get_figure()
    fig.draw_without_rendering()  # lays out the figure and chooses the legend's place
    if legend_overlaps(ax, legend):
        legend.remove()
        legend = fig.legend(handles, labels, loc="outside lower center", fontsize=fontsize,
                            ncols=min(len(labels), 2), frameon=False)
        fig.draw_without_rendering()
    # the layout is done: keep it (each later draw, a GIF frame or the PNG, would redo it)
    fig.set_layout_engine("none")
    return legend


def legend_overlaps(ax: Axes, legend: Legend) -> int:
    """How many vertices of the axes' data lines lie under ``legend``, or segments cross it."""
    box = legend.get_window_extent()
    count = 0
    for line in ax.get_lines():
        if line.get_gid() is None:  # only the data (paths, curves) has a gid
            continue
        path = line.get_transform().transform_path(line.get_path())
        count += box.count_contains(path.vertices) + int(path.intersects_bbox(box, filled=False))
    return count
