"""Experiments on dask.distributed: a small LocalCluster (2 processes) runs an experiment; a worker
killed mid-experiment loses no row and doubles none; cancel keeps what finished and resume runs
the rest; a scheduler that does not answer and bad specs fail fast with clear messages; the
command line, with problems found through the entry points pyproject.toml declares."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from engine.experiments import ExperimentResult, ExperimentSpec, SchedulerError, SpecError, plan, run_task
from engine.experiments.batching import expected_keys
from engine.experiments.cli import main
from engine.experiments.executor import connect, run_experiment
from engine.experiments.results import KEY_COLUMNS
from landscapes.networks import problem_from_module

ROOT = Path(__file__).resolve().parents[2]
CATALOGS = ["landscapes.catalog:LANDSCAPES", "landscapes.networks:NETWORKS"]
OUTCOMES = ["final_loss", "best_loss", "steps", "units", "steps_to_target", "units_to_target", "diverged_at"]


@pytest.fixture(scope="module")
def client():
    client, cluster = connect(None, n_workers=2)
    client.run(lambda: __import__("landscapes") and __import__("engine.experiments.batching"))  # warm imports
    yield client
    client.close()
    cluster.close()


def both_workers(client) -> None:
    """Wait for both workers: a test before may have killed one (its nanny restarts it within
    seconds), and the plan splits tasks by the workers there are."""
    client.wait_for_workers(2, timeout=60)


def kill(client, workers: list[str]) -> None:
    """End these worker processes at once, as a crash would (their nannies restart them)."""
    try:
        client.run(os._exit, 1, workers=workers)
    except Exception:  # the worker dies before it can answer
        pass


def spec_of(**kw: object) -> ExperimentSpec:
    """4 tasks (2 optimizers x 2 seeds) of 5 configurations x 8 starts x 200 steps."""
    base = {
        "problems": ["rosenbrock"],
        "optimizers": [
            {"name": n, "search": {"lr": {"kind": "grid", "n": 4, "low": 1e-4, "high": 1e-2}}}
            for n in ("adam", "lion")
        ],
        "budget": 600,
        "target": 1e-2,
        "seeds": [0, 1],
        "starts": 8,
        "device": "cpu",
    }
    return ExperimentSpec.from_dict({**base, **kw})


def keys(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in frame[list(KEY_COLUMNS)].itertuples(index=False, name=None)]


def expected(spec: ExperimentSpec) -> set[tuple]:
    return {
        (p.name, e.label, c.index, s, r)
        for p in spec.problems
        for e in spec.optimizers
        for c in spec.configurations(e)
        for s in spec.seeds
        for r in range(spec.starts)
    }


def direct(spec: ExperimentSpec, key: str) -> pd.DataFrame:
    problems = spec.validate(CATALOGS)
    (task,) = [t for t in plan(spec, problems, min_tasks=4) if t.key == key]  # as on 2 workers
    return pd.DataFrame(run_task(task, problems[task.problem]).rows)


def test_an_experiment_on_a_local_cluster_has_one_row_per_trial_equal_to_the_task_run_here(client) -> None:
    """A named landscape and a user's own nn.Module problem (shipped to the workers by value)."""
    torch.manual_seed(0)
    X, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 2, (40,))
    mine = problem_from_module(nn.Linear(3, 2).double(), F.cross_entropy, X, y, name="my_linear")
    spec = spec_of(problems=["rosenbrock", mine], optimizers=["adam", "sgd"], seeds=[0], starts=1, budget=60)
    seen = []
    result = run_experiment(spec, client=client, catalogs=CATALOGS, progress=seen.append)
    assert result.complete and set(keys(result.frame)) == expected(spec) and len(result.frame) == 4
    assert [p.tasks_done for p in seen] == [0, 1, 2, 3, 4] and seen[-1].trials_done == 4
    here = pd.concat(
        [
            direct(spec, f"{p}|{o}|seed=0|configs=0-0")
            for p in ("rosenbrock", "my_linear")
            for o in ("adam", "sgd")
        ]
    )
    there = result.frame.set_index(list(KEY_COLUMNS)).sort_index()
    here = here.set_index(list(KEY_COLUMNS)).sort_index()
    pd.testing.assert_frame_equal(there[OUTCOMES], here[OUTCOMES])
    assert set(result.frame["device"]) == {"cpu"} and "distributed" in result.frame["versions"].iloc[0]


