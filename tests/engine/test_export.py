"""Export: a real race (Rosenbrock, SGD that diverges + Adam, 2 starts, a learning-rate change
mid-run, curvature probes) written to Parquet and JSON reads back with pandas/pyarrow with its
config and event log, row for row equal to the records (infinities and NaNs included), and the
exported event log replays to the same records on CPU. An export from an event log reports
progress that only grows to 1, stops when asked leaving no file, and a 4,000-step race stays
small (Parquet only, unless JSON is asked for)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from engine.cancel import Cancelled, CancelToken, cancellable
from engine.clipping import Clip
from engine.events import SetHyperparameter
from engine.export import (
    PARQUET_KEY,
    export_json,
    export_log,
    export_parquet,
    export_run,
    read_export,
    records_frame,
    replay_export,
    replay_log,
)
from engine.instruments import ProbeConfig
from engine.records import OracleCounts, Record, make_record
from engine.run import LaneConfig, Run, RunConfig
from engine.schedules import Schedule
from landscapes import get_network
from landscapes.catalog import get_landscape

STEPS, EVENT_AT = 30, 15


@pytest.fixture(scope="module")
def race() -> tuple[Run, list[Record]]:
    problem = get_landscape("rosenbrock")
    config = RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 0.05}},
                              {"optimizer": "adam", "hyperparameters": {"lr": 0.05}}),
                       n_starts=2, seed=3, device="cpu", probes=ProbeConfig(every=7),
                       divergence_factor=None)  # diverge only at inf: the export must carry infinities
    run = Run(problem, config)
    records = run.run(EVENT_AT)
    run.apply(SetHyperparameter(lane=1, name="lr", value=0.01))
    records += run.run(STEPS - EVENT_AT)
    return run, records


@pytest.fixture(scope="module")
def files(race: tuple[Run, list[Record]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    run, records = race
    return export_run(run, records, tmp_path_factory.mktemp("export"), stem="race", json=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def test_the_race_exercises_divergence_probes_and_the_event(race: tuple[Run, list[Record]]) -> None:
    """The fixture is the case the export must survive (else the tests below prove little)."""
    _, records = race
    sgd = [r for r in records if r.lane == 0]
    assert all(s.startswith("diverged") for s in sgd[-1].status)
    assert np.isinf(sgd[-1].loss).all()
    assert any(r.curvature is not None for r in records)
    assert [r.hyperparameters["lr"] for r in records if r.lane == 1 and r.step in (EVENT_AT - 1, EVENT_AT)] \
        == [0.05, 0.01]


def test_frame_has_a_row_per_record_and_start_with_the_records_values(race: tuple[Run, list[Record]]) -> None:
    _, records = race
    frame = records_frame(records)
    assert len(frame) == 2 * STEPS * 2  # lanes x steps x starts
    i = 0
    for r in records:
        for row in range(2):
            got = frame.iloc[i]
            assert (got["tick"], got["lane"], got["optimizer"], got["step"], got["start"]) \
                == (r.tick, r.lane, r.optimizer, r.step, row)
            for name in ("loss", "grad_norm", "update_norm"):
                assert got[name] == getattr(r, name)[row]  # inf == inf; these records have no NaN
            assert (got["x0"], got["x1"]) == tuple(r.position[row])
            assert {k: got[k] for k in OracleCounts().as_dict()} == r.counts.as_dict()
            assert got["status"] == r.status[row]
            assert got["wall_time"] == r.wall_time
            for name, value in r.hyperparameters.items():
                assert got[f"hp_{name}"] == value
            for name in {"beta1", "beta2", "eps"} - set(r.hyperparameters):
                assert math.isnan(got[f"hp_{name}"])  # Adam's hyperparameters on an SGD row
            probe = r.curvature if row == 0 else None  # a probe measures the first start
            if probe is None:
                assert math.isnan(got["lambda_max"]) and got["top_k"] is None
            else:
                assert got["lambda_max"] == probe.lambda_max
                assert got["sharpness"] == probe.sharpness
                assert got["threshold"] == probe.threshold.value
                np.testing.assert_array_equal(got["top_k"], probe.top_k)
                np.testing.assert_array_equal(got["exact"], probe.exact)
            i += 1


def test_parquet_reads_back_with_config_event_log_and_equal_values(
        race: tuple[Run, list[Record]], files: dict[str, Path]) -> None:
    run, records = race
    table = pq.read_table(files["parquet"])
    meta = json.loads(table.schema.metadata[PARQUET_KEY], parse_constant=_reject_constant)
    assert RunConfig.from_dict(meta["config"]) == run.config
    assert meta["event_log"]["events"] == [json.loads(json.dumps(e.to_dict())) for e in run.log]
    assert meta["event_log"]["events"][0]["tick"] == EVENT_AT
    assert meta["event_log"]["ticks"] == STEPS
    assert meta["problem"]["name"] == "rosenbrock" and meta["problem"]["params"] == {"dim": 2}
    assert meta["device"]["type"] == "cpu" and meta["dtype"] == "float64"
    assert set(meta["versions"]) == {"torch", "numpy", "pytorch_optimizer", "pandas", "pyarrow", "python"}
    assert all(meta["versions"].values())
    frame = pd.read_parquet(files["parquet"])
    pd.testing.assert_frame_equal(frame, records_frame(records))
    assert np.isinf(frame["loss"]).sum() > 0 and frame["hp_beta1"].isna().sum() > 0


def test_json_is_strict_and_reads_back_with_nonfinite_values_restored(
        race: tuple[Run, list[Record]], files: dict[str, Path]) -> None:
    run, records = race
    doc = json.loads(files["json"].read_text(), parse_constant=_reject_constant)  # no bare NaN/Infinity
    assert set(doc) == {"metadata", "columns", "records"}
    assert RunConfig.from_dict(doc["metadata"]["config"]) == run.config
    assert len(doc["records"]) == 2 * STEPS * 2
    raw_losses = {row["loss"] for row in doc["records"] if not isinstance(row["loss"], float)}
    assert raw_losses == {"Infinity"}  # how JSON carries a diverged loss
    assert {row["hp_beta1"] for row in doc["records"] if row["optimizer"] == "sgd"} == {"NaN"}
    meta, frame = read_export(files["json"])
    pd.testing.assert_frame_equal(frame, records_frame(records))
    parquet_meta, _ = read_export(files["parquet"])
    assert {k: v for k, v in meta.items() if k != "timestamp"} \
        == {k: v for k, v in parquet_meta.items() if k != "timestamp"}


@pytest.mark.parametrize("kind", ["parquet", "json"])
def test_exported_event_log_replays_to_identical_records(
        race: tuple[Run, list[Record]], files: dict[str, Path], kind: str) -> None:
    _, records = race
    replayed = replay_export(files[kind], get_landscape("rosenbrock"), device="cpu")
    assert len(replayed) == len(records)
    assert all(a.same_values(b) for a, b in zip(records, replayed, strict=True))


def test_replay_needs_the_event_log_and_the_same_problem(files: dict[str, Path],
                                                        race: tuple[Run, list[Record]]) -> None:
    """Dropping the logged learning-rate change changes Adam's records from the event on, so the
    replay test above depends on the exported events; a different problem is refused."""
    _, records = race
    meta, _ = read_export(files["json"])
    meta["event_log"] = dict(meta["event_log"], events=[])
    without = replay_export(meta, get_landscape("rosenbrock"))
    same = [a.same_values(b) for a, b in zip(records, without, strict=True)]
    assert all(s for a, s in zip(records, same, strict=True) if a.tick < EVENT_AT or a.lane == 0)
    assert not any(s for a, s in zip(records, same, strict=True) if a.tick > EVENT_AT and a.lane == 1)
    with pytest.raises(ValueError, match="parameters"):
        replay_export(files["json"], get_landscape("rosenbrock", dim=3))
    with pytest.raises(ValueError, match="not 'ackley'"):
        replay_export(files["json"], get_landscape("ackley"))


def _record(tick: int, lane: int, metrics: dict[str, list[float]], hp: dict[str, Any]) -> Record:
    return make_record(tick=tick, lane=lane, optimizer="x", step=tick, loss=[1.0, math.nan],
                       grad_norm=[2.0, math.inf], update_norm=[0.0, -math.inf], position=None,
                       hyperparameters=hp, counts=OracleCounts(function_values=2 * tick),
                       status=("running",) * 2, wall_time=0.5 * tick, metrics=metrics)


def test_metrics_and_mixed_hyperparameters_become_columns(tmp_path: Path,
                                                          race: tuple[Run, list[Record]]) -> None:
    """Metrics off their schedule are NaN; a hyperparameter another lane lacks is missing; NaN, inf
    and -inf survive both formats."""
    run, _ = race
    records = [_record(0, 0, {"test_accuracy": [0.25, math.nan]}, {"lr": 0.1, "nesterov": True}),
               _record(1, 0, {}, {"lr": 0.1, "nesterov": False}),
               _record(1, 1, {}, {"lr": 3})]
    frame = records_frame(records)
    assert list(frame["start"]) == [0, 1] * 3
    np.testing.assert_array_equal(frame["metric_test_accuracy"], [0.25, np.nan, *[np.nan] * 4])
    assert list(frame["hp_nesterov"]) == [True, True, False, False, None, None]
    assert list(frame["hp_lr"]) == [0.1, 0.1, 0.1, 0.1, 3.0, 3.0]
    assert list(frame["function_values"]) == [0, 0, 2, 2, 2, 2]
    assert "x0" not in frame.columns and "lambda_max" not in frame.columns
    for path in (export_parquet(run, records, tmp_path / "m.parquet"),
                 export_json(run, records, tmp_path / "m.json")):
        _, back = read_export(path)
        pd.testing.assert_frame_equal(back, frame)
        np.testing.assert_array_equal(back["update_norm"], [0.0, -np.inf] * 3)


def test_an_empty_export_reads_back(tmp_path: Path, race: tuple[Run, list[Record]]) -> None:
    run, _ = race
    for path in (export_parquet(run, [], tmp_path / "e.parquet"), export_json(run, [], tmp_path / "e.json")):
        meta, frame = read_export(path)
        assert len(frame) == 0 and "loss" in frame.columns and meta["event_log"]["ticks"] == STEPS


def test_export_writes_parquet_and_its_metadata_and_json_only_on_request(
        race: tuple[Run, list[Record]], tmp_path: Path) -> None:
    run, records = race
    files = export_run(run, records, tmp_path, stem="r")
    assert set(files) == {"parquet", "metadata"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.meta.json", "r.parquet"]
    sidecar = json.loads(files["metadata"].read_text(), parse_constant=_reject_constant)
    meta, _ = read_export(files["parquet"])
    assert RunConfig.from_dict(sidecar["config"]) == run.config
    assert {k: v for k, v in sidecar.items() if k != "timestamp"} \
        == {k: v for k, v in meta.items() if k != "timestamp"}


def test_replay_log_in_chunks_gives_the_live_runs_records(race: tuple[Run, list[Record]]) -> None:
    """Chunked (with progress and stop checks between chunks) or not, the replay takes the same
    steps: records equal to the live run's, the event applied at its tick."""
    run, records = race
    for chunk in (1, 7, 1000):
        _, replayed = replay_log(get_landscape("rosenbrock"), run.event_log(), chunk=chunk)
        assert len(replayed) == len(records)
        assert all(a.same_values(b) for a, b in zip(records, replayed, strict=True))


