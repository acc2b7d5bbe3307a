"""Results as data: one table, one row per trial (configuration x seed x start), plus the spec.

Columns: ``problem, problem_options`` (JSON), ``entry`` (the optimizer entry's label),
``optimizer, config`` (index in the entry's configurations; 0 is the defaults when included),
``is_default, hyperparameters`` (JSON) and one ``hp_<name>`` column each, ``lane_options`` (JSON),
``seed`` (the run seed), ``start`` (the row of that run), ``starts`` (rows per run), ``start_point``
(JSON or null: row 0's start), ``target``; outcomes ``final_loss, best_loss, steps, units``
(oracle units spent) and the per-trajectory oracle counts ``function_values, gradients, hvps,
jvps, rankings``; ``steps_to_target, units_to_target, seconds_to_target`` (-1 / NaN when not
reached), ``diverged_at`` (-1 when not), ``wall_time`` (seconds of its lane: a batched run's time
is shared equally among the lanes stepping), ``device, dtype, run_device``, ``fused``
(``RunConfig.fused`` of its race: False where seeds were rows of one Run) and ``versions`` (JSON).

A Parquet file holds the table with the spec and metadata as JSON under the schema metadata key
``b"optiscope-experiment"``. :func:`row_to_race` turns any row back into a race.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from engine.experiments.spec import Configuration, ExperimentSpec
from engine.run import RunConfig

PARQUET_KEY = b"optiscope-experiment"
KEY_COLUMNS = ("problem", "entry", "config", "seed", "start")
"""One trial: these identify a row; a finished experiment has each combination exactly once."""


@dataclass
class ExperimentResult:
    """The table (``frame``), the spec it came from, and metadata (versions, timestamps,
    ``complete``: whether every trial is in the table)."""

    spec: ExperimentSpec
    frame: pd.DataFrame
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.metadata.get("complete", False))

    def to_parquet(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        meta = {"spec": self.spec.to_dict(), **self.metadata}
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), PARQUET_KEY: json.dumps(meta, default=str).encode()}
        )
        tmp = path.with_name(path.name + ".partial")
        pq.write_table(table, tmp)
        tmp.replace(path)  # a reader never sees half a file
        return path

    @staticmethod
    def read_parquet(path: str | Path) -> ExperimentResult:
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(PARQUET_KEY)
        if raw is None:
            raise ValueError(f"{path}: not an Optiscope experiment (no {PARQUET_KEY!r} metadata)")
        meta = json.loads(raw)
        spec = ExperimentSpec.from_dict(meta.pop("spec"))
        return ExperimentResult(spec, table.to_pandas(), meta)


def frame_from_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table from result rows, sorted by trial, with the key columns first."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(KEY_COLUMNS))
    frame = frame.sort_values(list(KEY_COLUMNS), kind="stable").reset_index(drop=True)
    first = [c for c in KEY_COLUMNS if c in frame]
    return frame[first + [c for c in frame.columns if c not in first]]


def timestamp() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def row_to_race(
    row: Mapping[str, Any] | pd.Series, *, device: str | None = None
) -> tuple[str, dict[str, Any], RunConfig]:
    """``(problem_name, options, RunConfig)`` of the race that reproduces ``row``: its
    configuration alone, with the run's seed and starts; the row's trajectory is row ``row["start"]``
    of that race (bit for bit on CPU). ``device`` overrides the experiment's (``"cpu"`` for an
    exact replay of a CPU experiment on a machine with a GPU)."""
    r = dict(row)
    config = Configuration(
        r["entry"],
        r["optimizer"],
        int(r["config"]),
        json.loads(r["hyperparameters"]),
        json.loads(r["lane_options"]),
        bool(r["is_default"]),
    )
    start = r.get("start_point")
    start = None if start is None or (isinstance(start, float) and start != start) else json.loads(start)
    from engine.experiments.batching import race_config

    rc = race_config(
        config,
        seed=int(r["seed"]),
        starts=int(r["starts"]),
        start=None if start is None else tuple(start),
        device=device or r["run_device"],
        dtype=r["dtype"],
        fused=bool(r.get("fused", True)),  # tables from before the column: the default
    )
    return r["problem"], json.loads(r["problem_options"]), rc
