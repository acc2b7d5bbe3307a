"""An experiment run (a) configuration by configuration in a Python loop and (b) batched on a
2-worker Dask LocalCluster, side by side in one process; then a basin map's point-steps per second.

The experiment: 4 optimizers (SGD, heavy ball, Adam, Lion) x 32 learning rates (log grid over
1e-5..1) x 8 seeds (rows of one run) on Rosenbrock and on the digits MLP (64-64-10, minibatches
of 64), each trajectory on the same oracle budget. (a) is what a user writes by hand: one
``engine.run.Run`` per configuration (its 8 seeds as rows), stepped until the budget is spent, in
the main process. (b) is ``run_experiment``: configurations batched as lanes of one Run where that
is bit-exact (Rosenbrock), one Run each otherwise (the MLP), tasks spread over the two workers.
Both must give bit-identical final losses (checked). The batched tasks are also run one after
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


def make_spec(lrs: int, seeds: int, budget_rosen: float, budget_mlp: float) -> list[ExperimentSpec]:
    search = {"lr": {"kind": "grid", "n": lrs, "low": 1e-5, "high": 1.0}}
    common = {
        "optimizers": [{"name": n, "search": search} for n in OPTIMIZERS],
        "include_default": False,
        "starts": seeds,
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
    """(a): one Run per configuration, stepped until its budget is spent; final loss per trial."""
    problems = spec.validate(CATALOGS)
    out = {}
    for task in plan(spec, problems):  # the same configurations, walked one by one
        problem = problems[task.problem]
        for config in task.configs:
            run = Run(
                problem,
                race_config(
                    config, seed=task.seed, starts=task.starts, start=None, device="cpu", dtype="float64"
                ),
            )
            while True:
                (rec,) = run.step()
                if spec.costs.units(rec.counts) > spec.budget or rec.step >= spec.max_steps:
                    break
            for s, v in enumerate(rec.loss):
                out[(task.problem, task.entry, config.index, task.seed, s)] = float(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lrs", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--budget-rosenbrock", type=float, default=600.0, help="oracle units (3 a gradient step)")
    ap.add_argument("--budget-mlp", type=float, default=90.0)
    ap.add_argument("--basin-grid", type=int, default=1000)
    ap.add_argument("--basin-steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    specs = make_spec(args.lrs, args.seeds, args.budget_rosenbrock, args.budget_mlp)
    trials = sum(len(s.optimizers) * args.lrs * args.seeds for s in specs)
    print(
        f"experiment: {len(OPTIMIZERS)} optimizers x {args.lrs} lrs x {args.seeds} seeds on rosenbrock "
        f"(budget {args.budget_rosenbrock:g} units) and digits_mlp (budget {args.budget_mlp:g}): "
        f"{trials} trials"
    )
    t0 = time.perf_counter()
    client, cluster = connect(None, n_workers=2)
    client.run(lambda: __import__("landscapes") and __import__("engine.experiments.batching"))
    start_s = time.perf_counter() - t0
    loop_s, inproc_s, dask_s, lost, mismatched = [], [], [], 0, 0
    try:
        for r in range(args.rounds):
            t0 = time.perf_counter()
            ref = {}
            for spec in specs:
                ref.update(loop(spec))
            loop_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for spec in specs:  # the batched tasks, one after another here: batching without Dask
                problems = spec.validate(CATALOGS)
                for task in plan(spec, problems):
                    run_task(task, problems[task.problem])
            inproc_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            results = [run_experiment(spec, client=client, catalogs=CATALOGS) for spec in specs]
            dask_s.append(time.perf_counter() - t0)
            got = {}
            for res in results:
                for row in res.frame.itertuples(index=False):
                    key = tuple(getattr(row, c) for c in KEY_COLUMNS)
                    if key in got:
                        lost += 1  # a doubled row counts as lost too: the table must be exact
                    got[key] = row.final_loss
            lost += len(set(ref) - set(got))
            mismatched += sum(
                not (np.isnan(ref[k]) and np.isnan(got[k])) and ref[k] != got[k] for k in set(ref) & set(got)
            )
            print(
                f"round {r + 1}: loop {loop_s[-1]:.1f} s, batched in this process {inproc_s[-1]:.1f} s, "
                f"batched on 2 Dask workers {dask_s[-1]:.1f} s"
            )
    finally:
        client.close()
        cluster.close()
    speedup = statistics.median(a / b for a, b in zip(loop_s, dask_s, strict=True))
    print(f"local cluster start-up (2 workers, once per session, not in the ratio): {start_s:.1f} s")
    alone = statistics.median(a / b for a, b in zip(loop_s, inproc_s, strict=True))
    print(f"batching alone (no Dask): {alone:.2f}x")
    print(
        f"median loop {statistics.median(loop_s):.1f} s, batched {statistics.median(dask_s):.1f} s; "
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
