"""A person as the ranking oracle: a lane waits with candidate points, the person clicks them from
best to worst, and the complete ranking goes to the run as an event. Never imports Panel."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.events import SubmitRanking


def _same(a: Any, b: Any) -> bool:
    """Two candidate tensors with the same values (None matches nothing)."""
    return a is not None and b is not None and a.shape == b.shape and bool((a == b).all())


class Ranking:
    """Which lane waits for a person, its candidates, and the ranks clicked so far."""

    def __init__(self) -> None:
        self.waiting: tuple[Any, Any] | None = None  # (lane, candidates tensor [m, P])
        self.ranked: list[int] = []
        self._answered: Any = None  # the candidates last submitted (until the run moves on)

    def poll(self, session: Any) -> bool:
        """Pick up a lane that waits for a person (the first, if several do); True if it changed."""
        awaiting = dict(session.worker.run.awaiting)  # a snapshot: the worker thread may change it
        current = self.waiting
        # the run re-raises its wait every tick with an equal copy of the candidates: compare values
        if current is not None and _same(awaiting.get(current[0].engine_id), current[1]):
            return False
        by_engine = {lane.engine_id: lane for lane in session.lanes}
        fresh = [(by_engine[k], c) for k, c in sorted(awaiting.items())
                 if not _same(c, self._answered) and k in by_engine]
        if not fresh and current is None:
            return False
        self.waiting = fresh[0] if fresh else None
        self.ranked = []
        return True

    def points(self, project: Any) -> np.ndarray | None:
        return None if self.waiting is None else project(self.waiting[1].cpu().numpy())

    def rank(self, session: Any, index: int) -> str:
        """Give candidate ``index`` the next rank; the last one sends the ranking. Returns an error."""
        if self.waiting is None:
            return "no optimizer is waiting for a ranking"
        lane, candidates = self.waiting
        m = candidates.shape[0]
        if not 0 <= index < m or index in self.ranked:
            return f"pick one of the {m} candidates not ranked yet"
        self.ranked.append(index)
        if len(self.ranked) == m:
            session.worker.submit(SubmitRanking(lane.engine_id, tuple(self.ranked)))
            session.mark(f"{lane.label}: ranked {self.ranked}", lane)
            self._answered, self.waiting, self.ranked = candidates, None, []
        return ""

    def nearest(self, project: Any, x: float, y: float) -> int | None:
        points = self.points(project)
        free = [i for i in range(len(points)) if i not in self.ranked] if points is not None else []
        if not free:
            return None
        d = [float((points[i, 0] - x) ** 2 + (points[i, 1] - y) ** 2) for i in free]
        return free[d.index(min(d))]

    def undo(self) -> None:
        if self.ranked:
            self.ranked.pop()
