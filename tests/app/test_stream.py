"""What the live pump sends the page (issue 16, streaming): per-pixel curve decimation that keeps the
picture exactly, per-record medians, and a pump that hands every record to every view, in order,
with the race's picture updated every few pumps while the race runs. Cheap: no worker, no server."""

from __future__ import annotations

import math
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
from bokeh.document import Document
from bokeh.models import ColumnDataSource

import app.explorer as explorer_module
from app.batch import Batch, Mark
from app.explorer import Explorer
from app.stream import decimate, keep_rows, medians, merge, stream_capped
from app.views.curves import LossView
from engine.records import OracleCounts, Record, make_record


def record(tick: int, loss: list[float], lane: int = 0, optimizer: str = "sgd",
           status: tuple[str, ...] | None = None) -> Record:
    return make_record(tick=tick, lane=lane, optimizer=optimizer, step=tick, loss=loss, grad_norm=loss,
                       update_norm=[0.0] * len(loss), position=None, hyperparameters={},
                       counts=OracleCounts(gradients=tick), status=status or ("running",) * len(loss),
                       wall_time=0.1 * tick)


def reference_rows(x: list[float], y: list[float], buckets: int) -> list[int]:
    """keep_rows by hand: a loop over the rows, one bucket at a time."""
    n = len(x)
    if n <= 2 * buckets + 2:
        return list(range(n))
    keep = {0, n - 1}
    finite = [math.isfinite(v) for v in y]
    for i in range(n):  # the ends of every run of non-finite values
        if not finite[i] and ((i > 0 and finite[i - 1]) or (i < n - 1 and finite[i + 1])):
            keep.add(i)
    width = (x[-1] - x[0]) / buckets
    for b in range(buckets):
        rows = [i for i in range(n) if finite[i] and min(int((x[i] - x[0]) / width), buckets - 1) == b]
        if rows:
            keep.add(min(rows, key=lambda i: (y[i], i)))
            keep.add(max(rows, key=lambda i: (y[i], -i)))
    return sorted(keep)


def test_decimation_keeps_the_ends_the_gaps_and_each_buckets_extremes_exactly() -> None:
    # by hand: 20 rows, 4 buckets of 5 steps; a NaN gap at rows 7-9
    x = list(range(20))
    y = [5, 3, 9, 4, 6, 2, 8, math.nan, math.nan, math.nan, 7, 1, 3, 3, 9, 4, 6, 0, 5, 2]
    # buckets' (min, max) rows: (1, 2), (5, 6), (11, 14), (17, 16); the gap opens at 7, closes at 9
    want = [0, 1, 2, 5, 6, 7, 9, 11, 14, 16, 17, 19]
    assert keep_rows(x, y, 4).tolist() == want
    rng = np.random.default_rng(7)
    for n, buckets in ((1000, 30), (257, 64), (50, 7)):
        xs = np.cumsum(rng.integers(1, 4, n)).astype(float).tolist()  # uneven steps (another x-axis)
        ys = np.exp(rng.normal(size=n)).tolist()
        for i in rng.choice(n, 15, replace=False):
            ys[i] = float(rng.choice([math.nan, math.inf]))
        assert keep_rows(xs, ys, buckets).tolist() == reference_rows(xs, ys, buckets)
    assert keep_rows([0, 1, 2], [1, 2, 3], 1).tolist() == [0, 1, 2]  # small enough: every row


def test_decimate_keeps_every_column_of_the_kept_rows() -> None:
    data = {"step": list(range(40)), "loss": [float((7 * i) % 11) for i in range(40)],
            "optimizer": [f"o{i}" for i in range(40)]}
    out = decimate(data, "step", "loss", buckets=4)
    idx = reference_rows(data["step"], data["loss"], 4)
    assert out == {k: [v[i] for i in idx] for k, v in data.items()}
    assert len(idx) < 40


def test_a_source_is_streamed_to_until_its_limit_then_compacted() -> None:
    src = ColumnDataSource({"step": [], "loss": []})
    doc = Document()
    doc.add_root(src)
    sent: list[str] = []  # what the page is sent: streamed rows, or the whole data
    doc.on_change(lambda event: sent.append(type(event).__name__))
    rows = {"step": list(range(10)), "loss": [1.0] * 10}
    assert not stream_capped(src, rows, "step", "loss", limit=20, buckets=4)
    assert not stream_capped(src, {k: v[:10] for k, v in rows.items()}, "step", "loss", limit=20, buckets=4)
    assert src.data["step"] == [*range(10), *range(10)]
    assert sent == ["ColumnsStreamedEvent"] * 2
    big = {"step": list(range(20, 30)), "loss": [float(i % 3) for i in range(10)]}
    before = {k: list(v) for k, v in src.data.items()}
    assert stream_capped(src, big, "step", "loss", limit=20, buckets=4)
    merged = {k: before[k] + big[k] for k in before}
    assert src.data == decimate(merged, "step", "loss", 4)
    assert sent == ["ColumnsStreamedEvent"] * 2 + ["ColumnDataChangedEvent"]  # whole data, no stream
    assert len(src.data["step"]) <= 2 * 4 + 2


