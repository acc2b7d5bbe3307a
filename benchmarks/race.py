"""The batched race against its floor, and against the same runs one at a time, in one process.

Everything runs side by side in one process on the CPU, float64, one thread; a figure is the
median over ``--rounds`` interleaved rounds (each round times every contestant once, in turn).

(a) **The floor.** The least a batched race of N Adam runs on Rosenbrock can cost per step: one
    ``[N, 2]`` leaf, the closed-form Rosenbrock, ``loss.sum().backward()`` and
    ``torch.optim.Adam(fused=True)``. Against it, ``engine.run.Run.run`` on the same N starts with
    a record every step (the app's schedule: its ``RunWorker`` keeps a record of every step it
    takes) and with one record at the end, at each N of ``--sizes``.
(b) **A race of eight.** Eight optimizers (the ``torch.optim`` ones) x 1,000 starts as one run,
    a record every step, against eight plain programs (one ``[1000, 2]`` leaf and one
    ``torch.optim`` optimizer each, ``fused=True`` where torch has it on the CPU).
(c) **A network.** The digits MLP (64-64-10, minibatches of 64, Adam) as a run without probes
    (its metrics on their schedule, ``metrics_every=10``; a record every step), against a plain
    training loop over the same module, minibatches and optimizer, with and without the same
    full-set metrics every 10 steps.
(d) **One at a time.** N runs of Adam as one run vs a Python loop of N plain runs (a 2-vector
    each): both must end at the same points. ``race_speedup=<ratio>`` (goal >= 1000).

Last line: ``race_over_floor=<engine / floor per step at N = 10,000, a record every step>``
(goals: <= 1.3 at N >= 10,000, <= 2 at N = 100; a network without probes <= 1.2x its loop).

    python benchmarks/race.py [--sizes 100,10000,1000000] [--rounds 5] [--loop-n 10000]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_landscape, get_network

APP_RECORD_EVERY = 3
"""Steps per record on the app's schedule: it steps at 60 steps/s by default and draws at 20 Hz
(``PUMP_MS = 50``), so it shows one record in three."""

Stepper = Callable[[int], None]
"""Takes ``k`` steps of one contestant (state persists between calls)."""

EIGHT: tuple[tuple[str, type[torch.optim.Optimizer], dict], ...] = (
    # SGD-type learning rates small enough that no start in Rosenbrock's box diverges
    ("sgd", torch.optim.SGD, {"lr": 1e-4}),
    ("momentum", torch.optim.SGD, {"lr": 1e-4, "momentum": 0.9}),
    ("nesterov", torch.optim.SGD, {"lr": 1e-4, "momentum": 0.9, "nesterov": True}),
    ("adam", torch.optim.Adam, {"lr": 1e-3}),
    ("adamw", torch.optim.AdamW, {"lr": 1e-3, "weight_decay": 0.01}),
    ("amsgrad", torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),
    ("rmsprop", torch.optim.RMSprop, {"lr": 1e-2}),
    ("adagrad", torch.optim.Adagrad, {"lr": 0.1}),
)
_ENGINE_HP = {"sgd": ("lr",), "momentum": ("lr", "momentum"), "nesterov": ("lr", "momentum"),
              "adam": ("lr",), "adamw": ("lr", "weight_decay"), "amsgrad": ("lr",), "rmsprop": ("lr",),
              "adagrad": ("lr",)}
_FUSED_ON_CPU = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad)


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """The closed form :math:`(1 - x)^2 + 100 (y - x^2)^2` per row of ``[N, 2]``."""
    a = x[:, 0]
    t = x[:, 1] - a * a
    u = 1.0 - a
    return 100.0 * t * t + u * u


def plain(starts: torch.Tensor, cls: type[torch.optim.Optimizer], hp: dict) -> Stepper:
    """One leaf, one optimizer (fused where torch has it on the CPU): the floor's program."""
    x = starts.clone().requires_grad_(True)
    opt = cls([x], **hp, **({"fused": True} if cls in _FUSED_ON_CPU else {}))

    def steps(k: int) -> None:
        for _ in range(k):
            rosenbrock(x).sum().backward()
            opt.step()
            opt.zero_grad()
    return steps


def plain_many(starts: torch.Tensor, contestants: list[tuple[type[torch.optim.Optimizer], dict]]) -> Stepper:
    programs = [plain(starts, cls, hp) for cls, hp in contestants]

    def steps(k: int) -> None:
        for _ in range(k):
            for p in programs:
                p(1)
    return steps


def engine(problem, cfg: RunConfig, record_every: int | None) -> Stepper:
    """``Run.run`` in chunks of ``k`` steps: a record every ``record_every`` steps, or (None) one
    record at the end of each chunk; the records are kept, as the app keeps them."""
    run = Run(problem, cfg)
    kept: list = []

    def steps(k: int) -> None:
        if record_every is None:
            for _ in range(k - 1):
                run.step(record=False)
            kept.extend(run.step())
        else:
            kept.extend(run.run(k, record_every=record_every))
        del kept[:-64]  # bounded memory at 1M rows; the records were built
    return steps


