r"""Export a run: its records as a table, with everything needed to reproduce them, to Parquet (and
JSON on request).

A record (one lane at one step, :class:`engine.records.Record`) becomes M rows, one per start, in
:func:`records_frame`. :func:`run_metadata` gathers what the records alone cannot say: the
problem and its parameters, the :class:`engine.run.RunConfig`, the event log
(:meth:`engine.run.Run.event_log`), package versions, device, dtype and a timestamp. Since a run is
a deterministic function of (problem, config, event log), :func:`replay_log` re-runs it and gets
the same records (on the same device; CPU is exact); :func:`export_log` does that and writes the
files, reporting progress (``progress(fraction, message)``) and stopping between pieces of work when
its thread's work is cancelled (:func:`engine.cancel.checkpoint` raises :class:`engine.cancel.Cancelled`),
leaving no file behind.

Files (:func:`export_run`):

* ``<stem>.parquet``: the table (zstd-compressed columns: ~1 MB for 4,400 steps of 3 lanes with
  curvature probes), with the metadata as one JSON string under the key ``b"optiscope"`` of the
  Parquet schema metadata (``pyarrow.parquet.read_table(path).schema.metadata[b"optiscope"]``).
* ``<stem>.meta.json``: the same metadata, for a reader without Parquet.
* ``<stem>.json``, only on request (about ten times the Parquet size): one document
  ``{"metadata": ..., "columns": {name: pandas dtype}, "records": [row, ...]}``, one object per
  table row. JSON has no NaN or infinity, so non-finite floats are written as the strings
  ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (the spellings of JavaScript's ``Number()``) and
  the file is strict JSON; :func:`read_export` turns them back into floats (``"columns"`` says
  which columns are numeric). ``None`` (a value that does not exist, e.g. a hyperparameter another
  lane's optimizer lacks) is ``null``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from engine.cancel import checkpoint
from engine.events import LoggedEvent
from engine.problem import Problem
from engine.records import OracleCounts, Record, statuses
from engine.run import Run, RunConfig

FORMAT = "optiscope-export"
FORMAT_VERSION = 1
PARQUET_KEY = b"optiscope"
"""The key of the Parquet schema metadata that holds :func:`run_metadata` as JSON."""

COUNT_COLUMNS = tuple(f.name for f in dataclasses.fields(OracleCounts))
PROBE_SCALARS = ("lambda_max", "lambda_max_residual", "directional", "sharpness", "threshold",
                 "preconditioned", "trace", "trace_stderr", "noise_scale", "norm_test", "estimate_cosine",
                 "estimate_cosine_full")
"""Curvature probe fields exported as float columns (on the row of start 0: a probe measures the
first start of its lane; NaN on the other starts and on steps without a probe)."""
PACKAGES = {"torch": "torch", "numpy": "numpy", "pytorch_optimizer": "pytorch-optimizer",
            "pandas": "pandas", "pyarrow": "pyarrow"}
"""Exported package versions: name in the metadata -> distribution name."""

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# -- records -> table -------------------------------------------------------------------------------

def _plain_value(v: Any) -> Any:
    """A hyperparameter value as a plain Python scalar (optimizers may hold numpy or tensor scalars)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _typed_column(values: list[Any]) -> np.ndarray:
    """One column from per-row values with ``None`` where a row has none: bool (object with None
    when some are missing), int64, float64 (NaN where missing) or, for anything else, strings."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool | np.bool_) for v in present):
        if len(present) == len(values):
            return np.array(values, dtype=bool)
        return np.array([None if v is None else bool(v) for v in values], dtype=object)
    if all(isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
           for v in present):
        if present and len(present) == len(values) and all(isinstance(v, int | np.integer) for v in present):
            return np.array(values, dtype=np.int64)
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.array([None if v is None else str(v) for v in values], dtype=object)


def records_frame(records: Sequence[Record]) -> pd.DataFrame:
    """One row per (record, start): ``tick, lane, optimizer, step, start, loss, grad_norm,
    update_norm``, the position ``x0..x{d-1}`` (when records carry positions), the oracle counts
    per trajectory (``function_values, gradients, hvps, jvps, rankings``), ``status``,
    ``wall_time`` (the run's compute seconds), ``compute_time`` (the lane's own, instruments
    excluded), ``batch_size`` (networks with a controlled batch size; -1 where the problem's own),
    the live (scheduled) hyperparameters as ``hp_<name>`` (missing where a lane's optimizer lacks
    one), the problem metrics as ``metric_<name>`` (NaN off their schedule), the optimizer's and
    the run's diagnostics as ``diag_<name>`` (e.g. ``diag_clipped_fraction``) and, when any record
    has a curvature probe, its fields (on start 0's row: see ``PROBE_SCALARS``) with ``top_k`` and
    ``exact`` eigenvalues as lists."""
    records = list(records)
    m = np.array([len(r.loss) for r in records], dtype=np.int64)

    def per_record(values: list[Any], dtype: Any) -> np.ndarray:
        return np.repeat(np.array(values, dtype=dtype), m)

    def per_row(arrays: list[np.ndarray], dtype: Any = np.float64) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)

    cols: dict[str, Any] = {
        "tick": per_record([r.tick for r in records], np.int64),
        "lane": per_record([r.lane for r in records], np.int64),
        "optimizer": per_record([r.optimizer for r in records], object),
        "step": per_record([r.step for r in records], np.int64),
        "start": per_row([np.arange(k) for k in m], np.int64),
        "loss": per_row([r.loss for r in records]),
        "grad_norm": per_row([r.grad_norm for r in records]),
        "update_norm": per_row([r.update_norm for r in records]),
    }
    dims = [r.position.shape[1] for r in records if r.position is not None]
    if dims:
        d = max(dims)
        pos = per_row([r.position if r.position is not None else np.full((k, d), np.nan)
                       for r, k in zip(records, m, strict=True)])
        for j in range(d):
            cols[f"x{j}"] = pos[:, j] if pos.size else np.zeros(0)
    for name in COUNT_COLUMNS:
        cols[name] = per_record([getattr(r.counts, name) for r in records], np.int64)
    cols["status"] = per_row([statuses(r.diverged_at, r.reasons, r.stopped) for r in records], object)
    cols["wall_time"] = per_record([r.wall_time for r in records], np.float64)
    cols["compute_time"] = per_record([r.compute_time for r in records], np.float64)
    if any(r.batch_size is not None for r in records):
        cols["batch_size"] = per_record([-1 if r.batch_size is None else r.batch_size for r in records],
                                        np.int64)

    hp_names = list(dict.fromkeys(k for r in records for k in r.hyperparameters))
    for name in hp_names:
        values = [_plain_value(r.hyperparameters.get(name)) for r in records]
        cols[f"hp_{name}"] = np.repeat(_typed_column(values), m)
    metric_names = list(dict.fromkeys(k for r in records for k in r.metrics))
    for name in metric_names:
        cols[f"metric_{name}"] = per_row([np.asarray(r.metrics[name], dtype=np.float64) if name in r.metrics
                                          else np.full(k, np.nan) for r, k in zip(records, m, strict=True)])
    diagnostic_names = list(dict.fromkeys(k for r in records for k in r.diagnostics))
    for name in diagnostic_names:
        cols[f"diag_{name}"] = per_row([np.asarray(r.diagnostics[name], dtype=np.float64)
                                        if name in r.diagnostics else np.full(k, np.nan)
                                        for r, k in zip(records, m, strict=True)])
    if any(r.curvature is not None for r in records):
        cols.update(_probe_columns(records, m))
    return pd.DataFrame(cols)


def _probe_columns(records: list[Record], m: np.ndarray) -> dict[str, Any]:
    first = np.concatenate([np.arange(k) == 0 for k in m])  # the row of start 0 of each record
    probes = [r.curvature for r in records]
    n = int(m.sum())
    out: dict[str, Any] = {}

    def spread(values: list[Any], fill: Any, dtype: Any) -> np.ndarray:
        col = np.full(n, fill, dtype=dtype)
        col[first] = np.array(values, dtype=dtype) if dtype is not object else _objects(values)
        return col

    nan = math.nan
    out["probe_step"] = spread([p.step if p is not None else -1 for p in probes], -1, np.int64)
    for name in PROBE_SCALARS:
        if name == "threshold":
            values = [p.threshold.value if p is not None and p.threshold is not None else nan for p in probes]
        else:
            values = [getattr(p, name) if p is not None else nan for p in probes]
        out[name] = spread([nan if v is None else float(v) for v in values], nan, np.float64)
    out["threshold_quantity"] = spread(
        [p.threshold.quantity if p is not None and p.threshold is not None else None for p in probes],
        None, object)
    out["probe_hvps"] = spread([p.hvps if p is not None else 0 for p in probes], 0, np.int64)
    out["probe_seconds"] = spread([p.seconds if p is not None else nan for p in probes], nan, np.float64)
    for name in ("top_k", "exact", "grad_variance", "grad_snr", "gsnr"):
        out[name] = spread([np.asarray(getattr(p, name), dtype=np.float64)
                            if p is not None and getattr(p, name) is not None else None for p in probes],
                           None, object)
    return out


def _objects(values: list[Any]) -> np.ndarray:
    a = np.empty(len(values), dtype=object)
    a[:] = values  # element-wise: arrays stay whole cells
    return a


# -- metadata -----------------------------------------------------------------------------------------

def _version(dist: str) -> str | None:
    try:
        return importlib_metadata.version(dist)
    except importlib_metadata.PackageNotFoundError:
        return None


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {name: _version(dist) for name, dist in PACKAGES.items()}
    versions["python"] = platform.python_version()
    return versions


def problem_metadata(problem: Problem) -> dict[str, Any]:
    """Name, title, dimension, the factory parameters (``problem.params``, e.g. ``{"dim": 5}``),
    bounds and known minima of ``problem``."""
    bounds = getattr(problem, "bounds", None)
    return {
        "name": problem.name,
        "title": getattr(problem, "title", problem.name),
        "dim": int(problem.dim),
        "params": {str(k): _plain(v) for k, v in getattr(problem, "params", ())},
        "bounds": None if bounds is None else {"low": list(bounds.low), "high": list(bounds.high)},
        "minima": [{"x": list(mn.x), "value": mn.value, "is_global": mn.is_global}
                   for mn in getattr(problem, "minima", ())],
    }


def _device_metadata(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor()
                                                                             or platform.machine())
    return {"type": device.type, "device": str(device), "name": name,
            "cuda": torch.version.cuda if device.type == "cuda" else None}


def run_metadata(run: Run) -> dict[str, Any]:
    """Everything about ``run`` that its records do not carry (plain JSON-able data)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "problem": problem_metadata(run.problem),
        "config": run.config.to_dict(),
        "event_log": run.event_log(),
        "versions": package_versions(),
        "device": _device_metadata(run.device),
        "dtype": run.config.dtype,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ticks": run.tick,
        "compute_time": run.compute_time,
        "probe_time": run.probe_time,
    }


# -- JSON encoding ----------------------------------------------------------------------------------

def _plain(obj: Any) -> Any:
    """``obj`` as strict-JSON data: mappings -> dicts, sequences and arrays -> lists, numpy/torch
    scalars -> Python scalars, non-finite floats -> "NaN" / "Infinity" / "-Infinity"."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray | torch.Tensor):
        return _plain(obj.tolist())
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    return obj


def _restore(obj: Any) -> Any:
    """Inverse of :func:`_plain`'s float encoding (recursively)."""
    if isinstance(obj, dict):
        return {k: _restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v) for v in obj]
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(_plain(obj), allow_nan=False)  # strict JSON: a NaN that slipped through raises