def _race_log(steps: int, probes: ProbeConfig | None = None) -> dict[str, Any]:
    """The app's default race (SGD, momentum, Adam on Rosenbrock, one start) as an event log."""
    config = RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 1e-3}},
                              {"optimizer": "momentum", "hyperparameters": {"lr": 1e-3}},
                              {"optimizer": "adam", "hyperparameters": {"lr": 0.1}}),
                       device="cpu", probes=probes)
    return {"problem": "rosenbrock", "config": config.to_dict(), "events": [], "ticks": steps}


PARQUET_BYTES_PER_STEP = 250
"""Bound on the Parquet export per step of the 3-lane, 1-start race (3 table rows): measured
~200 bytes with a curvature probe every 10 steps (~8 incompressible floats a row)."""


def test_a_4000_step_race_exports_under_a_megabyte_with_monotone_progress(tmp_path: Path) -> None:
    steps = 4000
    seen: list[tuple[float, str]] = []
    out = export_log(get_landscape("rosenbrock"), _race_log(steps, ProbeConfig(every=10)), tmp_path,
                     stem="race", progress=lambda f, m: seen.append((f, m)))
    size = out.files["parquet"].stat().st_size
    assert size < steps * PARQUET_BYTES_PER_STEP  # 1.0 MB
    assert not (tmp_path / "race.json").exists()
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 <= fractions[0]
    assert len(seen) >= steps // 64  # a report per replay chunk, at least
    assert all(isinstance(m, str) and m for _, m in seen)
    _, frame = read_export(out.files["parquet"])
    assert len(frame) == 3 * steps and len(out.records) == 3 * steps