def test_medians_over_starts_leave_out_non_finite_rows() -> None:
    recs = [record(0, [1.0, 3.0, math.nan]), record(1, [math.inf, 4.0, 2.0]), record(2, [math.nan] * 3)]
    got = medians(recs, "loss")
    assert got[:2].tolist() == [2.0, 3.0] and math.isnan(got[2])
    one = medians([record(0, [5.0]), record(1, [-math.inf])], "loss")
    assert one[0] == 5.0 and math.isnan(one[1])
    mixed = medians([record(0, [1.0, 2.0]), record(1, [7.0])], "loss")  # the starts changed mid-batch
    assert mixed.tolist() == [1.5, 7.0]


def test_merged_batches_keep_every_record_in_order_and_a_reset_drops_what_came_before() -> None:
    a = Batch(records={0: [record(1, [1.0])], 1: [record(1, [2.0])]}, marks=[Mark(1, "x")])
    b = Batch(records={0: [record(2, [1.0]), record(3, [1.0])]}, marks=[Mark(3, "y")])
    into = merge(merge(Batch(), a), b)
    assert [r.tick for r in into.records[0]] == [1, 2, 3] and [r.tick for r in into.records[1]] == [1]
    assert [m.label for m in into.marks] == ["x", "y"]
    c = Batch(records={1: [record(9, [1.0])]}, reset=True, origin=9)
    merge(into, c)
    assert into.reset and into.origin == 9 and list(into.records) == [1] and into.marks == []


class FakeView:
    def __init__(self, area: str, applies: bool = True) -> None:
        self.area, self.seen, self.cleared = area, {}, 0  # lane -> ticks consumed
        self.refreshed, self._applies = 0, applies

    def applies(self) -> bool:
        return self._applies

    def refresh(self) -> None:
        self.refreshed += 1

    def consume(self, batch: Batch) -> None:
        for lane, recs in batch.records.items():
            self.seen.setdefault(lane, []).extend(r.tick for r in recs)

    def clear(self) -> None:
        self.cleared += 1


def _pumped(batches: list[Batch], running: list[bool], counted: list[int] | None = None,
            tabs: tuple[FakeView, ...] = ()) -> tuple[FakeView, FakeView, list[int]]:
    """Explorer.pump itself, on a stand-in explorer whose session drains ``batches`` one per pump;
    ``counted`` gets the pumps (from 1) that updated the step counter outside the refresh turns;
    ``tabs``: instrument views, the first one's tab open."""
    curves, race = FakeView("curves"), FakeView("race")
    queue = list(batches)
    session = SimpleNamespace(drain=lambda: queue.pop(0), running=True)
    ex = SimpleNamespace(_closed=False, _connected=lambda: True, session=session, _pumps=0, _later={},
                         _counted_at=0.0, views=[curves, race, *tabs], _hold=lambda: nullcontext(),
                         _refresh=lambda part: None, _tab=lambda: tabs[0] if tabs else None)
    ex._update_counter = lambda: counted is not None and counted.append(ex._pumps)
    moved = []
    for now in running:
        session.running = now
        moved.append(Explorer.pump(ex))  # type: ignore[arg-type]
    return curves, race, moved


def test_the_pump_sends_every_record_in_order_and_the_race_picture_every_few_pumps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explorer_module, "RACE_EVERY", 3)
    batches = [Batch(records={0: [record(t, [1.0])], 1: [record(t, [1.0], lane=1)]}) for t in range(7)]
    curves, race, moved = _pumped(batches, [True] * 7)
    assert moved == [2] * 7 and curves.seen == {0: [*range(7)], 1: [*range(7)]}  # each once, in order
    assert race.seen == {0: [*range(6)], 1: [*range(6)]}  # pumps 3 and 6: what pumps 1-3 and 4-6 drained
    # paused (a single step, a presenter), the picture is sent at once, with what waited, and the
    # step counter shows the step at that pump; running, the counter moves by the clock (COUNTER_S:
    # the first pump, then none of the next three, which come within it here)
    monkeypatch.setattr(explorer_module, "COUNTER_S", 60.0)
    counted: list[int] = []
    curves, race, _ = _pumped(batches[:5], [True, True, True, True, False], counted)
    assert race.seen == curves.seen == {0: [*range(5)], 1: [*range(5)]}
    assert counted == [1, 5]
    # however few the pumps (throttled under load), each that moves records once COUNTER_S has passed
    # updates the counter: it used to wait for its turn, one pump in REFRESH_EVERY (~4 s under load)
    monkeypatch.setattr(explorer_module, "COUNTER_S", 0.0)
    counted = []
    _pumped(batches[:4], [True] * 4, counted)
    assert counted == [1, 2, 3, 4]
    # a reset: every view clears, and what the picture had not been sent is dropped
    reset = Batch(records={0: [record(9, [1.0])]}, reset=True, origin=9)
    curves, race, _ = _pumped([batches[0], batches[1], reset], [True] * 3)
    assert race.cleared == curves.cleared == 1 and race.seen == {0: [9]}