# -- progress and cancellation ----------------------------------------------------------------------

Progress = Callable[[float, str], None]
"""Told ``(fraction done in [0, 1], what is happening)`` as an export proceeds; never goes back."""
REPLAY_CHUNK = 64
"""Ticks replayed between two progress reports and cancellation checks (a few ms to ~0.2 s)."""
JSON_CHUNK = 2000
"""Table rows written to JSON between two reports and checks."""


@dataclass(frozen=True)
class _Report:
    """Progress of one piece of an export, mapped into ``[lo, hi]`` of the whole, and the
    cancellation check between pieces."""

    progress: Progress | None = None
    lo: float = 0.0
    hi: float = 1.0

    def __call__(self, fraction: float, message: str) -> None:
        if self.progress is not None:
            self.progress(self.lo + (self.hi - self.lo) * min(max(fraction, 0.0), 1.0), message)

    @staticmethod
    def check() -> None:
        checkpoint()

    def part(self, a: float, b: float) -> _Report:
        """The sub-range ``[a, b]`` of this piece."""
        span = self.hi - self.lo
        return dataclasses.replace(self, lo=self.lo + span * a, hi=self.lo + span * b)


# -- replay -------------------------------------------------------------------------------------------

def replay_log(problem: Problem, log: Mapping[str, Any], *, device: str | None = None,
               progress: Progress | None = None,
               chunk: int = REPLAY_CHUNK) -> tuple[Run, list[Record]]:
    """:meth:`engine.run.Run.replay` of an event log (``{"problem", "config", "events", "ticks"}``,
    as :meth:`engine.run.Run.event_log` gives), taken ``chunk`` ticks at a time: progress is reported
    and cancellation checked between chunks (:func:`engine.cancel.checkpoint`). The same
    steps in the same order as ``Run.replay``, so the same records (exactly, on CPU). ``device``
    overrides the config's."""
    if log["problem"] != problem.name:
        raise ValueError(f"the export is of problem {log['problem']!r}, not {problem.name!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    config = RunConfig.from_dict(log["config"])
    if device is not None:
        config = dataclasses.replace(config, device=device)
    events = [LoggedEvent.from_dict(e) for e in log["events"]]
    ticks = int(log["ticks"])
    report = _Report(progress)
    report.check()
    run = Run(problem, config)
    run.schedule(events)
    records: list[Record] = []
    while run.tick < ticks:
        records += run.run(min(chunk, ticks - run.tick))
        report(run.tick / ticks, f"replayed {run.tick:,} of {ticks:,} steps")
        report.check()
    report(1.0, f"replayed {ticks:,} steps")
    return run, records


# -- writers and readers ----------------------------------------------------------------------------

@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed to ``path`` only when the writing
    finished, removed otherwise (a cancelled or failed export leaves no partial file)."""
    part = path.with_name(f".{path.name}.part")
    try:
        yield part
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def _frame(records: Sequence[Record] | pd.DataFrame) -> pd.DataFrame:
    return records if isinstance(records, pd.DataFrame) else records_frame(records)


def export_parquet(run: Run, records: Sequence[Record] | pd.DataFrame, path: str | Path, *,
                   progress: Progress | None = None) -> Path:
    """Write the records of ``run`` (or their :func:`records_frame`) to ``path`` as Parquet
    (zstd-compressed columns), with :func:`run_metadata` as JSON under the schema metadata key
    ``b"optiscope"``."""
    path, report = Path(path), _Report(progress)
    report.check()
    frame = _frame(records)
    report(0.5, "writing Parquet")
    report.check()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           PARQUET_KEY: _dumps(run_metadata(run)).encode()})
    with _atomic(path) as part:
        pq.write_table(table, part, compression="zstd")
    report(1.0, f"wrote {path.name}")
    return path


def _json_column(col: pd.Series) -> list[Any]:
    """A column as strict-JSON values (see :func:`_plain`), converted a column at a time."""
    values = col.to_numpy()
    if values.dtype.kind == "f":
        out = values.tolist()
        for i in np.flatnonzero(~np.isfinite(values)):
            out[i] = _plain(out[i])
        return out
    if values.dtype.kind in "iub":
        return values.tolist()
    return [_plain(v) for v in values]


def export_json(run: Run, records: Sequence[Record] | pd.DataFrame, path: str | Path, *,
                progress: Progress | None = None) -> Path:
    """Write ``{"metadata", "columns", "records"}`` (see the module docstring) to ``path``, one
    object per table row: every value of every record, for tools that read no Parquet (about ten
    times the size of the Parquet file)."""
    path, report = Path(path), _Report(progress)
    report.check()
    frame = _frame(records)
    names = [str(c) for c in frame.columns]
    columns = [_json_column(frame[c]) for c in frame.columns]
    head = {"metadata": run_metadata(run), "columns": {c: str(t) for c, t in frame.dtypes.items()}}
    n = len(frame)
    with _atomic(path) as part, part.open("w") as f:
        f.write(_dumps(head)[:-1] + ', "records": [')
        for begin in range(0, n, JSON_CHUNK):
            report.check()
            rows = [dict(zip(names, row, strict=True))
                    for row in zip(*(c[begin:begin + JSON_CHUNK] for c in columns), strict=True)]
            f.write((", " if begin else "") + json.dumps(rows, allow_nan=False)[1:-1])
            done = min(begin + JSON_CHUNK, n)
            report(done / n, f"wrote {done:,} of {n:,} rows as JSON")
        f.write("]}")
    report(1.0, f"wrote {path.name}")
    return path


def export_run(run: Run, records: Sequence[Record], directory: str | Path, stem: str | None = None, *,
               json: bool = False, progress: Progress | None = None
               ) -> dict[str, Path]:
    """The records as ``<stem>.parquet`` with the run's metadata (config, event log, versions,
    device) in it and beside it as ``<stem>.meta.json``; with ``json=True`` also every record as
    ``<stem>.json``. In ``directory`` (created if needed); the stem defaults to
    ``<problem>-<UTC time>``. Cancelled or failed, it removes what it wrote."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{run.problem.name}-{datetime.datetime.now(datetime.UTC):%Y%m%d-%H%M%S}"
    report = _Report(progress)
    written: dict[str, Path] = {}
    try:
        report.check()
        frame = records_frame(records)
        report(0.1, "records as a table")
        written["parquet"] = export_parquet(run, frame, directory / f"{stem}.parquet",
                                            progress=report.part(0.1, 0.3 if json else 0.95))
        report.check()
        with _atomic(directory / f"{stem}.meta.json") as part:
            part.write_text(_dumps(run_metadata(run)))
        written["metadata"] = directory / f"{stem}.meta.json"
        if json:
            written["json"] = export_json(run, frame, directory / f"{stem}.json",
                                          progress=report.part(0.3, 0.99))
    except BaseException:
        for path in written.values():
            path.unlink(missing_ok=True)
        raise
    report(1.0, f"exported {len(frame):,} rows")
    return written


