"""What the live pump sends the page, kept small: per-record medians as columns, and curves that stay a
few points per pixel however long the race runs. Never imports Panel.

Why: an 8-lane race at 60 steps/s adds ~1,000 curve rows a second. Streamed as they come, a
10-minute race holds ~300,000 rows per curve figure in the browser: every repaint draws them all
(the frame rate falls as the race goes on) and the page's heap grows without bound. A line drawn on
a plot ``w`` pixels wide cannot show more than its lowest and highest value in each pixel column, so
a source is compacted to those (M4-style aggregation: Jugel et al., "M4: a visualization-oriented
time series data aggregation", VLDB 2014) whenever it outgrows :data:`CURVE_LIMIT` rows: the page then
holds at most ``CURVE_LIMIT`` rows per curve, and the figure looks the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.batch import Batch
from engine.records import Record

PIXELS = 1000
"""Buckets a compaction keeps (a min and a max each): at least the curve figures' width in pixels."""
CURVE_LIMIT = 4 * PIXELS
"""Rows a curve source may hold before it is compacted to ~``2 * PIXELS`` (so a compaction, which
re-sends the whole source, comes once per ~``2 * PIXELS`` new rows of a lane)."""


def medians(records: Sequence[Record], field: str) -> np.ndarray:
    """Per record, the median over its starts of ``field`` (``"loss"``, ``"grad_norm"``), non-finite
    rows left out (NaN where none is finite): one numpy call for a lane's records, not one each."""
    if not records:
        return np.empty(0)
    first = getattr(records[0], field)
    if all(getattr(r, field).shape == first.shape for r in records):
        values = np.stack([getattr(r, field) for r in records]).astype(float, copy=False)
    else:  # the starts changed inside one batch (a new race): one record at a time
        return np.concatenate([medians([r], field) for r in records])
    values = np.where(np.isfinite(values), values, np.nan)
    if values.shape[1] == 1:
        return values[:, 0]
    with warnings.catch_warnings():  # a record whose every start diverged: NaN, as documented
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=1)


def running(record: Record) -> bool:
    """Whether any start of ``record`` still runs (its status "running"), from its columns."""
    return record.stopped is None and bool((record.diverged_at < 0).any())


def keep_rows(x: Sequence[float], y: Sequence[float], buckets: int) -> np.ndarray:
    """Indices (ascending) of the rows that draw the same line at ``buckets`` columns: the first and
    the last row, in each bucket of equal width in ``x`` the rows of its lowest and highest finite
    ``y``, and the first and last row of every run of non-finite ``y`` (the line's gaps)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(xs)
    if n <= 2 * buckets + 2:
        return np.arange(n)
    keep = np.zeros(n, dtype=bool)
    keep[[0, -1]] = True
    bad = ~np.isfinite(ys)
    keep[1:] |= bad[1:] & ~bad[:-1]  # a gap opens
    keep[:-1] |= bad[:-1] & ~bad[1:]  # a gap closes
    span = xs[-1] - xs[0]
    rows = np.flatnonzero(~bad)
    if rows.size:
        col = np.zeros(rows.size, dtype=np.int64) if not span > 0 else \
            np.clip(((xs[rows] - xs[0]) / span * buckets).astype(np.int64), 0, buckets - 1)
        order = np.lexsort((ys[rows], col))  # by bucket, then by y: each bucket's min first, max last
        b = col[order]
        first = np.r_[True, b[1:] != b[:-1]]
        last = np.r_[b[1:] != b[:-1], True]
        keep[rows[order[first]]] = True
        keep[rows[order[last]]] = True
    return np.flatnonzero(keep)


def decimate(data: Mapping[str, Sequence[Any]], x: str, y: str, buckets: int = PIXELS) -> dict[str, list]:
    """``data``'s columns at the rows :func:`keep_rows` keeps (every column, so hover text stays)."""
    idx = keep_rows(data[x], data[y], buckets).tolist()
    return {k: [v[i] for i in idx] for k, v in data.items()}


def stream_capped(source: Any, new: Mapping[str, Sequence[Any]], x: str, y: str,
                  limit: int | None = None, buckets: int | None = None) -> bool:
    """Append ``new`` rows to a ColumnDataSource, as a ``stream`` while it holds at most ``limit``
    rows (:data:`CURVE_LIMIT`), else as its whole data compacted by :func:`decimate` to ``buckets``
    (:data:`PIXELS`). Returns whether it compacted.

    Call it once per source per document message: a replaced ``data`` is serialized when the message
    is sent, so a stream after it in the same message would reach the page twice."""
    held = len(source.data[x])
    if held + len(new[x]) <= (limit or CURVE_LIMIT):
        source.stream(dict(new))
        return False
    merged = {k: [*source.data[k], *new[k]] for k in source.data}
    source.data = decimate(merged, x, y, buckets or PIXELS)
    return True


def merge(into: Batch, batch: Batch) -> Batch:
    """``batch`` appended to ``into`` (records per lane in tick order, marks in order), for views
    that are sent what several pumps drained at once. A reset empties what came before it."""
    if batch.reset:
        into.records, into.marks, into.reset = {}, [], True
    into.origin = batch.origin
    for lane_id, recs in batch.records.items():
        into.records.setdefault(lane_id, []).extend(recs)
    into.marks.extend(batch.marks)
    return into
