"""Experiments without a cluster: specs and their bad input, search spaces, the oracle-unit budget,
the batched task program (bit-equal to races run alone), results and row_to_race, and the
analysis against hand-computed examples."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from engine.experiments import (
    ExperimentResult,
    ExperimentSpec,
    OptimizerEntry,
    OracleCosts,
    SpecError,
    performance_profile,
    plan,
    profile_ratios,
    profile_score,
    race_config,
    row_to_race,
    run_task,
    sensitivity,
    times_to_target,
    tuned_vs_default,
)
from engine.experiments.results import frame_from_rows
from engine.records import OracleCounts
from engine.registry import get_spec
from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_landscape, get_network

CATALOGS = ["landscapes.catalog:LANDSCAPES", "landscapes.networks:NETWORKS"]


def spec_of(**kw: object) -> ExperimentSpec:
    base = {"problems": ["rosenbrock"], "optimizers": ["sgd"], "budget": 30, "device": "cpu"}
    return ExperimentSpec.from_dict({**base, **kw})


# -- spec and bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optimizers": ["adamm"]}, "unknown optimizer 'adamm'"),
        (
            {"optimizers": [{"name": "adam", "search": {"learning_rate": [0.1]}}]},
            "no hyperparameter 'learning_rate'",
        ),
        ({"optimizers": [{"name": "adam", "fixed": {"lr": -1.0}}]}, "outside its allowed range"),
        ({"optimizers": [{"name": "adam", "search": {"lr": []}}]}, "must not be empty"),
        ({"optimizers": [{"name": "adam", "search": {"lr": {"kind": "grid", "n": 0}}}]}, "n >= 1"),
        (
            {"optimizers": [{"name": "adam", "search": {"lr": {"kind": "grid", "n": 5000}}}]},
            "over the limit of 4,096",
        ),
        (
            {
                "optimizers": [{"name": "adam", "search": {"lr": {"kind": "grid", "n": 4000}}}],
                "seeds": list(range(60)),
            },
            "over the limit of 200,000",
        ),
        ({"optimizers": ["adam"], "include_default": False}, "search space is empty"),
        ({"budget": 0}, "budget must be a positive number"),
        ({"budget": float("inf")}, "budget must be a positive number"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": 3}, "seeds is a list of run seeds"),
        ({"problems": ["rosenbrok"]}, "unknown problem 'rosenbrok'"),
        ({"problems": [{"name": "rosenbrock", "options": {"dims": 3}}]}, "does not take 'dims'"),
        (
            {"optimizers": [{"name": "sgd", "lane": {"bogus_option": 1}}]},
            "not taken by this engine's LaneConfig",
        ),
        ({"optimizers": [{"name": "zo_ranksgd", "fixed": {"human": True}}]}, "runs unattended"),
        ({"optimizers": ["sophia_g"]}, "Sophia-G cannot run on rosenbrock"),
        ({"bugdet": 3}, "unknown experiment key(s) bugdet"),
        (
            {"optimizers": [{"name": "adam", "search": {"lr": {"kind": "grid", "n": 3, "high": 100.0}}}]},
            "leaves its",
        ),
    ],
)
def test_bad_specs_fail_before_any_work_with_a_clear_message(change: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        spec_of(**change).validate(CATALOGS)
    assert message in str(err.value)


def test_toml_spec_round_trips_through_its_dict(tmp_path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(
        """
