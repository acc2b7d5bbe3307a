"""The batched race against its floor, and against the same runs one at a time, in one process.

Everything runs side by side in one process on the CPU, float64, one thread; a figure is the
median over ``--rounds`` interleaved rounds (each round times every contestant once, in turn) of
the CPU seconds this thread spent per step (on a shared machine, waiting for a core is not
counted). The app keeps a record of every step its worker takes and draws one in
``APP_RECORD_EVERY`` (60 steps/s at a 20 Hz pump): "records on the app's schedule" is one record
every ``APP_RECORD_EVERY`` steps (``Run.run(record_every=3)``); the newest few are kept alive.

(a) **The floor.** The least a batched race of N Adam runs on Rosenbrock can cost per step: one
    ``[N, 2]`` leaf, the closed-form Rosenbrock (the landscape's own ``loss``, the function the
    run calls), ``loss.sum().backward()`` and ``torch.optim.Adam(fused=True)``. Against it,
    ``Run.run`` on the same N starts: a record every step, on the app's schedule (also with
    ``RunConfig(fused=False)``: torch's single-tensor Adam, bit for bit the arithmetic of earlier
    versions) and one record at the end, at each N of ``--sizes``.
(b) **A race of eight.** The eight ``torch.optim`` optimizers x 1,000 starts as one run, against
    eight plain programs (a ``[1000, 2]`` leaf and an optimizer each, ``fused=True`` where torch
    has it on the CPU).
(c) **A network.** The digits MLP (64-64-10, minibatches of 64, Adam) as a run without probes
    (full-set metrics every 10 steps) against a plain training loop over the same module,
    minibatches and optimizer that computes the same metrics on the same schedule (also: with
    fused Adam, and without metrics).
(d) **One at a time.** N runs of Adam as one run vs a Python loop of N plain runs (a 2-vector
    each): both must end at the same points. ``race_speedup=<ratio>`` (goal >= 1000).

Goals: <= 1.3x the floor at N >= 10,000 and <= 2x at N = 100 with records on the app's schedule;
a network run without probes <= 1.2x its plain loop (``network_over_loop=<ratio>``, records on the
app's schedule, against the loop with the same metrics). Last line: ``race_over_floor=<the run / the
floor per step at N = 10,000, records on the app's schedule>``.

    python benchmarks/race.py [--sizes 100,10000,1000000] [--rounds 5] [--loop-n 10000]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from engine.run import LaneConfig, Run, RunConfig
from landscapes import get_landscape, get_network

APP_RECORD_EVERY = 3
"""Steps per record on the app's schedule: it steps at 60 steps/s by default and a page shows ~20
updates a second (benchmarks/stream.py), so a screen sees one record in three."""

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


ROSENBROCK = get_landscape("rosenbrock")
"""Its ``loss`` is the closed form :math:`\\sum (1 - x_i)^2 + 100 (x_{i+1} - x_i^2)^2` over rows
``[N, d]``: the floor calls the very function the engine calls, so only the engine differs."""


def plain(starts: torch.Tensor, cls: type[torch.optim.Optimizer], hp: dict) -> Stepper:
    """One leaf, one optimizer (fused where torch has it on the CPU): the floor's program."""
    x = starts.clone().requires_grad_(True)
    opt = cls([x], **hp, **({"fused": True} if cls in _FUSED_ON_CPU else {}))
    loss = ROSENBROCK.loss

    def steps(k: int) -> None:
        for _ in range(k):
            loss(x).sum().backward()
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
    """``Run.step`` as the app's worker calls it, keeping the newest few records as the app does
    (it drains them at 20 Hz): a record every ``record_every`` ticks, or (None) one at the end of
    each call."""
    run = Run(problem, cfg)
    kept: deque = deque(maxlen=4)

    def steps(k: int) -> None:
        for i in range(k):
            last = i == k - 1
            kept.extend(run.step(record=last if record_every is None else run.tick % record_every == 0))
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
    return max(8, min(200, 2_000_000 // max(n, 1)))


def floor_section(sizes: list[int], rounds: int) -> dict[int, dict[str, float]]:
    problem = ROSENBROCK
    out = {}
    for n in sizes:
        cfg = RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-3}),), n_starts=n, seed=0, device="cpu")
        starts = Run(problem, cfg).starts
        t = per_step({"floor": plain(starts, torch.optim.Adam, {"lr": 1e-3}),
                      "every": engine(problem, cfg, 1),
                      "app": engine(problem, cfg, APP_RECORD_EVERY),
                      "single": engine(problem, dataclasses.replace(cfg, fused=False), APP_RECORD_EVERY),
                      "end": engine(problem, cfg, None)}, steps_for(n), rounds)
        out[n] = t
        r = {k: v / t["floor"] for k, v in t.items()}
        print(f"N={n:>9,}: floor {t['floor'] * 1e6:,.0f} us/step; the run {r['every']:.2f}x with a record "
              f"every step, {r['app']:.2f}x on the app's schedule ({r['single']:.2f}x with fused=False), "
              f"{r['end']:.2f}x with one record at the end")
    return out


