"""Batched race vs the same runs one at a time, side by side in one process.

N trajectories of Adam on Rosenbrock from N seeded random starts: (a) one ``engine.run.Run``
with N rows (one tensor program per step, records kept every step), (b) the same N runs one at a
time as a plain torch loop (``torch.optim.Adam`` on a 2-vector, the fastest thing a user would
write). Both must end at the same points. Last line: ``race_speedup=<ratio>`` (goal >= 1000).

    python benchmarks/race.py [--n 10000] [--steps 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_landscape


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="trajectories")
    ap.add_argument("--steps", type=int, default=20, help="steps per trajectory")
    args = ap.parse_args()
    torch.set_num_threads(1)
    problem = get_landscape("rosenbrock")
    cfg = RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-2}),), n_starts=args.n, seed=0, device="cpu")

    run = Run(problem, cfg)
    run.step()  # warm-up (first-call costs), then restart from the same starts
    run = Run(problem, cfg)
    t0 = time.perf_counter()
    records = run.run(args.steps)
    batched = time.perf_counter() - t0
    assert len(records) == args.steps

    starts = run.starts.clone()
    ends = np.empty((args.n, 2))
    t0 = time.perf_counter()
    for i in range(args.n):
        x = starts[i].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=1e-2)
        for _ in range(args.steps):
            opt.zero_grad()
            problem.loss(x[None]).sum().backward()
            opt.step()
        ends[i] = x.detach().numpy()
    loop = time.perf_counter() - t0

    np.testing.assert_allclose(run.positions(0), ends, rtol=1e-10, atol=1e-12)
    point_steps = args.n * args.steps
    print(f"trajectories={args.n} steps={args.steps} device=cpu threads=1")
    print(f"batched: {batched:.3f} s  ({point_steps / batched:,.0f} point-steps/s, records every step)")
    print(f"loop:    {loop:.3f} s  ({point_steps / loop:,.0f} point-steps/s)")
    print("final positions agree (rtol 1e-10)")
    print(f"race_speedup={loop / batched:.0f}")


if __name__ == "__main__":
    main()
