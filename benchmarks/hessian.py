"""Hessian spectra: engine.curvature against PyHessian, same network, same point, one process.

Network: the digits MLP 64-64-10 (tanh, 4,810 parameters) on all 1,797 standardized images, full
batch cross-entropy, after ``--train-steps`` Adam steps (a trained point is where spectra are
usually inspected; ``--train-steps 0`` for the initialization). float64 for both sides (PyHessian
follows the model's dtype), CPU, one thread. Truth: the dense Hessian
(``torch.autograd.functional.hessian``) and ``eigvalsh``.

(a) top-5 eigenvalues: our Lanczos (full reorthogonalization, default stopping rule, which aims at
    errors far below 1e-6) vs PyHessian ``eigenvalues(top_n=5)`` at its defaults (power iteration
    with deflation, tol=1e-3, maxIter=100); plus, for information, PyHessian pushed to tol=1e-8.
(b) SLQ: our ``spectral_density`` (10 probes as one block, 100 steps) vs PyHessian's
    ``density(iter=100, n_v=10)`` (patched ``torch.eig``). Both seeded 0: they draw the very same
    Rademacher probes, so their moments must agree.

(c) instrument overhead: a 1,000-step gradient-descent run of the digits MLP with and without the
    app's default network probes (``engine.instruments.NETWORK_PROBES``), wall-time ratio.

Times are medians over ``--repeats`` interleaved runs and include each side's setup (its
gradient graph). Last line:
``lanczos_speedup_vs_pyhessian=<ratio> slq_speedup_vs_pyhessian=<ratio> top5_relerr=<max>``.

    python benchmarks/hessian.py [--train-steps 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from engine.curvature import HVP, dense_hessian, lanczos, spectral_density
from engine.pyhessian_adapter import pyhessian_density, pyhessian_top_eigenvalues


def digits_mlp(train_steps: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    X, y = torch.tensor(X, dtype=torch.float64), torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(train_steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        loss = float(nn.functional.cross_entropy(model(X), y))
    return model, X, y, loss


def flat_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, theta.split(sizes), shapes, strict=True)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (X,)), y)

    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=50, help="Adam steps before measuring (0: at init)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--slq-steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    model, X, y, loss = digits_mlp(args.train_steps)
    f, theta = flat_loss(model, X, y)
    P = theta.numel()
    t0 = time.perf_counter()
    H = dense_hessian(f, theta)
    eigs = torch.linalg.eigvalsh(H).numpy()
    exact_top = eigs[::-1][:5]
    dense_s = time.perf_counter() - t0
    print(f"digits MLP 64-64-10: {P:,} parameters, {len(y)} samples full batch, float64, cpu, 1 thread; "
          f"{args.train_steps} Adam steps, loss {loss:.4f}; dense Hessian + eigvalsh {dense_s:.1f} s")
    print(f"  exact top-5: {np.array2string(exact_top, precision=6)}  min {eigs[0]:.4g}")

    HVP(f, theta)(torch.ones(P, dtype=torch.float64))  # warm-up: the first HVP in a process pays extra
    pyhessian_top_eigenvalues(model, nn.CrossEntropyLoss(), X, y, top_n=1, max_iter=2)

    # (a) top-5 -------------------------------------------------------------------------------------
    ours_t, pyh_t, ours_err, pyh_err, bounds = [], [], [], [], []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        r = lanczos(HVP(f, theta), 5, generator=torch.Generator().manual_seed(rep))
        ours_t.append(time.perf_counter() - t0)
        ours_err.append(float(np.max(np.abs(r.top - exact_top) / np.abs(exact_top))))
        bounds.append(float(np.max(r.top_error_bounds / np.abs(r.top))))
        p = pyhessian_top_eigenvalues(model, nn.CrossEntropyLoss(), X, y, top_n=5, seed=rep)
        pyh_t.append(p.seconds)
        pyh_vals = np.sort(p.values)[::-1]
        pyh_err.append(float(np.max(np.abs(pyh_vals - exact_top) / np.abs(exact_top))))
    lanczos_speedup = float(np.median(pyh_t) / np.median(ours_t))
    print("top-5 eigenvalues")
    print(f"  ours (Lanczos, full reorth.): {np.median(ours_t) * 1e3:7.1f} ms  {r.hvps:4d} HVPs  "
          f"max rel. error {max(ours_err):.1e}  (its own bound {max(bounds):.1e})")
    print(f"  PyHessian eigenvalues(top_n=5): {np.median(pyh_t) * 1e3:5.1f} ms  {p.hvps:4d} HVPs  "
          f"max rel. error {max(pyh_err):.1e}")
    p8 = pyhessian_top_eigenvalues(model, nn.CrossEntropyLoss(), X, y, top_n=5, tol=1e-8, max_iter=1000)
    p8_err = np.max(np.abs(np.sort(p8.values)[::-1] - exact_top) / np.abs(exact_top))
    print(f"  (PyHessian tol=1e-8, maxIter=1000: {p8.seconds * 1e3:.0f} ms  {p8.hvps} HVPs  "
          f"max rel. error {p8_err:.1e}: {p8.seconds / np.median(ours_t):.0f}x our time)")
    print(f"  ratio {lanczos_speedup:.1f}x")

    # (b) SLQ --------------------------------------------------------------------------------------
    n, m = args.probes, args.slq_steps
    ours_t, pyh_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        d = spectral_density(HVP(f, theta), n_probes=n, m=m, generator=torch.Generator().manual_seed(0))
        ours_t.append(time.perf_counter() - t0)
        pd = pyhessian_density(model, nn.CrossEntropyLoss(), X, y, n_probes=n, iterations=m, seed=0)
        pyh_t.append(pd.seconds)
    slq_speedup = float(np.median(pyh_t) / np.median(ours_t))
    m1, m2 = float(eigs.mean()), float((eigs**2).mean())
    print(f"SLQ, {n} probes x {m} Lanczos steps (exact tr(H)/P = {m1:.6g}, tr(H^2)/P = {m2:.6g})")
    print(f"  ours (one block of {n}):  {np.median(ours_t):6.2f} s  {d.hvps:5d} HVPs  "
          f"moments {d.moment(1):.6g}, {d.moment(2):.6g}")
    print(f"  PyHessian density():    {np.median(pyh_t):6.2f} s  {pd.hvps:5d} HVPs  "
          f"moments {pd.moment(1):.6g}, {pd.moment(2):.6g}")
    print(f"  ratio {slq_speedup:.1f}x")

    overhead = instrument_overhead()
    print(f"instrument overhead: {overhead:.2f}x the run time (goal <= 1.25x)")

    print(f"lanczos_speedup_vs_pyhessian={lanczos_speedup:.2f} slq_speedup_vs_pyhessian={slq_speedup:.2f} "
          f"top5_relerr={max(ours_err):.1e}")


def instrument_overhead(steps: int = 1000) -> float:
    """The same gradient-descent run (digits MLP, full batch, lr 0.1) with and without probes at the
    app's default network schedule, side by side: wall-time ratio."""
    from engine.instruments import NETWORK_PROBES
    from engine.run import LaneConfig, Run, RunConfig
    from landscapes.networks import get_network

    problem = get_network("digits_mlp", batch_size=None)
    times = {}
    for label, probes in (("plain", None), ("probed", NETWORK_PROBES)):
        run = Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.1}),), device="cpu", probes=probes))
        t0 = time.perf_counter()
        records = run.run(steps)
        times[label] = time.perf_counter() - t0
        n = sum(r.curvature is not None for r in records)
    print(f"instruments on a training run: digits MLP, GD lr 0.1, {steps} steps, probes every "
          f"{NETWORK_PROBES.every} steps ({n} probes, tol {NETWORK_PROBES.tol:g}): "
          f"plain {times['plain']:.2f} s, probed {times['probed']:.2f} s")
    return times["probed"] / times["plain"]


if __name__ == "__main__":
    main()
