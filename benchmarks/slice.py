"""Loss-landscape slices: batched grid vs a point-by-point loop, same grid, one process.

For each problem a network is trained 100 Adam steps; the slice is the PCA plane of that trajectory
on the app's default 31 x 31 grid in float32 (the app's choice for pictures). (a)
``engine.slices.slice_grid`` as the app calls it (it measures batched chunks of 32 vmapped points
against single points on the first 64 points and keeps the faster); (b) a loop evaluates one point
per call. Both must agree. Problems: the two-moons MLP (300 samples: per-call overhead
dominates, batching pays) and the digits MLP 64-64-10 on its full 1,348-image training set (each
point is already one large matrix product, so batching can gain little). Last line, for the
digits MLP: ``slice_speedup=<ratio>``.

    python benchmarks/slice.py [--n 31] [--chunk N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from engine.run import LaneConfig, Run, RunConfig
from engine.slices import grid_around, pca_plane, project, slice_grid
from landscapes.networks import get_network


def measure(name: str, n: int, chunk: int) -> float:
    problem = get_network(name)
    run = Run(problem, RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-3}),), device="cpu"))
    run.run(100)
    traj = run.trajectory(0)[1]
    plane = pca_plane(traj)
    alphas, betas = grid_around(project(plane, traj), n=n)
    dtype = torch.float32

    problem.loss(torch.tensor(traj[:2], dtype=dtype))  # warm-up: first vmapped call
    batched = slice_grid(problem.loss, plane, alphas, betas, chunk=chunk, dtype=dtype)
    forced = slice_grid(problem.loss, plane, alphas, betas, chunk=32, dtype=dtype)

    c, d1, d2 = (torch.tensor(v, dtype=dtype) for v in (plane.center, plane.d1, plane.d2))
    loop = np.empty((len(betas), len(alphas)))
    t0 = time.perf_counter()
    with torch.no_grad():
        for j, b in enumerate(betas):
            for i, a in enumerate(alphas):
                loop[j, i] = float(problem.loss(c + float(a) * d1 + float(b) * d2))
    loop_s = time.perf_counter() - t0

    np.testing.assert_allclose(batched.loss, loop, rtol=1e-4)
    print(f"{name}: {problem.dim:,} parameters, {len(problem.X_train)} training samples, "
          f"{batched.evaluations} grid points (float32, cpu, 1 thread)")
    print(f"  slice_grid: {batched.seconds:.2f} s   always batched (chunks of 32): {forced.seconds:.2f} s   "
          f"point-by-point: {loop_s:.2f} s   ratio {loop_s / batched.seconds:.1f}x   "
          "(grids agree, rtol 1e-4)")
    return loop_s / batched.seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=31, help="grid points per axis")
    ap.add_argument("--chunk", type=int, default=None,
                    help="grid points per batched call (default: measured)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    measure("moons_mlp", args.n, args.chunk)
    speedup = measure("digits_mlp", args.n, args.chunk)
    print(f"slice_speedup={speedup:.1f}")


if __name__ == "__main__":
    main()
