"""An experiment run (a) configuration by configuration in a Python loop and (b) batched on a
2-worker Dask LocalCluster, side by side in one process; then a basin map's point-steps per second.

The experiment: 4 optimizers (SGD, heavy ball, Adam, Lion) x 32 learning rates (log grid over
1e-5..1) x 8 run seeds (``--starts`` rows each, 1 by default) on Rosenbrock and on the digits MLP
(64-64-10, minibatches of 64), each trajectory on the same oracle budget. (a) is what a user writes
by hand: one ``engine.run.Run`` per configuration and seed (the race ``row_to_race`` reopens),
stepped until the budget is spent, in the main process. (b) is ``run_experiment``: on Rosenbrock
all configurations x seeds of one optimizer are one Run (configurations as lanes, seeds as rows),
split only to give both workers work; on the MLP (minibatches drawn by the run seed, batched
matmuls that round with the batch) one Run each; tasks spread over the two workers. Both must give
bit-identical final losses (checked). The batched tasks are also run one after
another in this process, to show what batching alone buys. The cluster's start-up (a few seconds,
once per session) is timed apart and not in the ratio. Medians over ``--rounds``.

Then a basin map: Adam on Himmelblau over a ``--basin-grid`` square grid of starts (1,000 x 1,000
by default) for ``--basin-steps`` steps, in chunks of 65,536 starts, on the device picked once
(CUDA when present).

Last line: ``experiment_speedup=<ratio> basin_point_steps_per_s=<n> rows_lost=<n>``.

    python benchmarks/experiment.py [--rounds 3] [--lrs 32] [--seeds 8] [--basin-grid 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from engine.experiments import ExperimentSpec, basin_map, plan, race_config, run_task
from engine.experiments.executor import connect, run_experiment
from engine.experiments.results import KEY_COLUMNS
from engine.run import Run
from landscapes import get_landscape

OPTIMIZERS = ("sgd", "momentum", "adam", "lion")
CATALOGS = ["landscapes.catalog:LANDSCAPES", "landscapes.networks:NETWORKS"]


def make_spec(
    lrs: int, seeds: int, starts: int, budget_rosen: float, budget_mlp: float
) -> list[ExperimentSpec]:
    search = {"lr": {"kind": "grid", "n": lrs, "low": 1e-5, "high": 1.0}}
    common = {
        "optimizers": [{"name": n, "search": search} for n in OPTIMIZERS],
        "include_default": False,
        "seeds": list(range(seeds)),
        "starts": starts,
        "device": "cpu",
    }
    return [
        ExperimentSpec.from_dict(
            {**common, "problems": ["rosenbrock"], "budget": budget_rosen, "target": 1e-3}
        ),
        ExperimentSpec.from_dict(
            {
                **common,
                "problems": [{"name": "digits_mlp", "options": {"batch_size": 64}}],
                "budget": budget_mlp,
                "target": 0.5,
            }
        ),
    ]


def loop(spec: ExperimentSpec) -> dict[tuple, float]:
    """(a): one Run per configuration and seed, stepped until its budget is spent; final loss per
    trial. Each is the race ``row_to_race`` reopens (``fused`` as the experiment records it)."""
    problems = spec.validate(CATALOGS)
    out = {}
    for task in plan(spec, problems):  # the same configurations, walked one by one
        problem = problems[task.problem]
        seeds = getattr(task, "seeds", None) or (task.seed,)  # (the older Task had one seed)
        extra = {"fused": task.fused} if hasattr(task, "fused") else {}
        for config in task.configs:
            for seed in seeds:
                rc = race_config(
                    config, seed=seed, starts=task.starts, start=None, device="cpu", dtype="float64", **extra
                )
                run = Run(problem, rc)
                while True:
                    (rec,) = run.step()
                    if spec.costs.units(rec.counts) > spec.budget or rec.step >= spec.max_steps:
                        break
                for s, v in enumerate(rec.loss):
                    out[(task.problem, task.entry, config.index, seed, s)] = float(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lrs", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=8, help="run seeds")
    ap.add_argument("--starts", type=int, default=1, help="rows of each seed's run")
    ap.add_argument("--budget-rosenbrock", type=float, default=600.0, help="oracle units (3 a gradient step)")
    ap.add_argument("--budget-mlp", type=float, default=90.0)
    ap.add_argument("--basin-grid", type=int, default=1000)
    ap.add_argument("--basin-steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = make_spec(args.lrs, args.seeds, args.starts, args.budget_rosenbrock, args.budget_mlp)
    trials = sum(len(s.optimizers) * args.lrs * args.seeds * args.starts for s in specs)
    print(
        f"experiment: {len(OPTIMIZERS)} optimizers x {args.lrs} lrs x {args.seeds} seeds x {args.starts} "
        f"starts on rosenbrock "
        f"(budget {args.budget_rosenbrock:g} units) and digits_mlp (budget {args.budget_mlp:g}): "
        f"{trials} trials"
    )
    t0 = time.perf_counter()
    client, cluster = connect(None, n_workers=2)
    client.run(lambda: __import__("landscapes") and __import__("engine.experiments.batching"))
    start_s = time.perf_counter() - t0
    names = [spec.problems[0].name for spec in specs]
    loop_s: dict[str, list[float]] = {n: [] for n in names}
    inproc_s: dict[str, list[float]] = {n: [] for n in names}
    dask_s: dict[str, list[float]] = {n: [] for n in names}
    lost, mismatched = 0, 0
    try:
        for r in range(args.rounds):
            for name, spec in zip(names, specs, strict=True):
                t0 = time.perf_counter()
                ref = loop(spec)
                loop_s[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                problems = spec.validate(CATALOGS)  # the batched tasks one after another: no Dask
                for task in plan(spec, problems):
                    run_task(task, problems[task.problem])
                inproc_s[name].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                res = run_experiment(spec, client=client, catalogs=CATALOGS)
                dask_s[name].append(time.perf_counter() - t0)
                got = {}
                for row in res.frame.itertuples(index=False):
                    key = tuple(getattr(row, c) for c in KEY_COLUMNS)
                    if key in got:
                        lost += 1  # a doubled row counts as lost too: the table must be exact
                    got[key] = row.final_loss
                lost += len(set(ref) - set(got))
                mismatched += sum(
                    not (np.isnan(ref[k]) and np.isnan(got[k])) and ref[k] != got[k]
                    for k in set(ref) & set(got)
                )
                print(
                    f"round {r + 1}, {name}: loop {loop_s[name][-1]:.1f} s, batched in this process "
                    f"{inproc_s[name][-1]:.1f} s, batched on 2 Dask workers {dask_s[name][-1]:.1f} s"
                )
    finally:
        client.close()
        cluster.close()

    def ratio(a: dict[str, list[float]], b: dict[str, list[float]], keys: list[str]) -> float:
        return statistics.median(
            sum(a[k][i] for k in keys) / sum(b[k][i] for k in keys) for i in range(args.rounds)
        )

    speedup = ratio(loop_s, dask_s, names)
    print(f"local cluster start-up (2 workers, once per session, not in the ratio): {start_s:.1f} s")
    for name in names:
        print(
            f"{name}: median loop {statistics.median(loop_s[name]):.1f} s, batched in this process "
            f"{statistics.median(inproc_s[name]):.1f} s ({ratio(loop_s, inproc_s, [name]):.2f}x), "
            f"on 2 Dask workers {statistics.median(dask_s[name]):.1f} s "
            f"({ratio(loop_s, dask_s, [name]):.2f}x)"
        )
    print(
        f"both: batching alone (no Dask) {ratio(loop_s, inproc_s, names):.2f}x, on Dask {speedup:.2f}x; "
        f"final losses bit-identical: {mismatched == 0} ({mismatched} differ)"
    )

    problem = get_landscape("himmelblau")
    basin_map(problem, "adam", {"lr": 0.05}, grid=64, steps=5)  # warm-up
    m = basin_map(problem, "adam", {"lr": 0.05}, grid=args.basin_grid, steps=args.basin_steps, tol=1e-3)
    print(
        f"basin map: adam (lr 0.05) on himmelblau, {args.basin_grid}x{args.basin_grid} starts, "
        f"{args.basin_steps} steps on {m.device}: {m.seconds:.1f} s; fractions {m.fractions()}"
    )
    print(
        f"experiment_speedup={speedup:.2f} basin_point_steps_per_s={m.point_steps_per_second:.0f} "
        f"rows_lost={lost}"
    )


if __name__ == "__main__":
    main()
