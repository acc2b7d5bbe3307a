"""Per-step time of a zeroth-order lane (ZO-SGD, MeZO) vs a first-order one (SGD), side by side.

Both race alone on the digits MLP (64-64-10, minibatch 64, float64, CPU, one thread), each in its
own ``Run``, interleaved round by round; medians over rounds. Times are the process's CPU time
(``time.process_time``: with one thread, what the steps cost, unlike wall time not inflated by
other programs sharing the machine); the lane's own share comes from its records. A
zeroth-order method needs two forward passes per step and no backward pass. Before the instrument
schedule a run paid a full backward pass every step for its recorded gradient norm; now that norm
is measured every ``RunConfig.grad_norm_every`` steps (the default, 10) and counted as
instrumentation, apart from the lane's own time (``Record.compute_time``). Works against older
engines too (it then prints only the wall-clock figures), so before/after can be compared.

    python benchmarks/zo_step.py [--steps 50] [--rounds 7]

Last line: ``zo_over_sgd=<ratio of per-step CPU times>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_network


def per_step(optimizer: str, lr: float, steps: int) -> tuple[float, float | None]:
    """(CPU seconds per ``run.step()``, the lane's own share of the step if its records say)."""
    run = Run(get_network("digits_mlp"), RunConfig(lanes=(LaneConfig(optimizer, {"lr": lr}),), device="cpu",
                                                   metrics_every=10**9))
    run.step()  # first-call costs
    first = run.step()[0]
    t0 = time.process_time()
    for _ in range(steps):
        (rec,) = run.step()
    cpu = (time.process_time() - t0) / steps
    if not hasattr(rec, "compute_time"):  # an engine from before the instrument schedule
        return cpu, None
    share = (rec.compute_time - first.compute_time) / (rec.wall_time - first.wall_time)
    return cpu, cpu * share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lanes = {"sgd": 0.1, "zo_sgd": 1e-3}
    wall: dict[str, list[float]] = {k: [] for k in lanes}
    own: dict[str, list[float]] = {k: [] for k in lanes}
    for _ in range(args.rounds):
        for name, lr in lanes.items():
            w, o = per_step(name, lr, args.steps)
            wall[name].append(w)
            if o is not None:
                own[name].append(o)
    print(f"digits MLP 64-64-10, batch 64, float64, cpu, 1 thread; {args.rounds} rounds x {args.steps} steps "
          "(medians)")
    for name in lanes:
        line = f"{name:>7}: {1e3 * statistics.median(wall[name]):6.2f} ms/step (CPU)"
        if own[name]:
            line += f", of which the lane's own method {1e3 * statistics.median(own[name]):5.2f} ms"
        print(line)
    print(f"zo_over_sgd={statistics.median(wall['zo_sgd']) / statistics.median(wall['sgd']):.2f}")


if __name__ == "__main__":
    main()