name = "lr sweep"
budget = 300
target = 1e-4
seeds = [0, 1]
starts = 3
device = "cpu"
[costs]
gradient = 3
[[problems]]
name = "quadratic"
options = {kappa = 4.0}
[[optimizers]]
name = "adam"
search = {lr = {kind = "grid", n = 4, low = 1e-3, high = 1.0}, beta1 = "uniform"}
fixed = {beta2 = 0.99}
samples = 2
"""
    )
    spec = ExperimentSpec.from_toml(path)
    assert spec.costs == OracleCosts(gradient=3.0)
    assert spec.problems[0].options == {"kappa": 4.0}
    assert ExperimentSpec.from_dict(spec.to_dict()) == spec
    configs = spec.configurations(spec.optimizers[0])
    assert len(configs) == 1 + 4 * 2  # defaults, then the 4-point grid x 2 random draws
    assert configs[0].is_default and configs[0].hyperparameters["beta2"] == 0.99
    assert [c.hyperparameters["lr"] for c in configs[1::2]] == pytest.approx([1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(SpecError, match="not valid TOML"):
        (tmp_path / "bad.toml").write_text("budget = ")
        ExperimentSpec.from_toml(tmp_path / "bad.toml")


def test_search_spaces_follow_the_spec_ranges_and_are_seeded_per_optimizer() -> None:
    spec = spec_of(
        optimizers=[
            {"name": "momentum", "search": {"momentum": {"kind": "grid", "n": 2}}},
            {"name": "adam", "search": {"lr": "log-uniform"}, "samples": 50},
        ],
        include_default=False,
    )
    mom = spec.configurations(spec.optimizers[0])
    # momentum's range is [0, 1): the grid spaces 3 points over it and leaves the open end out
    assert [c.hyperparameters["momentum"] for c in mom] == [0.0, 0.5]
    adam = [c.hyperparameters["lr"] for c in spec.configurations(spec.optimizers[1])]
    hp = get_spec("adam").hyperparameter("lr")
    assert all(hp.low <= v <= hp.high for v in adam) and len(set(adam)) == 50
    # log-uniform over [1e-6, 10]: about half the draws fall below the geometric middle 3.2e-3
    assert 10 <= sum(v < math.sqrt(hp.low * hp.high) for v in adam) <= 40
    alone = dataclasses.replace(spec, optimizers=spec.optimizers[1:])
    assert [c.hyperparameters["lr"] for c in alone.configurations(alone.optimizers[0])] == adam


def test_oracle_costs_are_the_stated_multiples() -> None:
    costs = OracleCosts()
    assert costs.units(OracleCounts(function_values=1, gradients=1)) == 3  # one gradient step
    assert costs.units(OracleCounts(function_values=2)) == 2  # one MeZO step
    assert costs.units(OracleCounts(function_values=1, gradients=1, hvps=1)) == 7
    assert costs.units(OracleCounts(jvps=1, rankings=2)) == 4
    with pytest.raises(ValueError, match=r"costs\.hvp must be a number >= 0"):
        OracleCosts(hvp=-1)


@pytest.mark.parametrize(("optimizer", "lr", "per_step"), [("sgd", 1e-3, 3), ("zo_sgd", 1e-4, 2)])
def test_a_trajectory_spends_the_budget_and_no_more(optimizer: str, lr: float, per_step: int) -> None:
    """Budget 30 units: SGD (1 value + 1 gradient = 3 units a step) takes 10 steps, MeZO (two
    function values a step) 15; the final loss is f at the iterate those steps reach."""
    spec = spec_of(optimizers=[{"name": optimizer, "fixed": {"lr": lr}}], budget=30, target=5.0)
    problems = spec.validate(CATALOGS)
    (task,) = plan(spec, problems)
    (row,) = run_task(task, problems["rosenbrock"]).rows
    steps = 30 // per_step
    assert (row["steps"], row["units"]) == (steps, 30.0)
    race = Run(
        problems["rosenbrock"],
        race_config(task.configs[0], seed=0, starts=1, start=None, device="cpu", dtype="float64"),
    )
    losses = [float(r.loss[0]) for r in race.run(steps + 1)]
    assert row["final_loss"] == losses[steps]
    assert row["best_loss"] == min(losses)
    hit = next(t for t, v in enumerate(losses) if v <= 5.0)
    assert 0 < hit < steps  # the target is reached along the way, not at the start
    assert (row["steps_to_target"], row["units_to_target"]) == (hit, hit * per_step)


# -- the batched program equals races run alone ------------------------------------------------


def _same(a, b) -> bool:
    return dataclasses.replace(a, lane=0).same_values(dataclasses.replace(b, lane=0))


def test_batched_tasks_equal_each_configuration_run_alone_as_a_race(tmp_path) -> None:
    """Bit for bit on CPU, every record of every row: configurations batched as lanes and seeds as
    rows of one Run (Adam, heavy ball on a landscape), one Run each (a seeded optimizer; a network
    with minibatches, its seeds as Runs), starts as rows. Each (configuration, seed) is compared
    with its own independent Run. Rows written to Parquet reopen as those races (row_to_race)."""
    spec = ExperimentSpec(
        problems=(
            {"name": "rosenbrock"},
            {"name": "digits_mlp", "options": {"width": 8, "batch_size": 32}},
        ),
        optimizers=(
            OptimizerEntry("adam", {"lr": [0.003, 0.03, 0.3]}),
            OptimizerEntry("momentum", {"lr": [1e-4, 1e-3]}),
            OptimizerEntry("zo_sgd", {"lr": [1e-3, 1e-2]}),
        ),
        budget=24,
        target=1.0,
        seeds=(0, 5, 7),
        starts=3,
        device="cpu",
    )
    problems = spec.validate(CATALOGS)
    tasks = plan(spec, problems)
    layouts = {(t.problem, t.optimizer): t.layout for t in tasks}
    assert layouts[("rosenbrock", "adam")] == "lanes" and layouts[("rosenbrock", "zo_sgd")] == "separate"
    assert layouts[("digits_mlp", "adam")] == "separate"
    # Adam on Rosenbrock: defaults + 3 configurations x 3 seeds x 3 starts are one Run of 4 lanes x 9 rows
    (adam,) = [t for t in tasks if (t.problem, t.optimizer) == ("rosenbrock", "adam")]
    assert len(adam.configs) == 4 and adam.seeds == (0, 5, 7) and adam.n_rows == 36 and not adam.fused
    assert all(len(t.seeds) == 1 for t in tasks if t.layout == "separate" or t.problem == "digits_mlp")
    rows, compared = [], 0
    for task in tasks:
        res = run_task(task, problems[task.problem], keep_records=True)
        rows += res.rows
        for config in task.configs:
            for seed in task.seeds:
                mine = res.records[(config.index, seed)]
                rc = race_config(
                    config,
                    seed=seed,
                    starts=task.starts,
                    start=None,
                    device="cpu",
                    dtype="float64",
                    fused=task.fused,  # False where seeds are rows (the fused kernel rounds by position)
                )
                alone = Run(problems[task.problem], rc).run(len(mine))
                assert len(alone) == len(mine) > 2
                assert all(_same(a, b) for a, b in zip(mine, alone, strict=True)), (
                    task.key,
                    config.index,
                    seed,
                )
                compared += 1
    assert compared == 2 * (4 + 3 + 3) * 3
    frame = frame_from_rows(rows)
    assert len(frame) == len(frame.drop_duplicates(["problem", "entry", "config", "seed", "start"]))
    assert len(frame) == 2 * (4 + 3 + 3) * 3 * 3
    path = ExperimentResult(spec, frame, {"complete": True}).to_parquet(tmp_path / "r.parquet")
    back = ExperimentResult.read_parquet(path)
    assert back.spec == spec and back.complete
    for _, row in back.frame.sample(6, random_state=1).iterrows():
        name, options, rc = row_to_race(row)
        problem = get_landscape(name, **options) if name == "rosenbrock" else get_network(name, **options)
        records = Run(problem, rc).run(int(row["steps"]) + 1)
        assert records[-1].loss[int(row["start"])] == row["final_loss"] or (
            math.isnan(row["final_loss"]) and math.isnan(records[-1].loss[int(row["start"])])
        )


def test_from_race_builds_an_experiment_around_the_race() -> None:
    rc = RunConfig(
        lanes=(
            LaneConfig("adam", {"lr": 0.05, "beta2": 0.99}),
            LaneConfig("adam", {"lr": 0.5}),
            LaneConfig("sgd"),
        ),
        n_starts=4,
        seed=3,
        start=(-1.0, 2.0),
        device="cpu",
    )
    spec = ExperimentSpec.from_race("rosenbrock", {}, rc)
    assert [e.label for e in spec.optimizers] == ["adam#0", "adam#1", "sgd"]
    assert spec.optimizers[0].fixed == {"beta2": 0.99}
    assert (spec.seeds, spec.starts, spec.problems[0].start) == ((3,), 4, (-1.0, 2.0))
    lrs = [c.hyperparameters["lr"] for c in spec.configurations(spec.optimizers[0])[1:]]
    assert 0.05 in lrs and min(lrs) == pytest.approx(5e-4) and max(lrs) == pytest.approx(5.0)
    spec.validate(CATALOGS)


# -- analysis against hand computations ---------------------------------------------------------


def _frame(rows: list[tuple]) -> pd.DataFrame:
    cols = ["problem", "entry", "config", "is_default", "hp_lr", "seed", "start", "final_loss", "diverged_at"]
    f = pd.DataFrame(rows, columns=cols)
    f["optimizer"] = f["entry"]
    f["hyperparameters"] = [f'{{"lr": {v}}}' for v in f["hp_lr"]]
    return f


def test_performance_profile_of_three_problems_and_two_solvers_by_hand() -> None:
    """t = [[1, 2], [2, 2], [inf, 4]]: best per problem 1, 2, 4; ratios A = 1, 1, inf and
    B = 2, 1, 1. So rho_A = 2/3 for every tau >= 1; rho_B = 2/3 on [1, 2) and 1 from 2."""
    times = pd.DataFrame({"A": [1.0, 2.0, np.inf], "B": [2.0, 2.0, 4.0]}, index=["p1", "p2", "p3"])
    np.testing.assert_array_equal(profile_ratios(times).to_numpy(), [[1, 2], [1, 1], [np.inf, 1]])
    prof = performance_profile(times=times, taus=[1.0, 1.5, 2.0, 10.0]).pivot(index="tau", columns="entry")
    np.testing.assert_allclose(prof["fraction"]["A"], [2 / 3] * 4)
    np.testing.assert_allclose(prof["fraction"]["B"], [2 / 3, 2 / 3, 1, 1])
    # area over [1, 4] / 3: A = 2/3 * 3 / 3; B = (2/3 * 1 + 1 * 2) / 3
    np.testing.assert_allclose(profile_score(times, 4.0), [2 / 3, (2 / 3 + 2) / 3])


def test_times_to_target_take_the_fastest_configuration_and_the_median_over_trials() -> None:
    rows = []
    for config, units in ((0, [10, 20, np.nan]), (1, [8, np.nan, np.nan]), (2, [30, 30, 40])):
        for s, u in enumerate(units):
            rows.append(("p", "A", config, config == 0, 0.1, 0, s, 1.0, -1, u, 50.0))
    f = pd.DataFrame(
        rows,
        columns=[
            "problem",
            "entry",
            "config",
            "is_default",
            "hp_lr",
            "seed",
            "start",
            "final_loss",
            "diverged_at",
            "units_to_target",
            "units",
        ],
    )
    # medians: config 0 -> 20 (one miss counts as inf), config 1 -> inf (two misses), config 2 -> 30
    assert times_to_target(f).loc["p", "A"] == 20.0
    assert times_to_target(f, configuration="default").loc["p", "A"] == 20.0
    assert times_to_target(f, aggregate="mean").loc["p", "A"] == pytest.approx(100 / 3)


def test_sensitivity_curve_medians_bands_and_the_diverged_penalty() -> None:
    rows = [("p", "A", 0, True, 0.01, 0, s, v, -1) for s, v in enumerate([1.0, 2.0, 3.0, 4.0])]
    rows += [
        ("p", "A", 1, False, 0.1, 0, s, v, d)
        for s, (v, d) in enumerate([(0.5, -1), (np.nan, 7), (1.5, -1), (0.25, -1)])
    ]
    curve = sensitivity(_frame(rows))
    assert list(curve["value"]) == [0.01, 0.1] and set(curve["hyperparameter"]) == {"lr"}
    # config 0: [1, 2, 3, 4] -> inverted-CDF quartiles 1, median 2, 3
    assert tuple(curve.iloc[0][["low", "median", "high"]]) == (1.0, 2.0, 3.0)
    # config 1: the diverged trial scores as the worst finite loss on the problem (4.0):
    # [0.25, 0.5, 1.5, 4.0] -> 0.25, 0.5, 1.5
    assert tuple(curve.iloc[1][["low", "median", "high", "diverged"]]) == (0.25, 0.5, 1.5, 1)


def test_tuned_vs_default_reselects_the_best_in_every_bootstrap_resample() -> None:
    """Two trials. log10 losses: default [0, 2]; search c1 [1, 1], c2 [-1, 3]. All means are 1, so
    tuned = c1 and the improvement is 0. Resampling trials {00, 11, 01, 10} with equal chance:
    00 -> default 0, best (c2) -1: +1; 11 -> 2 vs best (c1) 1: +1; 01, 10 -> 1 vs 1: 0. The 95%
    interval is [0, 1]; keeping c1 fixed instead would give -1 on 00 and an interval from -1."""
    rows = []
    for config, losses in ((0, [1.0, 100.0]), (1, [10.0, 10.0]), (2, [0.1, 1000.0])):
        rows += [("p", "A", config, config == 0, 10.0**-config, 0, s, v, -1) for s, v in enumerate(losses)]
    out = tuned_vs_default(_frame(rows), n_boot=4000).iloc[0]
    assert (out["default_score"], out["tuned_score"], out["improvement"]) == (1.0, 1.0, 0.0)
    assert out["tuned_config"] == 1 and out["n_configs"] == 2
    assert (out["ci_low"], out["ci_high"]) == (0.0, 1.0)
    assert out["default_spread"] == pytest.approx(math.sqrt(2))
    budget1 = tuned_vs_default(_frame(rows), tuning_budget=1, n_boot=100).iloc[0]
    assert budget1["n_configs"] == 1 and budget1["tuned_config"] == 1


def test_a_task_whose_every_trajectory_diverged_ends_there_not_at_its_step_cap() -> None:
    """Frozen (diverged) rows call no oracle, so their budget is never reached: the task ends at the
    record where no row runs any more (it used to step to max_steps, 100,000 steps doing nothing)."""
    spec = ExperimentSpec(problems=({"name": "rosenbrock"},),
                          optimizers=(OptimizerEntry("sgd", {"lr": [1.0]}),),
                          budget=600, seeds=(0,), starts=3, device="cpu")
    problems = spec.validate(CATALOGS)
    (task,) = [t for t in plan(spec, problems) if t.configs[-1].hyperparameters.get("lr") == 1.0]
    res = run_task(task, problems[task.problem], keep_records=True)
    records = res.records[(task.configs[-1].index, 0)]
    last = records[-1]
    # it ends where the last row froze
    assert (last.diverged_at >= 0).all() and (records[-2].diverged_at < 0).any()
    assert len(records) < 100 and task.max_steps > 1_000
    rc = race_config(task.configs[-1], seed=0, starts=task.starts, start=None, device="cpu", dtype="float64",
                     fused=task.fused)
    alone = Run(problems[task.problem], rc).run(len(records))
    assert all(_same(a, b) for a, b in zip(records, alone, strict=True))