def test_an_instrument_whose_tab_is_closed_gets_every_record_every_few_pumps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While the race runs, an instrument in a closed tab is sent what REFRESH_EVERY pumps drained, all
    of it in order; the open tab's instrument every pump; paused, every view at once."""
    monkeypatch.setattr(explorer_module, "REFRESH_EVERY", 4)
    monkeypatch.setattr(explorer_module, "RACE_EVERY", 3)
    batches = [Batch(records={0: [record(t, [1.0])]}) for t in range(10)]
    shown, hidden = FakeView("instrument"), FakeView("instrument")
    seen = []
    hidden.consume = lambda batch: seen.append([r.tick for r in batch.records[0]])  # type: ignore[method-assign]
    _pumped(batches, [True] * 9 + [False], tabs=(shown, hidden))
    assert shown.seen == {0: [*range(10)]}
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # pumps 4 and 8, then the paused pump 10


class _Lane:
    id, slot, label, color = 5, 0, "SGD", "#000"
    _loss_title_watch = True  # no lane card here to watch


def test_a_long_curve_stays_a_few_points_per_pixel_with_its_extremes(monkeypatch: pytest.MonkeyPatch) -> None:
    """LossView over 3,000 records of one lane, streamed 100 at a time, with a limit of 400 rows:
    the source never holds more, starts at the first step, ends at the last, and keeps the lowest
    and highest loss and the gap where the lane switched optimizer."""
    monkeypatch.setattr("app.stream.CURVE_LIMIT", 400)
    monkeypatch.setattr("app.stream.PIXELS", 100)
    session = SimpleNamespace(origin=0, lanes=[_Lane()], latest={})
    view = LossView(session, lambda text: None)
    view.show_lanes([_Lane()])
    rng = np.random.default_rng(3)
    losses = np.exp(rng.normal(size=3000))
    losses[1234], losses[2345] = 1e-9, 1e9
    src = view.slots.sources[0]
    held = []
    for start in range(0, 3000, 100):
        name = "sgd" if start < 1500 else "adam"
        recs = [record(t, [float(losses[t])], lane=5, optimizer=name) for t in range(start, start + 100)]
        view.consume(Batch(records={5: recs}))
        held.append(len(src.data["step"]))
    steps, loss = src.data["step"], src.data["loss"]
    assert max(held) <= 400 and steps[0] == 0 and steps[-1] == 2999
    assert 1e-9 in loss and 1e9 in loss
    gap = [i for i, v in enumerate(loss) if math.isnan(v)]
    assert len(gap) == 1 and src.data["optimizer"][gap[0]] == "adam" and steps[gap[0]] == 1500
    assert steps == sorted(steps)


def test_each_pump_refreshes_its_share_and_every_view_on_screen_is_refreshed_once_per_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explorer_module, "REFRESH_EVERY", 4)
    views = [FakeView("race"), FakeView("curves"), FakeView("race", applies=False), FakeView("status"),
             FakeView("instrument"), FakeView("instrument"), FakeView("instrument")]
    counted = {"sidebar": 0, "counter": 0}

    def count(name: str) -> None:
        counted[name] += 1
    ex = SimpleNamespace(views=views, _area=lambda area: [v for v in views if v.area == area],
                         instruments=SimpleNamespace(active=1),
                         sidebar=SimpleNamespace(refresh=lambda: count("sidebar")),
                         _update_counter=lambda: count("counter"))
    done = []
    for part in range(4):
        before = sum(v.refreshed for v in views) + sum(counted.values())
        Explorer._refresh(ex, part)  # type: ignore[arg-type]
        done.append(sum(v.refreshed for v in views) + sum(counted.values()) - before)
    # on screen: race, curves, status, the active (second) instrument tab; then sidebar and counter
    assert [v.refreshed for v in views] == [1, 1, 0, 1, 0, 1, 0] and counted == {"sidebar": 1, "counter": 1}
    assert done == [2, 2, 1, 1]  # six redraws over four pumps: never all in one
    Explorer._refresh(ex)  # type: ignore[arg-type]  # all at once (a tab was switched)
    assert [v.refreshed for v in views] == [2, 2, 0, 2, 0, 2, 0] and counted == {"sidebar": 2, "counter": 2}
