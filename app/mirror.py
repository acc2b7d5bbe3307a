"""Reading the race: the session's drain of the worker's records into per-lane batches, with a
replayed log's events mirrored into the lanes as the run reaches them. A mixin of
:class:`app.model.RaceSession` (one home for the record mirroring). Never imports Panel."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.batch import Batch, Mark, axis_row
from app.lanes import Lane, free_slot
from engine.events import (
    AddLane,
    RemoveLane,
    Reset,
    SetBatchSize,
    SetClip,
    SetHyperparameter,
    SetSchedule,
    SwitchOptimizer,
)
from engine.records import Record
from engine.run import LaneConfig


def show(value: Any) -> str:
    """A value as a change marker writes it ("0.001")."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def describe(what: str, wrapper: Any) -> str:
    """A lane's lr schedule, clip or batch size in a change marker ("constant lr", "cosine ...")."""
    if wrapper is None:
        return {"schedule": "constant lr", "clip": "no clipping", "batch": "the problem's batch"}[what]
    return ("lr " if what == "schedule" else "") + wrapper.describe()


class Mirror:
    """Drain and replay mirroring of :class:`app.model.RaceSession` (its attributes are the session's)."""

    def drain(self) -> Batch:
        """Records and marks since the last call, per lane, with replayed events mirrored into the
        lanes as the run reaches them (called by the page's periodic pump)."""
        batch = Batch(origin=self.origin)
        worker = self.worker
        if self._pending_reset is not None and self._pending_reset.cancelled():
            self._pending_reset = None  # its worker stopped (the page closed) before taking it
            return batch
        if self._pending_reset is not None:
            if not self._pending_reset.done():
                return batch  # the records wait in the worker until the reset has a tick
            self.origin = batch.origin = self._pending_reset.result()
            self._pending_reset, batch.reset = None, True
            records = [r for r in worker.drain() if r.tick >= self.origin]
            self._marks = [Mark(self.origin, "reset")]
        else:
            records = worker.drain()
        for lane, future in list(self._pending_adds):
            if future.done():
                self._pending_adds.remove((lane, future))
                if future.exception() is not None:
                    self.message = f"{lane.label} could not join: {future.exception()}"
                    self._set_lanes([ln for ln in self.lanes if ln is not lane])
                else:
                    lane.engine_id = future.result()
                    if lane.id in self._removed:
                        self.worker.submit(RemoveLane(lane.engine_id))
        by_engine = {ln.engine_id: ln for ln in self.lanes if ln.engine_id >= 0}
        for r in records:
            if self._scheduled and self._scheduled[0].tick <= r.tick:
                self._mirror(r.tick, batch)
                by_engine = {ln.engine_id: ln for ln in self.lanes if ln.engine_id >= 0}
            lane = by_engine.get(r.lane) or self._bind(r)
            if lane is not None:
                batch.records.setdefault(lane.id, []).append(r)
        self._mirror(worker.tick, batch)
        if batch.reset:
            self.latest = {}
        for lane_id, recs in batch.records.items():
            self.latest[lane_id] = recs[-1]
        batch.marks = [self._place(m) for m in self._marks]
        self._marks = []
        errors = worker.errors()
        if errors:
            self.message = errors[-1]
        if self.running and worker.run.paused and worker.tick > self._resumed_at:
            self.running = False  # a replayed race reached the step where it was saved paused
        return batch

    def _place(self, mark: Mark) -> Mark:
        """A mark's position on every x-axis: its lane's counts (or the race's furthest) now."""
        if mark.lane is not None:
            row = axis_row(self.latest.get(mark.lane), mark.tick, self.origin)
        else:
            rows = [axis_row(r, mark.tick, self.origin) for r in self.latest.values()] or \
                [axis_row(None, mark.tick, self.origin)]
            row = {k: max(r[k] for r in rows) for k in rows[0]}
        return replace(mark, at=row)

    def _bind(self, record: Record) -> Lane | None:
        """A lane a replayed event added: it gets the engine id of its first record."""
        for lane in self.lanes:
            if lane.engine_id == -2 and lane.optimizer == record.optimizer:
                lane.engine_id = record.lane
                return lane
        return None

    def _mirror(self, tick: int, batch: Batch) -> None:
        """Show the replayed events the run applied up to ``tick`` in the lanes (not sent back)."""
        lanes = list(self.lanes)
        changed = False
        while self._scheduled and self._scheduled[0].tick <= tick:
            e = self._scheduled.pop(0)
            ev = e.event
            lane = next((ln for ln in lanes if ln.engine_id == getattr(ev, "lane", None)), None)
            if isinstance(ev, SetHyperparameter) and lane is not None:
                before = getattr(lane.hyperparameters, ev.name)
                lane.mirror(ev.name, ev.value)
                self._marks.append(Mark.of_change(e.tick, ev.name, f"{lane.label}: {ev.name}", show(before),
                                                  show(ev.value), lane.id))
            elif isinstance(ev, SwitchOptimizer) and lane is not None:
                old = lane.label
                lane.switch(ev.optimizer, ev.hyperparameters)
                lane.mirror_wrap(_wrapped(lane, ev.schedules, ev.clip or lane.config().clip,
                                          ev.batch_size or lane.config().batch_size))
                self._marks.append(Mark(e.tick, f"{old} → {lane.spec.display_name}", lane.id))
                changed = True
            elif isinstance(ev, AddLane):
                new = Lane.from_config(LaneConfig(ev.optimizer, ev.hyperparameters, ev.schedules, ev.clip,
                                                  ev.batch_size), slot=free_slot(lanes, self._recent_slots),
                                       on_change=self._on_lane_change, on_wrap=self._on_lane_wrap)
                new.engine_id = -2  # bound to the engine's id by its first record
                lanes.append(new)
                self._marks.append(Mark(e.tick, f"+ {new.spec.display_name}", new.id))
                changed = True
            elif isinstance(ev, (SetSchedule, SetClip, SetBatchSize)) and lane is not None:
                cfg = lane.config()
                what, before = _change(ev, cfg)
                if isinstance(ev, SetSchedule):
                    cfg = _wrapped(lane, {**{k: s for k, s in cfg.schedules.items() if k != ev.name},
                                          **({ev.name: ev.schedule} if ev.schedule else {})},
                                   cfg.clip, cfg.batch_size)
                elif isinstance(ev, SetClip):
                    cfg = _wrapped(lane, cfg.schedules, ev.clip, cfg.batch_size)
                else:
                    cfg = _wrapped(lane, cfg.schedules, cfg.clip, ev.batch_size)
                lane.mirror_wrap(cfg)
                after = _change(ev, cfg)[1]
                self._marks.append(Mark.of_change(e.tick, what, f"{lane.label}:", describe(what, before),
                                                  describe(what, after), lane.id))
            elif isinstance(ev, RemoveLane) and lane is not None:
                lanes.remove(lane)
                self._marks.append(Mark(e.tick, f"− {lane.label}"))
                changed = True
            elif isinstance(ev, Reset):  # what came before it is gone from the page
                self.origin = batch.origin = e.tick
                batch.reset, batch.records = True, {}
                self._marks = [Mark(e.tick, "reset")]
        if changed:
            self._set_lanes(lanes)


def _wrapped(lane: Lane, schedules: Any, clip: Any, batch_size: Any) -> LaneConfig:
    return LaneConfig(lane.optimizer, lane.values(), schedules, clip, batch_size)


def _change(ev: Any, cfg: LaneConfig) -> tuple[str, Any]:
    if isinstance(ev, SetSchedule):
        return "schedule", cfg.schedules.get(ev.name)
    if isinstance(ev, SetClip):
        return "clip", cfg.clip
    return "batch", cfg.batch_size