def test_a_worker_killed_mid_experiment_loses_no_row_and_doubles_none(client) -> None:
    both_workers(client)
    spec = spec_of()
    killed: dict[str, object] = {}

    def kill_a_busy_worker(_result) -> None:
        if killed:
            return
        busy = {}
        for _ in range(100):  # the other worker is on a task within moments
            busy = {w: ks for w, ks in client.processing().items() if any("task-" in str(k) for k in ks)}
            if busy:
                break
            threading.Event().wait(0.02)
        addr, ks = next(iter(busy.items()))
        killed.update(addr=addr, task=next(str(k) for k in ks if "task-" in str(k)))
        kill(client, [addr])

    result = run_experiment(spec, client=client, catalogs=CATALOGS, on_result=kill_a_busy_worker)
    assert killed, "no worker was killed"
    got = keys(result.frame)
    assert len(got) == len(set(got)) == len(expected(spec)) == 2 * 5 * 2 * 8
    assert set(got) == expected(spec) and result.complete and result.metadata["duplicated"] == 0
    assert killed["addr"] not in client.scheduler_info()["workers"]  # it really died (the nanny restarted it)
    task_key = str(killed["task"])[len("task-") :].rsplit("-", 1)[0]
    _problem, entry, seeds, configs = task_key.split("|")
    lo, hi = (int(v) for v in configs.split("=")[1].split("-"))
    mine = result.frame[
        (result.frame["entry"] == entry)
        & result.frame["seed"].isin([int(s) for s in seeds.split("=")[1].split(",")])
        & result.frame["config"].between(lo, hi)
    ]
    pd.testing.assert_frame_equal(
        mine[OUTCOMES].reset_index(drop=True), direct(spec, task_key)[OUTCOMES].reset_index(drop=True)
    )


def test_a_finished_task_whose_worker_dies_before_its_rows_are_fetched_is_rerun_not_skipped(client) -> None:
    """The loss CI saw: a task finished, its worker died before the rows were fetched (the
    scheduler reruns it: "lost", then "pending"). Here the worker holding a finished task's result is
    killed while the first result is being handled, so that task reaches the loop no longer finished."""
    both_workers(client)
    spec = spec_of()
    killed: list[str] = []

    def kill_the_holder_of_another_finished_task(res) -> None:
        if killed:
            return
        for _ in range(500):  # the other tasks finish within seconds
            held = {
                k: ws
                for k, ws in client.who_has().items()
                if "task-" in str(k) and res.key not in str(k) and ws
            }
            if held:
                key, workers = next(iter(held.items()))
                killed.append(str(key))
                kill(client, list(workers))
                return
            threading.Event().wait(0.02)

    result = run_experiment(
        spec, client=client, catalogs=CATALOGS, on_result=kill_the_holder_of_another_finished_task
    )
    assert killed, "no finished task's worker was killed"
    got = keys(result.frame)
    assert len(got) == len(set(got)) == len(expected(spec)) and result.complete


def test_cancel_keeps_what_finished_and_resume_runs_only_the_rest(client) -> None:
    both_workers(client)
    spec = spec_of()
    cancel = threading.Event()
    partial = run_experiment(
        spec, client=client, catalogs=CATALOGS, cancel=cancel, on_result=lambda _r: cancel.set()
    )
    assert partial.metadata["cancelled"] and not partial.complete
    got = keys(partial.frame)
    assert 0 < len(got) < len(expected(spec)) and len(got) == len(set(got)) and set(got) <= expected(spec)
    assert partial.metadata["min_tasks"] == 4  # two workers, two tasks each
    tasks = plan(spec, spec.validate(CATALOGS), min_tasks=4)
    assert len(tasks) == 4 and all(t.seeds == (0, 1) for t in tasks)  # seeds are rows of each task's Run
    finished = [t for t in tasks if expected_keys([t]) <= set(got)]
    assert set(got) == expected_keys(finished)  # whole tasks only
    ran = []

    class OneWorkerLeft:  # the cluster shrank between the two runs (a worker died, not yet restarted)
        def __getattr__(self, name: str):
            return getattr(client, name)

        def scheduler_info(self, **kw):
            info = dict(client.scheduler_info(**kw))
            info["workers"] = dict(list(info["workers"].items())[:1])
            return info

    full = run_experiment(
        spec, client=OneWorkerLeft(), catalogs=CATALOGS, resume=partial, on_result=lambda r: ran.append(r.key)
    )
    assert (
        full.complete and set(keys(full.frame)) == expected(spec) and len(full.frame) == len(expected(spec))
    )
    assert sorted(ran) == sorted(t.key for t in tasks if t not in finished)
    before = partial.frame.set_index(list(KEY_COLUMNS))[OUTCOMES]
    after = full.frame.set_index(list(KEY_COLUMNS))[OUTCOMES].loc[before.index]
    pd.testing.assert_frame_equal(after, before)