@pytest.mark.parametrize("when", ["at once", "during the replay", "once the Parquet file is written"])
def test_a_cancelled_export_raises_and_leaves_no_file(tmp_path: Path, when: str) -> None:
    token, reports = CancelToken(), []
    if when == "at once":
        token.cancel()

    def progress(fraction: float, message: str) -> None:
        reports.append(fraction)
        if when == "during the replay" and len(reports) == 3:  # 300 steps are 5 chunks of 64
            token.cancel()
        if when != "during the replay" and (tmp_path / "race.parquet").exists():
            token.cancel()

    with pytest.raises(Cancelled), cancellable(token):
        export_log(get_landscape("rosenbrock"), _race_log(300), tmp_path, stem="race", json=True,
                   progress=progress)
    assert list(tmp_path.iterdir()) == []
    assert len(reports) == {"at once": 0, "during the replay": 3}.get(when, len(reports))


def test_a_failed_write_removes_what_the_export_wrote(tmp_path: Path, race: tuple[Run, list[Record]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run, records = race

    def broken(*args: Any, **kwargs: Any) -> None:
        assert (tmp_path / "r.parquet").exists()  # written before the JSON file fails
        raise OSError("disk full")

    monkeypatch.setattr("engine.export.export_json", broken)
    with pytest.raises(OSError, match="disk full"):
        export_run(run, records, tmp_path, stem="r", json=True)
    assert list(tmp_path.iterdir()) == []


def test_the_table_carries_scheduled_values_diagnostics_and_lane_time(tmp_path: Path) -> None:
    lane = LaneConfig("sgd", {"lr": 1e-3}, schedules={"lr": Schedule("linear", steps=10)},
                      clip=Clip("norm", threshold=1.0))
    run = Run(get_landscape("rosenbrock"), RunConfig(lanes=(lane,), device="cpu"))
    records = run.run(10)
    _, frame = read_export(export_run(run, records, tmp_path, stem="r")["parquet"])
    np.testing.assert_allclose(frame["hp_lr"], [1e-3 * (1 - t / 10) for t in range(10)], rtol=1e-12)
    np.testing.assert_array_equal(frame["diag_clipped_fraction"],
                                  [float(r.grad_norm[0] > 1.0) for r in records])
    assert (frame["compute_time"] > 0).all() and (frame["compute_time"] <= frame["wall_time"]).all()


def test_noise_probe_fields_reach_the_table(tmp_path: Path) -> None:
    problem = get_network("moons_mlp", width=4, depth=1, batch_size=16)
    run = Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.1}),), device="cpu",
                                 probes=ProbeConfig(every=2, tol=1e-3, noise=True, noise_samples=32,
                                                    estimate_cosine=True)))
    records = run.run(4)
    _, frame = read_export(export_run(run, records, tmp_path, stem="r")["parquet"])
    probed = [r.curvature for r in records if r.curvature is not None]
    np.testing.assert_array_equal(frame["noise_scale"].dropna(), [p.noise_scale for p in probed])
    np.testing.assert_array_equal(frame["estimate_cosine"].dropna(), [p.estimate_cosine for p in probed])
    got = [np.asarray(v) for v in frame["grad_snr"] if v is not None]
    for a, p in zip(got, probed, strict=True):
        np.testing.assert_array_equal(a, p.grad_snr)
