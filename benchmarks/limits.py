"""How well engine.limits' operation counts predict real step times, and how fast a refusal is.

For each case, the estimate's operations of an ordinary step, of a metrics step and of a cold
curvature probe (no warm start: a fresh run's first probe) are turned into seconds at
``Limits.ops_per_second`` and divided by the measured median time (so 1.0 is a perfect
prediction, > 1 a pessimistic one). Then the hostile requests of issue 17 are checked and the
time each refusal took is printed. CPU, one thread, medians over ``--steps`` steps, one process.

Last line: ``cases=<n> step_ratio_min=<r> step_ratio_max=<r> probe_ratio_min=<r> probe_ratio_max=<r>
refusal_ms_max=<ms>``.

    python benchmarks/limits.py [--steps 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

import landscapes
from engine.instruments import NETWORK_PROBES, ProbeConfig
from engine.limits import DEFAULT_LIMITS, LimitError, check_run, estimate_run
from engine.run import LaneConfig, Run, RunConfig


def config(*names: str, **kw: Any) -> RunConfig:
    return RunConfig(lanes=tuple(LaneConfig(n, {}) for n in names), device="cpu", **kw)


CASES = [
    ("rosenbrock", {}, config("sgd", "momentum", "adam")),
    ("quadratic", {"dim": 100_000}, config("sgd", "adam")),
    ("rastrigin", {"dim": 100_000}, config("adam")),
    ("rosenbrock", {"dim": 100_000}, config("adam", n_starts=4)),
    ("digits_mlp", {}, config("sgd", "momentum", "adam", probes=NETWORK_PROBES)),
    ("digits_mlp", {}, config("sgd", "momentum", "adam", n_starts=16)),
    ("digits_mlp", {"width": 1024}, config("sgd", "momentum", "adam")),
    ("digits_mlp", {"width": 256, "depth": 2, "batch_size": None}, config("adam")),
    ("digits_mlp_mse", {}, config("sgd", probes=ProbeConfig(every=1, top_k=10, trace=True, density=True,
                                                            tol=1e-4))),
    ("digits_cnn", {}, config("adam", probes=NETWORK_PROBES)),
    ("moons_mlp", {}, config("adam", n_starts=8)),
    ("matrix_sensing", {"n": 100}, config("sgd")),
    ("quadratic", {"dim": 1000}, config("cbo", "zo_sgd", "newton")),
]
HOSTILE = [
    ("quadratic", {"dim": 10**9}, config("sgd"), ()),
    ("digits_mlp", {"width": 20_000, "depth": 3}, config("sgd"), ()),
    ("rosenbrock", {"dim": 10**8}, config("sgd", n_starts=64), ()),
    ("matrix_sensing", {"n": 3000}, config("sgd"), ()),
    ("digits_mlp", {}, config("sgd", probes=ProbeConfig(trace=True, trace_probes=10**9)), ()),
]


def build(name: str, options: dict[str, Any]) -> Any:
    if name in landscapes.available_networks():
        return landscapes.get_network(name, **options)
    return landscapes.get_landscape(name, **options)


def measure(name: str, options: dict[str, Any], cfg: RunConfig, steps: int) -> tuple[float, float, float]:
    """Median seconds of an ordinary step, of a metrics step, and of the cold first probe (0 if none)."""
    run = Run(build(name, options), cfg)
    probe = 0.0
    if cfg.probes is not None:
        t0 = run.probe_time
        run.step()
        probe = (run.probe_time - t0) / len(cfg.lanes)
        run.probes = None  # time the steps alone from here on
    else:
        run.step()
    plain, metrics = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        run.step()
        dt = time.perf_counter() - t0
        (metrics if next(iter(run.lanes.values())).step % cfg.metrics_every == 1 else plain).append(dt)
    return statistics.median(plain), statistics.median(metrics) if metrics else float("nan"), probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rate = DEFAULT_LIMITS.ops_per_second
    step_ratios, probe_ratios = [], []
    for name, options, cfg in CASES:
        est = estimate_run(name, options, cfg)
        plain, metric, probe = measure(name, options, cfg, args.steps)
        ordinary = est.step_ops - dict(est.step).get("metrics pass", 0.0)
        ratio = ordinary / rate / plain
        step_ratios.append(ratio)
        line = f"{est.label:58s} step {plain * 1e3:8.2f} ms predicted/measured {ratio:5.2f}"
        if metric == metric:
            line += f" | metrics step {metric * 1e3:8.2f} ms ratio {est.step_ops / rate / metric:5.2f}"
        if probe:
            probe_ratios.append(est.probe_ops / rate / probe)
            line += f" | cold probe {probe * 1e3:8.1f} ms ratio {probe_ratios[-1]:5.2f}"
        print(line, flush=True)
    refusal = []
    for name, options, cfg, events in HOSTILE:
        t0 = time.perf_counter()
        try:
            check_run(name, options, cfg, events)
            message = "ACCEPTED"
        except LimitError as exc:
            message = str(exc)
        refusal.append(time.perf_counter() - t0)
        print(f"refused in {refusal[-1] * 1e3:6.2f} ms: {message[:150]}")
    print(f"cases={len(CASES)} step_ratio_min={min(step_ratios):.2f} step_ratio_max={max(step_ratios):.2f} "
          f"probe_ratio_min={min(probe_ratios):.2f} probe_ratio_max={max(probe_ratios):.2f} "
          f"refusal_ms_max={max(refusal) * 1e3:.2f}")


if __name__ == "__main__":
    main()
