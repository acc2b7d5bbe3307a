"""The leaderboard: a row per lane with its colour, its best start's loss and distance to the
nearest known minimum, its steps, and its status in full. A lane that switched optimizer lists
its segments: a divergence is written against the optimizer that diverged, not the one after it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import panel as pn

from app.batch import Batch
from app.lanes import Lane
from app.views.base import View, html_escape, swatch
from engine.records import RUNNING, Record, status_step
from engine.registry import get_spec

STYLE = ("<style>.lb{border-collapse:collapse;font-size:0.85em;width:100%}.lb td,.lb th{padding:2px 6px;"
         "border-bottom:1px solid #ddd;text-align:left;vertical-align:top}.lb th{font-weight:600}</style>")


def _name(optimizer: str) -> str:
    try:
        return get_spec(optimizer).display_name
    except ValueError:
        return optimizer


def status_of(r: Record, segments: list[tuple[int, str]]) -> str:
    """A lane's status in words, each stopped start named with the optimizer that was running then."""
    ended = [s for s in r.status if s != RUNNING]
    if not ended:
        return "running"

    def owner(status: str) -> str:
        step = status_step(status) or 0
        name = [opt for start, opt in segments if start <= step]
        return _name(name[-1] if name else r.optimizer)

    if len(r.status) == 1:
        s = ended[0]
        who = owner(s)
        return s if who == _name(r.optimizer) else f"{who} {s}; {_name(r.optimizer)} took over from there"
    first = min(ended, key=lambda s: status_step(s) or 0)
    return (f"{len(ended)} of {len(r.status)} starts stopped; first: {owner(first)} {first}")


class LeaderboardView(View):
    title = "leaderboard"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.table = pn.pane.HTML("", sizing_mode="stretch_width")
        self.segments: dict[int, list[tuple[int, str]]] = {}  # lane -> [(first lane step, optimizer)]
        self.metrics: dict[int, Record] = {}
        self.panel = self.table

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        ids = {lane.id for lane in lanes}
        self.segments = {k: v for k, v in self.segments.items() if k in ids}
        self.refresh()

    def consume(self, batch: Batch) -> None:
        for lane_id, recs in batch.records.items():
            seg = self.segments.setdefault(lane_id, [])
            for r in recs:
                if not seg or seg[-1][1] != r.optimizer:
                    seg.append((r.step, r.optimizer))
                if r.metrics:
                    self.metrics[lane_id] = r

    def rows(self) -> list[dict[str, str]]:
        s = self.session
        minima = [m.x for m in s.problem_obj.minima] if s.is_drawn else []
        mins = np.array([list(m) for m in minima], dtype=float) if minima else None
        rows = []
        for lane in s.lanes:
            r = s.latest.get(lane.id)
            if r is None:
                rows.append(dict(color=lane.color, optimizer=lane.label, status="waiting for its first step"))
                continue
            finite = np.isfinite(r.loss)
            best = int(np.nanargmin(np.where(finite, r.loss, np.inf))) if finite.any() else 0
            row = dict(color=lane.color, optimizer=lane.label,
                       loss=f"{r.loss[best]:.6g}" if finite.any() else "—")
            if mins is not None and r.position is not None:
                d = np.linalg.norm(r.position[:, None, :] - mins[None, :, :r.position.shape[1]], axis=2)
                dist = float(d.min(axis=1)[best])
                row["distance to nearest minimum"] = f"{dist:.4g}" if np.isfinite(dist) else "—"
            m = self.metrics.get(lane.id)
            for name in ("test_accuracy", "recovery_error"):
                if m is not None and name in m.metrics:
                    row[name.replace("_", " ")] = f"{m.metrics[name][best]:.4g} (step {m.step})"
            row["steps"] = f"{r.step + 1:,}"
            row["status"] = status_of(r, self.segments.get(lane.id, []))
            rows.append(row)
        return rows

    def refresh(self) -> None:
        rows = self.rows()
        columns = list(dict.fromkeys(k for row in rows for k in row if k != "color"))
        head = "".join(f"<th>{html_escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(
            f"<td>{swatch(row['color']) if c == 'optimizer' else ''}{html_escape(row.get(c, ''))}</td>"
            for c in columns) + "</tr>" for row in rows)
        html = f'{STYLE}<table class="lb"><tr>{head}</tr>{body}</table>'
        if html != self.table.object:
            self.table.object = html

    def clear(self) -> None:
        self.segments, self.metrics = {}, {}

    def set_problem(self) -> None:
        self.clear()
