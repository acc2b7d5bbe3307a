"""Memory of one training step: inference, ZO-SGD (MeZO), SGD and Adam on a wide MLP.

An MLP ``--sizes`` (default 1024-2048-2048-10, ReLU, 6.3 M float32 parameters) on a batch of
``--batch`` random inputs with cross-entropy. Four modes, each measured in its own fresh
interpreter (``engine.memory.measure_peak_subprocess``), after a warm-up of the same step on a
tiny model (first calls import ~800 modules and page in kernels), as the median of ``--repeats``:

* inference: two forwards under ``no_grad``;
* zo_sgd: two steps of the registry's ``zo_sgd`` (MeZO) through
  ``engine.module_oracles.ModuleOracles``: two perturbed forwards per step, the perturbation
  added layer by layer inside the forward, never a copy of the parameters;
* sgd, adam: two steps of the registry's ``sgd`` / ``adam`` (forward, backward, step).

Measured: on CPU the peak RSS above the baseline after the setup (``VmHWM`` reset after the setup,
``MALLOC_MMAP_THRESHOLD_=65536``, ``MKL_DISABLE_FAST_MM=1``, one thread); on CUDA
``max_memory_allocated`` above ``memory_allocated`` with a reset before the step. Accounted (exact,
from the tensors, ``engine.memory.account``): gradients, optimizer state, activations saved for
backward. Last line: ``zo_over_inference=<ratio> adam_over_zo=<ratio>`` (measured peaks above
baseline; goal: zo_over_inference <= 1.05).

    python benchmarks/memory.py [--sizes 1024,2048,2048,10] [--batch 1024] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import copy
import itertools
from dataclasses import replace

import torch

from engine.memory import (
    MemoryReport,
    PeakMeasurement,
    account,
    measure_peak_subprocess,
    mlp,
    saved_activation_bytes,
)
from engine.module_oracles import ModuleOracles
from engine.oracles import CHUNK
from engine.registry import get_spec

MODES = ("inference", "zo_sgd", "sgd", "adam")  # each: engine.memory.mlp_step


def accounted(sizes: tuple[int, ...], n: int) -> dict[str, MemoryReport]:
    """Exact counts of one step per mode, on CPU (they do not depend on the device)."""
    model, batch, loss = mlp(sizes, n)
    params = list(model.parameters())
    with torch.no_grad():
        _, saved = saved_activation_bytes(lambda: loss(model, batch))
    out = {"inference": MemoryReport(sum(p.numel() * p.element_size() for p in params), 0, 0, saved,
                                     optimizer="inference", oracle="none")}
    for name in ("zo_sgd", "sgd", "adam"):
        out[name] = account(name, ModuleOracles(copy.deepcopy(model), loss, batch), steps=2)
    return out


def measured(sizes: tuple[int, ...], n: int, device: str, repeats: int) -> dict[str, PeakMeasurement]:
    out = {}
    for name in MODES:
        params = {"mode": name, "sizes": list(sizes), "batch": n, "device": device}
        runs = sorted((measure_peak_subprocess("engine.memory:mlp_step", params=params, cuda=device == "cuda")
                       for _ in range(repeats)), key=lambda m: m.increase)
        out[name] = replace(runs[(repeats - 1) // 2], hwm_reset=all(m.hwm_reset for m in runs))  # median
        spread = max(m.increase for m in runs) - min(m.increase for m in runs)
        print(f"  {name:<10} runs: {', '.join(f'{m.increase / 1e6:.2f}' for m in runs)} MB "
              f"(spread {spread / 1e6:.2f} MB)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,2048,2048,10", help="layer widths, input first")
    ap.add_argument("--batch", type=int, default=1024, help="samples per step")
    ap.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per mode (median)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    get_spec("zo_sgd")  # fails loudly if the registry has no MeZO

    reports = accounted(sizes, args.batch)
    P = sum(a * b + b for a, b in itertools.pairwise(sizes))
    print(f"MLP {'-'.join(map(str, sizes))} (ReLU): {P:,} float32 parameters = {4 * P / 1e6:.1f} MB; "
          f"batch {args.batch}; device={device}; z drawn in chunks of {CHUNK:,} entries")
    peaks = measured(sizes, args.batch, device, args.repeats)
    kind = next(iter(peaks.values())).kind
    print(f"\npeak: {kind}, above the baseline after setup (model and data resident), median of "
          f"{args.repeats}; the other columns are accounted (exact)")
    print(f"{'mode':<10} {'grads MB':>9} {'state MB':>9} {'saved act MB':>13} {'accounted MB':>13} "
          f"{'peak MB':>9}")
    for name, r in reports.items():
        print(f"{name:<10} {r.gradient_bytes / 1e6:>9.2f} {r.optimizer_state_bytes / 1e6:>9.2f} "
              f"{r.activation_bytes / 1e6:>13.2f} {r.training_bytes / 1e6:>13.2f} "
              f"{peaks[name].increase / 1e6:>9.2f}")
    largest = max(a * b for a, b in itertools.pairwise(sizes)) * 4
    print(f"saved activations include the input batch ({args.batch * sizes[0] * 4 / 1e6:.2f} MB), resident "
          f"before the step and so in the baseline; a peak also holds transients (adam: sqrt(v) and "
          f"sqrt(v)/c + eps of the largest tensor, {largest / 1e6:.1f} MB each)")
    if not all(m.hwm_reset for m in peaks.values()):
        print("warning: the RSS high-water mark could not be reset; peaks may be underestimated")
    inf, zo, adam = (peaks[k].increase for k in ("inference", "zo_sgd", "adam"))
    print(f"zo_sgd - inference = {(zo - inf) / 1e6:+.2f} MB (one chunk of z drawn in float64 is "
          f"{CHUNK * 8 / 1e6:.2f} MB)")
    print(f"zo_over_inference={zo / inf:.3f} adam_over_zo={adam / zo:.2f}")


if __name__ == "__main__":
    main()