def eight_section(rounds: int, n: int = 1_000) -> float:
    problem = ROSENBROCK
    lanes = tuple(LaneConfig(name, {k: hp[k] for k in _ENGINE_HP[name]}) for name, _, hp in EIGHT)
    cfg = RunConfig(lanes=lanes, n_starts=n, seed=0, device="cpu")
    starts = Run(problem, cfg).starts
    t = per_step({"plain": plain_many(starts, [(cls, hp) for _, cls, hp in EIGHT]),
                  "every": engine(problem, cfg, 1), "app": engine(problem, cfg, APP_RECORD_EVERY)},
                 steps_for(8 * n), rounds)
    print(f"race of eight x {n:,} starts: eight plain optimizers {t['plain'] * 1e6:.0f} us/step; the run "
          f"{t['every'] / t['plain']:.2f}x with a record every step, {t['app'] / t['plain']:.2f}x on the "
          f"app's schedule")
    return t["app"] / t["plain"]


def network_section(rounds: int, steps: int = 100) -> float:
    problem = get_network("digits_mlp")
    cfg = RunConfig(lanes=(LaneConfig("adam", {"lr": 1e-3}),), seed=0, device="cpu", metrics_every=10)

    def loop(metrics: bool, fused: bool = False) -> Stepper:
        module = copy.deepcopy(problem.module).train()
        opt = torch.optim.Adam(module.parameters(), lr=1e-3, fused=fused)
        gen = torch.Generator().manual_seed(0)
        X, y, n = problem.X_train, problem.y_train, len(problem.X_train)
        state = {"t": 0}

        def run(k: int) -> None:
            for _ in range(k):
                if metrics and state["t"] % 10 == 0:  # what the run measures on its schedule
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

    t = per_step({"bare": loop(False), "loop": loop(True), "fused": loop(True, fused=True),
                  "every": engine(problem, cfg, 1), "app": engine(problem, cfg, APP_RECORD_EVERY)},
                 steps, rounds)
    print(f"digits MLP 64-64-10, Adam, minibatches of 64, no probes: plain loop with the same metrics "
          f"every 10 steps {t['loop'] * 1e6:.0f} us/step (torch's default Adam; {t['fused'] * 1e6:.0f} with "
          f"fused Adam, {t['bare'] * 1e6:.0f} without metrics)")
    for key, what in (("every", "a record every step"), ("app", "records on the app's schedule")):
        print(f"  run, {what}: {t[key] * 1e6:.0f} us/step = {t[key] / t['loop']:.2f}x the plain loop "
              f"({t[key] / t['fused']:.2f}x with fused Adam, {t[key] / t['bare']:.2f}x without metrics)")
    return t["app"] / t["loop"]


def speedup_section(n: int, steps: int) -> float:
    problem = ROSENBROCK
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
    print(f"device=cpu dtype=float64 threads=1 rounds={args.rounds}: medians of interleaved rounds, CPU "
          f"seconds of this thread per step; records on the app's schedule = one in {APP_RECORD_EVERY}")
    floors = floor_section(sizes, args.rounds)
    eight_section(args.rounds)
    network = network_section(args.rounds)
    speedup = speedup_section(args.loop_n, args.loop_steps)
    print(f"race_speedup={speedup:.0f}")
    print(f"network_over_loop={network:.2f}")
    n = 10_000 if 10_000 in floors else sizes[-1]
    print(f"race_over_floor={floors[n]['app'] / floors[n]['floor']:.2f}")


if __name__ == "__main__":
    main()
