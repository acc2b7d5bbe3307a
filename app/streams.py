"""Records -> Bokeh ``ColumnDataSource.stream`` batches.

Nothing here re-renders a plot: trajectories grow by streamed segments, curves by streamed
rows, with rollover so a long session stays bounded in the browser. Trajectories are decimated
by distance: a segment is sent only once a row has moved a visible amount (a fraction of the view
diagonal) or diverged, so 1,000 tiny Adam steps near a minimum cost the browser nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
from bokeh.models import ColumnDataSource

from engine.records import RUNNING, Record, status_step

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
"""Category10 without grey and olive (they vanish on the viridis heatmap)."""

TRAJECTORY_ROLLOVER = 150_000
CURVE_ROLLOVER = 50_000
FLOOR = 1e-16
"""Log axes cannot show 0: a suboptimality or gradient norm below this (a method that reached the
minimum, or Newton exactly on a stationary point) is drawn at it, so one exact zero does not
stretch the axis over 300 decades."""

X_AXES = {
    "step": "step",
    "gradients": "gradients",
    "function values": "function_values",
    "HVPs": "hvps",
    "JVPs": "jvps",
    "rankings": "rankings",
    "oracle calls": "oracle_calls",
    "wall time (s)": "wall_time",
}
"""x-axis label -> column. Oracle counts are per trajectory, so a zeroth-order method's two
function values per step and a first-order method's one gradient race on one scale."""
AXIS_COLUMNS = tuple(X_AXES.values())


def axis_data(recs: Sequence[Record]) -> dict[str, list]:
    """The x-axis columns of a batch of records (every source that a curve reads carries them)."""
    counts = [r.counts.as_dict() for r in recs]
    data: dict[str, list] = {"step": [r.step for r in recs], "wall_time": [r.wall_time for r in recs]}
    for col in ("gradients", "function_values", "hvps", "jvps", "rankings"):
        data[col] = [c[col] for c in counts]
    data["oracle_calls"] = [sum(c.values()) for c in counts]
    return data


def lane_color(lane: int) -> str:
    return PALETTE[lane % len(PALETTE)]