@dataclass(frozen=True)
class Exported:
    """What :func:`export_log` made: the files, and the replayed run and its records (for pictures)."""

    files: dict[str, Path]
    run: Run
    records: list[Record]


def export_log(problem: Problem, log: Mapping[str, Any], directory: str | Path, stem: str | None = None, *,
               json: bool = False, device: str | None = None, progress: Progress | None = None
               ) -> Exported:
    """Replay an event log (:func:`replay_log`) and export every record (:func:`export_run`), with
    progress over both (the replay is most of the time) and cancellation between pieces: what an
    app does when a user asks for a download. Cancelled, it raises :class:`engine.cancel.Cancelled`
    and leaves no file."""
    report = _Report(progress)
    run, records = replay_log(problem, log, device=device, progress=report.part(0.0, 0.9))
    files = export_run(run, records, directory, stem, json=json, progress=report.part(0.9, 1.0))
    return Exported(files, run, records)


def _is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    if path.suffix.lower() == ".json":
        return False
    with path.open("rb") as f:
        return f.read(4) == b"PAR1"


def read_export(path: str | Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(metadata, table)`` from a file written by :func:`export_parquet` or :func:`export_json`."""
    path = Path(path)
    if _is_parquet(path):
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(PARQUET_KEY)
        if raw is None:
            raise ValueError(f"{path}: a Parquet file without Optiscope metadata (key {PARQUET_KEY!r})")
        return _restore(json.loads(raw)), table.to_pandas()
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or not {"metadata", "columns", "records"} <= set(doc):
        raise ValueError(f"{path}: not an Optiscope JSON export (needs metadata, columns and records)")
    columns: dict[str, str] = doc["columns"]
    frame = pd.DataFrame(doc["records"], columns=list(columns))
    for name, dtype in columns.items():
        col = frame[name]
        if dtype == "object":
            frame[name] = _objects([_restore_cell(v) for v in col])
        else:
            frame[name] = pd.Series([_restore(v) for v in col], index=frame.index, dtype=object).astype(dtype)
    return _restore(doc["metadata"]), frame


def _restore_cell(v: Any) -> Any:
    """An object cell: a list of numbers (eigenvalues) becomes a float array, as Parquet gives."""
    v = _restore(v)
    if isinstance(v, list):
        return np.asarray(v, dtype=np.float64)
    return v


def replay_export(source: str | Path | Mapping[str, Any], problem: Problem, *, device: str | None = None,
                  progress: Progress | None = None) -> list[Record]:
    """The records of an exported run, recomputed (:func:`replay_log` of the exported config and
    event log) on ``problem``, which must be the exported problem: same name and parameters.
    ``device`` overrides the config's (``"cpu"`` for an exact replay of a CPU run exported from a
    machine with a GPU and device ``"auto"``)."""
    meta = dict(source) if isinstance(source, Mapping) else read_export(source)[0]
    log = meta["event_log"]
    if log["problem"] != problem.name:
        raise ValueError(f"the export is of problem {log['problem']!r}, not {problem.name!r}")
    exported = meta.get("problem", {}).get("params", {})
    given = _plain({str(k): v for k, v in getattr(problem, "params", ())})
    if exported != given:
        raise ValueError(f"{problem.name}: the export has parameters {exported}, "
                         f"the problem given has {given}")
    return replay_log(problem, log, device=device, progress=progress)[1]