def per_step(contestants: dict[str, Stepper], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per step of each contestant over interleaved rounds (each warmed once), in
    CPU seconds of this thread: on a shared machine, time spent waiting for a core is not counted."""
    for fn in contestants.values():
        fn(2)
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, fn in contestants.items():
            t0 = time.thread_time()
            fn(steps)
            times[name].append((time.thread_time() - t0) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def steps_for(n: int) -> int:
    """Steps per timed round: ~0.1-0.5 s of work for every size."""
    return max(4, min(200, 2_000_000 // max(n, 1)))


def floor_section(sizes: list[int], rounds: int) -> dict[int, dict[str, float]]:
    problem = get_landscape("rosenbrock")
    out = {}
    for n in sizes:
        cfg = RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-3}),), n_starts=n, seed=0, device="cpu")
        starts = Run(problem, cfg).starts
        t = per_step({"floor": plain(starts, torch.optim.Adam, {"lr": 1e-3}),
                      "every": engine(problem, cfg, 1),
                      "app": engine(problem, cfg, APP_RECORD_EVERY),
                      "end": engine(problem, cfg, None)}, steps_for(n), rounds)
        out[n] = t
        print(f"N={n:>9,}  floor {t['floor'] * 1e6:9.0f} us/step   engine: a record every step "
              f"{t['every'] / t['floor']:.2f}x, on the app's schedule {t['app'] / t['floor']:.2f}x, "
              f"one at the end {t['end'] / t['floor']:.2f}x")
    return out


def eight_section(rounds: int, n: int = 1_000) -> float:
    problem = get_landscape("rosenbrock")
    lanes = tuple(LaneConfig(name, {k: hp[k] for k in _ENGINE_HP[name]}) for name, _, hp in EIGHT)
    cfg = RunConfig(lanes=lanes, n_starts=n, seed=0, device="cpu")
    starts = Run(problem, cfg).starts
    t = per_step({"plain": plain_many(starts, [(cls, hp) for _, cls, hp in EIGHT]),
                  "engine": engine(problem, cfg, 1)}, steps_for(8 * n), rounds)
    ratio = t["engine"] / t["plain"]
    print(f"race of eight x {n:,} starts: engine {t['engine'] * 1e6:.0f} us/step (a record every step), "
          f"eight plain optimizers {t['plain'] * 1e6:.0f} us/step: {ratio:.2f}x")
    return ratio


def network_section(rounds: int, steps: int = 100) -> tuple[float, float]:
    problem = get_network("digits_mlp")
    cfg = RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-3}),), seed=0, device="cpu", metrics_every=10)

    def loop(metrics: bool) -> Stepper:
        module = copy.deepcopy(problem.module).train()
        opt = torch.optim.Adam(module.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        X, y, n = problem.X_train, problem.y_train, len(problem.X_train)
        state = {"t": 0}

        def run(k: int) -> None:
            for _ in range(k):
                if metrics and state["t"] % 10 == 0:
                    with torch.no_grad():
                        module.eval()
                        for Xs, ys in ((X, y), (problem.X_test, problem.y_test)):
                            out = module(Xs)
                            F.cross_entropy(out, ys), (out.argmax(-1) == ys).double().mean()
                        module.train()
                idx = torch.randperm(n, generator=gen)[:64]
                F.cross_entropy(module(X[idx]), y[idx]).backward()
                opt.step()
                opt.zero_grad()
                state["t"] += 1
        return run

    t = per_step({"loop": loop(False), "loop+metrics": loop(True), "engine": engine(problem, cfg, 1)},
                 steps, rounds)
    bare, with_metrics = t["engine"] / t["loop"], t["engine"] / t["loop+metrics"]
    print(f"digits MLP, no probes: engine {t['engine'] * 1e6:.0f} us/step; plain loop "
          f"{t['loop'] * 1e6:.0f} us/step ({bare:.2f}x), with the same metrics every 10 steps "
          f"{t['loop+metrics'] * 1e6:.0f} us/step ({with_metrics:.2f}x)")
    return bare, with_metrics


def speedup_section(n: int, steps: int) -> float:
    problem = get_landscape("rosenbrock")
    cfg = RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-2}),), n_starts=n, seed=0, device="cpu")
    Run(problem, cfg).step()  # warm-up (first-call costs)
    run = Run(problem, cfg)
    t0 = time.perf_counter()
    records = run.run(steps)
    batched = time.perf_counter() - t0
    assert len(records) == steps

    starts = run.starts.clone()
    ends = np.empty((n, 2))
    t0 = time.perf_counter()
    for i in range(n):
        x = starts[i].clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            problem.loss(x[None]).sum().backward()
            opt.step()
        ends[i] = x.detach().numpy()
    loop = time.perf_counter() - t0

    np.testing.assert_allclose(run.positions(0), ends, rtol=1e-10, atol=1e-12)
    point_steps = n * steps
    print(f"one at a time: {n} trajectories x {steps} steps; batched {batched:.3f} s "
          f"({point_steps / batched:,.0f} point-steps/s, records every step), loop {loop:.3f} s "
          f"({point_steps / loop:,.0f} point-steps/s); final positions agree (rtol 1e-10)")
    return loop / batched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,10000,1000000", help="starts N for the floor comparison")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians)")
    ap.add_argument("--loop-n", type=int, default=10_000, help="trajectories for race_speedup")
    ap.add_argument("--loop-steps", type=int, default=20, help="steps per trajectory for race_speedup")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"device=cpu dtype=float64 threads=1 rounds={args.rounds} (medians of interleaved rounds)")
    floors = floor_section(sizes, args.rounds)
    eight_section(args.rounds)
    network_section(args.rounds)
    speedup = speedup_section(args.loop_n, args.loop_steps)
    print(f"race_speedup={speedup:.0f}")
    n = 10_000 if 10_000 in floors else sizes[-1]
    print(f"race_over_floor={floors[n]['every'] / floors[n]['floor']:.2f}")


if __name__ == "__main__":
    main()