@pytest.mark.timeout(30)
def test_a_scheduler_that_does_not_answer_fails_within_the_timeout() -> None:
    with pytest.raises(SchedulerError, match=r"no Dask scheduler answered at tcp://127.0.0.1:9 within 1 s"):
        run_experiment(spec_of(), scheduler="tcp://127.0.0.1:9", catalogs=CATALOGS, connect_timeout=1)
    with pytest.raises(SpecError, match="budget must be a positive"):  # the spec is checked first
        run_experiment(spec_of(budget=0), scheduler="tcp://127.0.0.1:9", catalogs=CATALOGS)


# -- the command line ---------------------------------------------------------------------------


def installed_catalogs(tmp_path: Path) -> Path:
    """A site folder in which the entry points pyproject.toml declares are installed (a dist-info
    folder), as `pip install -e .` does."""
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][
        "optiscope.problems"
    ]
    info = tmp_path / "site" / "optiscope_catalogs-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: optiscope-catalogs\nVersion: 0\n")
    (info / "entry_points.txt").write_text(
        "[optiscope.problems]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
    )
    return tmp_path / "site"


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.experiments", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


SPEC = """
name = "cli"
budget = 60
target = 1.0
starts = 2
device = "cpu"
[[problems]]
name = "{problem}"
[[optimizers]]
name = "{optimizer}"
search = {{lr = [0.0001, 0.001]}}
"""


def test_cli_rejects_bad_input_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(installed_catalogs(tmp_path)))  # problems found by entry point
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text(SPEC.format(problem="rosenbrock", optimizer="adamm"))
    assert main(["run", "bad.toml", "--out", "r.parquet"]) == 2
    assert "error: unknown optimizer 'adamm'" in capsys.readouterr().err
    assert not (tmp_path / "r.parquet").exists()
    (tmp_path / "ok.toml").write_text(SPEC.format(problem="rosenbrock", optimizer="adam"))
    assert main(["run", "ok.toml", "--scheduler", "tcp://127.0.0.1:9", "--timeout", "1"]) == 2
    assert "no Dask scheduler answered at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert main(["basins", "--problem", "himmelblau", "--optimizer", "sgd", "--set", "lr=-1"]) == 2
    assert "outside its allowed range" in capsys.readouterr().err
    assert main(["basins", "--problem", "rosenbrock", "--option", "dim=3", "--optimizer", "sgd"]) == 2
    assert "basin maps are for 2-D landscapes" in capsys.readouterr().err


def test_cli_basins_writes_a_labelled_grid(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(installed_catalogs(tmp_path)))
    monkeypatch.chdir(tmp_path)
    args = [
        "basins",
        "--problem",
        "quadratic",
        "--optimizer",
        "sgd",
        "--set",
        "lr=0.1",
        "--grid",
        "10",
        "--steps",
        "200",
        "--out",
        "b.parquet",
    ]
    assert main(args) == 0
    frame = pd.read_parquet(tmp_path / "b.parquet")
    assert (
        len(frame) == 100
        and set(frame["label"]) == {0}
        and "minimum (0, 0): 100.0%" in capsys.readouterr().out
    )


@pytest.mark.slow
def test_cli_runs_an_experiment_on_a_local_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{installed_catalogs(tmp_path)}"}
    (tmp_path / "spec.toml").write_text(SPEC.format(problem="quadratic", optimizer="adam"))
    out = cli(["run", "spec.toml", "--workers", "1"], env, tmp_path)
    assert out.returncode == 0, out.stderr
    result = ExperimentResult.read_parquet(tmp_path / "spec.parquet")
    assert result.complete and len(result.frame) == 3 * 2 and "wrote 6 of 6 trials" in out.stdout
    assert np.isfinite(result.frame["final_loss"]).all()