class RaceStreams:
    """The race's data sources and the bookkeeping that feeds them.

    ``f_star`` is the problem's minimum value when known: curves then show suboptimality
    :math:`f(x_t) - f^\\star` (on a log axis); otherwise the raw loss.
    """

    def __init__(self, *, f_star: float | None, view_diagonal: float, min_move: float = 0.002) -> None:
        self.f_star = f_star
        self.min_move = min_move * view_diagonal
        self.segments = ColumnDataSource(dict(x0=[], y0=[], x1=[], y1=[], color=[], optimizer=[]))
        self.heads = ColumnDataSource(dict(x=[], y=[], color=[], optimizer=[], alpha=[]))
        self.events = ColumnDataSource({c: [] for c in (*AXIS_COLUMNS, "label")})
        self.curves: dict[int, ColumnDataSource] = {}
        self.metric_curves: dict[int, ColumnDataSource] = {}
        self.names: dict[int, str] = {}
        self.latest: dict[int, Record] = {}
        self.previous: dict[int, Record] = {}  # the record before ``latest`` (its update's start)
        self.latest_metrics: dict[int, Record] = {}
        self.curvature_curves: dict[int, ColumnDataSource] = {}
        self.latest_probe: dict[int, Record] = {}
        self._drawn: dict[int, np.ndarray] = {}  # lane -> [M, 2] last position streamed
        self.project = lambda p: p[..., :2]
        """Positions ``[..., d]`` -> drawing plane ``[..., 2]`` (a simplex problem's barycentric map)."""
        self.points_streamed = 0

    # -- lanes ---------------------------------------------------------------------------------
    def curve(self, lane: int) -> ColumnDataSource:
        if lane not in self.curves:
            self.curves[lane] = ColumnDataSource({c: [] for c in (*AXIS_COLUMNS, "loss", "grad_norm")})
        return self.curves[lane]

    def metric_curve(self, lane: int, names: Sequence[str] = ()) -> ColumnDataSource:
        """Per-lane source of the problem's scheduled metrics (median over starts)."""
        if lane not in self.metric_curves:
            self.metric_curves[lane] = ColumnDataSource({c: [] for c in (*AXIS_COLUMNS, *names)})
        return self.metric_curves[lane]

    def curvature_curve(self, lane: int) -> ColumnDataSource:
        """Per-lane source of probe results: the sharpness its threshold bounds, the threshold,
        lambda_max and the directional sharpness of the update."""
        if lane not in self.curvature_curves:
            self.curvature_curves[lane] = ColumnDataSource({c: [] for c in (
                *AXIS_COLUMNS, "sharpness", "threshold", "lambda_max", "directional")})
        return self.curvature_curves[lane]

    def forget(self, lane: int) -> None:
        self.latest.pop(lane, None)
        self.previous.pop(lane, None)
        self.latest_metrics.pop(lane, None)
        self.latest_probe.pop(lane, None)
        self._drawn.pop(lane, None)

    def restart(self, lane: int) -> None:
        """The lane went back to its starts: its next segment must not join the old path."""
        self._drawn.pop(lane, None)

    # -- feeding ---------------------------------------------------------------------------------
    def push(self, records: Sequence[Record], labels: dict[int, str]) -> None:
        """Stream a batch of records (any lanes, in tick order)."""
        if not records:
            return
        by_lane: dict[int, list[Record]] = defaultdict(list)
        for r in records:
            by_lane[r.lane].append(r)
        seg: dict[str, list] = defaultdict(list)
        for lane, recs in by_lane.items():
            self._stream_curve(lane, recs)
            self._stream_metrics(lane, [r for r in recs if r.metrics])
            self._stream_probes(lane, [r for r in recs if r.curvature is not None])
            if recs[0].position is not None and recs[0].position.shape[1] >= 2:
                self._collect_segments(lane, recs, labels.get(lane, recs[-1].optimizer), seg)
            before = recs[-2] if len(recs) > 1 else self.latest.get(lane)
            if before is not None:
                self.previous[lane] = before
            self.latest[lane] = recs[-1]
            self.names[lane] = labels.get(lane, recs[-1].optimizer)
        if seg:
            self.segments.stream(dict(seg), rollover=TRAJECTORY_ROLLOVER)
            self.points_streamed += len(seg["x0"])
        self._update_heads()

    def _value(self, loss: np.ndarray) -> float:
        live = loss[np.isfinite(loss)]
        if live.size == 0:
            return float("nan")
        v = float(np.median(live))
        return max(v - self.f_star, FLOOR) if self.f_star is not None else v

    def _stream_curve(self, lane: int, recs: Sequence[Record]) -> None:
        data = dict(
            axis_data(recs),
            loss=[self._value(r.loss) for r in recs],
            grad_norm=[max(float(np.median(r.grad_norm[np.isfinite(r.grad_norm)]))
                           if np.isfinite(r.grad_norm).any() else float("nan"), FLOOR) for r in recs],
        )
        self.curve(lane).stream(data, rollover=CURVE_ROLLOVER)

    def _stream_metrics(self, lane: int, recs: Sequence[Record]) -> None:
        if not recs:
            return
        names = list(recs[0].metrics)
        src = self.metric_curve(lane, names)
        data = axis_data(recs)
        for name in names:
            if name in src.data:
                data[name] = [float(np.nanmedian(r.metrics[name])) if np.isfinite(r.metrics[name]).any()
                              else float("nan") for r in recs]
        src.stream({k: v for k, v in data.items() if k in src.data}, rollover=CURVE_ROLLOVER)
        self.latest_metrics[lane] = recs[-1]

    def _stream_probes(self, lane: int, recs: Sequence[Record]) -> None:
        if not recs:
            return
        nan = float("nan")
        self.curvature_curve(lane).stream(dict(
            axis_data(recs),
            sharpness=[r.curvature.sharpness for r in recs],
            threshold=[r.curvature.threshold.value if r.curvature.threshold else nan for r in recs],
            lambda_max=[r.curvature.lambda_max for r in recs],
            directional=[r.curvature.directional for r in recs]), rollover=CURVE_ROLLOVER)
        self.latest_probe[lane] = recs[-1]

    def _collect_segments(self, lane: int, recs: Sequence[Record], label: str, seg: dict) -> None:
        color = lane_color(lane)
        last = self._drawn.get(lane)
        for r in recs:
            pos = self.project(r.position)
            if last is None or last.shape != pos.shape or r.step == 0:
                last = pos.copy()
                continue
            ok = np.isfinite(pos).all(axis=1) & np.isfinite(last).all(axis=1)
            moved = ok & (np.linalg.norm(pos - last, axis=1) >= self.min_move)
            for i in np.flatnonzero(moved):
                seg["x0"].append(last[i, 0])
                seg["y0"].append(last[i, 1])
                seg["x1"].append(pos[i, 0])
                seg["y1"].append(pos[i, 1])
                seg["color"].append(color)
                seg["optimizer"].append(label)
                last[i] = pos[i]
        self._drawn[lane] = last

    def _update_heads(self) -> None:
        data: dict[str, list] = defaultdict(list)
        for lane, r in self.latest.items():
            if r.position is None:
                continue
            for i, p in enumerate(self.project(r.position)):
                if np.isfinite(p[:2]).all():
                    data["x"].append(float(p[0]))
                    data["y"].append(float(p[1]))
                    data["color"].append(lane_color(lane))
                    data["optimizer"].append(self.names.get(lane, r.optimizer))
                    data["alpha"].append(1.0 if r.status[i] == RUNNING else 0.35)
        self.heads.data = dict(data) if data else dict(x=[], y=[], color=[], optimizer=[], alpha=[])

    def last_updates(self) -> dict[str, list]:
        """Each start's latest step as a segment from x_{t-1} to x_t (what the presenter's arrows show)."""
        data: dict[str, list] = {"x0": [], "y0": [], "x1": [], "y1": [], "color": []}
        for lane, r in self.latest.items():
            prev = self.previous.get(lane)
            if r.position is None or prev is None or prev.position is None or prev.step >= r.step:
                continue
            for a, b in zip(self.project(prev.position), self.project(r.position), strict=True):
                if np.isfinite(a[:2]).all() and np.isfinite(b[:2]).all() and not np.array_equal(a[:2], b[:2]):
                    for key, v in zip(("x0", "y0", "x1", "y1"), (a[0], a[1], b[0], b[1]), strict=True):
                        data[key].append(float(v))
                    data["color"].append(lane_color(lane))
        return data

    def mark_event(self, label: str) -> None:
        """A vertical marker on the curves at the newest record's position on every x-axis."""
        if not self.latest:
            return
        r = max(self.latest.values(), key=lambda rec: rec.tick)
        data = axis_data([r])
        data["step"] = [r.step + 1]
        self.events.stream(dict(data, label=[label]))

    def clear(self) -> None:
        for src in (self.segments, self.heads, self.events, *self.curves.values()):
            src.data = {k: [] for k in src.data}
        self.metric_curves.clear()  # their columns depend on the problem
        for src in self.curvature_curves.values():
            src.data = {k: [] for k in src.data}
        self.latest.clear()
        self.previous.clear()
        self.latest_metrics.clear()
        self.latest_probe.clear()
        self._drawn.clear()
        self.points_streamed = 0

    # -- leaderboard -----------------------------------------------------------------------------
    def leaderboard(self, minima: Iterable[Sequence[float]]) -> list[dict]:
        """A row per lane: its best start's loss and distance to the nearest known minimum (text,
        formatted for reading; "—" where a lane has no finite value), steps and status."""
        minima = list(minima)
        mins = np.array([list(m) for m in minima], dtype=float) if minima else None
        rows = []
        for lane, r in sorted(self.latest.items()):
            finite = np.isfinite(r.loss)
            best = int(np.nanargmin(np.where(finite, r.loss, np.inf))) if finite.any() else 0
            dist = float("nan")
            if mins is not None and mins.size and r.position is not None:
                d = np.linalg.norm(r.position[:, None, :] - mins[None, :, :r.position.shape[1]], axis=2)
                dist = float(d.min(axis=1)[best])
            diverged = [s for s in r.status if s != RUNNING]
            if not diverged:
                status = "running"
            elif len(r.status) == 1:
                status = diverged[0]
            else:
                first = min(status_step(s) for s in diverged)
                status = f"{len(diverged)}/{len(r.status)} diverged (first at step {first})"
            row = dict(optimizer=self.names.get(lane, r.optimizer),
                       loss=f"{r.loss[best]:.6g}" if finite.any() else "—")
            if mins is not None:
                row["distance"] = f"{dist:.4g}" if finite.any() and np.isfinite(dist) else "—"
            m = self.latest_metrics.get(lane)
            for name in ("test_accuracy", "recovery_error"):
                if m is not None and name in m.metrics:
                    row[name.replace("_", " ")] = f"{m.metrics[name][best]:.4g} (step {m.step})"
            rows.append(dict(row, steps=r.step + 1, status=status))
        return rows
