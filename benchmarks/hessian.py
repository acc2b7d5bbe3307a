"""Curvature probes: cold and warm Lanczos, instrument overhead and SLQ against their peers, side by side.

Everything runs in one process on the CPU with one thread, timed as medians of ``--repeats``
interleaved rounds and printed as ratios measured side by side.

(a) Cold top-5 of the digits MLP 64-64-10 (tanh, 4,810 parameters, all 1,797 standardized images,
    full-batch cross-entropy, after 50 Adam steps) to 1e-6 relative error against the dense
    Hessian: ``engine.curvature.lanczos`` vs hessian-eigenthings' ``lanczos`` (no stopping rule: the
    fewest steps that reach 1e-6, found by trying, which favours it) and PyHessian's
    ``eigenvalues`` (power iteration; it cannot reach 1e-6: its normalization adds a -2e-6 bias),
    in float64 and float32.
(b) HVP strategy: a looped product vs a block through ``is_grads_batched`` (what ``HVP`` and
    ``spectral_density`` use is the faster of the two).
(c) Warm vs cold probes along a training run: the edge-of-stability setting (``digits_mlp_mse``,
    full-batch gradient descent at lr 0.2, float64) probed every 1 / 16 / 50 steps with the run's
    own probes, warm-started as usual or cold (its Ritz vectors forgotten before every probe), at
    the same tolerance: HVPs per probe, and for top-1 each probe's lambda_max against a reference
    to 1e-10 (worst relative error; probes above tol and above their reported residual).
(d) Instrument overhead: a plain run vs sharpness (top-1, tol 1e-4) every 1 / 16 / 50 steps
    (single-lane ``digits_mlp`` gradient descent at lr 0.1, full batch, float64 and float32 runs);
    Cockpit 1.0.2's HessMaxEV beside a plain loop in float32 (it fails in float64).
(h) The runs of (d) later in training (float64): every run first takes ``--late`` steps (1,000;
    the probed ones probing on their schedule, untimed), then plain, economy and sharpness-only
    runs step side by side as in (d) for ``--steps-every1`` / ``--steps`` steps. The Hessian of
    the digits MLP changes fast in the first few hundred steps (its top eigenvalues cross there:
    a warm probe then needs 4-20 products) and slowly after, where a warm probe needs 1-2.
(e) Presets on the edge-of-stability run (two lanes, lr 0.2 and 0.1, every 50 steps): the share of
    compute in probes (``Run.probe_overhead``) after 100 and 1,000 steps and the products per probe
    (warm ones: after the first) for sharpness, economy (the app's default), economy with float64
    products, business and full; sharpness vs economy on the app's preset as shipped (lr 0.4
    and 0.3, every 10 steps); and the sharpness and economy presets as shipped (float32 products)
    every 1 / 16 steps on (d)'s run against a plain run stepped alongside (process time).
(g) Gradient-noise instruments (``engine.noise``) on the same runs: (1) each preset of (e) with and
    without its noise fields (per-sample gradient variance and SNR, g-SNR, norm test; the
    estimate cosine), and the economy preset plus each one alone; (2) a minibatch race (digits_mlp,
    batch 64, SGD and MeZO / ZO-SGD q=4 lanes, float64 run) with economy probes with and without
    ``estimate_cosine`` (MeZO's estimate rebuilt from its seeds, a full-set gradient per probe);
    (3) one noise measurement alone, ms and in full-batch training steps of the digits MLP, at
    64 / 256 / 1,024 samples, float32 and float64; (4) a MeZO step with and without keeping its
    estimate (rebuilt from its seeds: one more pass over its q directions).
(f) SLQ, 10 probes x 100 steps: ``spectral_density`` (looped products, no reorthogonalization)
    vs PyHessian ``density``, hessian-eigenthings ``spectral_density`` and curvlinops'
    ``fast_lanczos`` repeated 10 times, in float64 and float32, with each one's first two moments
    against the dense spectrum (all are Monte-Carlo estimates with the same number of probes).

The peers are the ``peers`` extra (``pip install -e .[peers]``), but two need more than pip's
resolver gives them beside torch 2.13 (a plain install of backpack pulls torchvision and another
torch; Cockpit needs backpack and ``json-tricks``)::

    pip install -c <(echo torch==2.13.0) -e .[peers]
    pip install -c <(echo torch==2.13.0) --no-deps curvlinops-for-pytorch==3.0.1 \\
        backpack-for-pytorch==1.7.1 einops unfoldNd linear_operator jaxtyping wadler_lindig \\
        cockpit-for-pytorch==1.0.2 json-tricks

Cockpit 1.0.2 imports ``pkg_resources``, which current setuptools no longer ships: a shim is
installed here for the import. A peer that is missing is reported and left out.

Section (d) steps its runs in interleaved chunks (10 steps for the short runs, 50 for the long
ones) and reports wall-clock and process-time ratios (the CPU time this process used: what a
probe costs whatever else the machine runs; on a shared machine the wall clock also counts the
time other processes held the core).

Section (d) also runs sharpness alone (``ProbeConfig.directional=False``: no product for the
update's directional sharpness) and prints each case's products per warm probe (exact counts).

Last line: ``warm_hvp_ratio=<cold/warm HVPs, every 16> probe_every1_overhead=<x plain>
probe_every16_overhead=<x plain> probe_every1_cpu=<x plain, process time> probe_every16_cpu=<...>
slq_vs_best_peer=<fastest peer's time / ours> probe_every1_sharpness_only=<x plain>
probe_every16_sharpness_only=<...> probe_every1_sharpness_only_cpu=<...>
probe_every16_sharpness_only_cpu=<...>`` and (h)'s ``probe_late_every1_cpu=<economy, x plain>
probe_late_every1_sharpness_only_cpu=<...> probe_late_every16_cpu=<...>
probe_late_every16_sharpness_only_cpu=<...>`` and (e)'s ``probe_preset_every1_economy_cpu=<x plain>
probe_preset_every1_sharpness_cpu=<...> probe_preset_every16_economy_cpu=<...>
probe_preset_every16_sharpness_cpu=<...>``.

    python benchmarks/hessian.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import math
import sys
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from engine.curvature import HVP, dense_hessian, lanczos, spectral_density
from engine.instruments import NETWORK_PROBES, ProbeConfig
from engine.run import LaneConfig, Run, RunConfig
from landscapes.networks import get_network

COCKPIT_ISSUE = {"every 1": 42.0, "every 16": 4.0}  # issue 16, Cockpit 1.0.2 HessMaxEV, float32


def digits_mlp(train_steps: int, dtype: torch.dtype = torch.float64,
               ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
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
    return model.to(dtype), X.to(dtype), y


def flat_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def f(theta: torch.Tensor) -> torch.Tensor:
        params = {n: c.view(s) for n, c, s in zip(names, theta.split(sizes), shapes, strict=True)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (X,)), y)

    return f, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median(xs: list[float]) -> float:
    return float(np.median(xs))


# -- peers ------------------------------------------------------------------------------------------


def _peer(name: str) -> Any:
    """Import a peer or return None (and say so)."""
    try:
        if name == "cockpit":
            _pkg_resources_shim()
        return __import__(name)
    except Exception as err:  # a peer that is missing or broken is left out
        print(f"  ({name} unavailable: {type(err).__name__}: {err})")
        return None


def _pkg_resources_shim() -> None:
    """Cockpit 1.0.2 calls ``pkg_resources.get_distribution`` for its version string only."""
    if "pkg_resources" in sys.modules:
        return
    shim = types.ModuleType("pkg_resources")

    class DistributionNotFound(Exception):
        pass

    def get_distribution(name: str) -> Any:
        try:
            return types.SimpleNamespace(version=importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            raise DistributionNotFound(name) from None

    shim.DistributionNotFound, shim.get_distribution = DistributionNotFound, get_distribution
    sys.modules["pkg_resources"] = shim


def eigenthings_top5(model: nn.Module, X: torch.Tensor, y: torch.Tensor, exact: np.ndarray,
                     target: float) -> tuple[float, int, float] | None:
    """hessian-eigenthings' lanczos with the fewest steps (tried in order) that reach ``target``."""
    he = _peer("hessian_eigenthings")
    if he is None:
        return None
    op = he.HessianOperator(model, [(X, y)], he.supervised_loss(nn.functional.cross_entropy))
    for steps in (10, 15, 20, 25, 30, 35, 40, 50, 60, 80, 100):
        seconds, r = timed(lambda s=steps: he.lanczos(op, k=5, max_iter=s, which="LA", seed=0))
        err = float(np.max(np.abs(np.sort(r.eigenvalues.double().numpy())[::-1] - exact) / np.abs(exact)))
        if err <= target:
            return seconds, steps, err
    return seconds, steps, err


def slq_peers(model: nn.Module, X: torch.Tensor, y: torch.Tensor, n: int, m: int) -> dict[str, Callable]:
    """name -> () -> (nodes [n, m], weights [n, m]) for each installed peer."""
    out: dict[str, Callable] = {}
    from engine.pyhessian_adapter import pyhessian_density

    def pyh() -> tuple[np.ndarray, np.ndarray]:
        d = pyhessian_density(model, nn.CrossEntropyLoss(), X, y, n_probes=n, iterations=m, seed=0)
        return d.nodes, d.weights

    out["PyHessian"] = pyh
    he = _peer("hessian_eigenthings")
    if he is not None:
        op = he.HessianOperator(model, [(X, y)], he.supervised_loss(nn.functional.cross_entropy))

        def eig() -> tuple[np.ndarray, np.ndarray]:
            r = he.spectral_density(op, num_runs=n, lanczos_steps=m, seed=0, num_grid_points=10)
            return np.nan_to_num(r.raw_eigenvalues.double().numpy()), r.raw_weights.double().numpy()

        out["hessian-eigenthings"] = eig
    cl = _peer("curvlinops")
    if cl is not None:
        from curvlinops.papyan2020traces.spectrum import fast_lanczos

        H = cl.HessianLinearOperator(model, nn.CrossEntropyLoss(), list(model.parameters()), [(X, y)])

        def cvl() -> tuple[np.ndarray, np.ndarray]:
            torch.manual_seed(0)
            runs = [fast_lanczos(H, m) for _ in range(n)]
            return (np.stack([e.double().numpy() for e, _ in runs]),
                    np.stack([(v[0] ** 2).double().numpy() for _, v in runs]))

        out["curvlinops"] = cvl
    return out


def moments(nodes: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    return (float((weights * nodes).sum(1).mean()), float((weights * nodes**2).sum(1).mean()))


# -- sections ---------------------------------------------------------------------------------------


def section_top5(args: argparse.Namespace, exact_top: np.ndarray) -> None:
    from engine.pyhessian_adapter import pyhessian_top_eigenvalues

    print("(a) cold top-5 to 1e-6 relative error (digits MLP, 4,810 parameters)")
    for dtype in (torch.float64, torch.float32):
        model, X, y = digits_mlp(args.train_steps, dtype)
        f, theta = flat_loss(model, X, y)
        HVP(f, theta)(torch.ones_like(theta))  # the first product in a process pays extra
        tol = 1e-7  # the bound is relative to lambda_max; lambda_5 ~ lambda_max / 2
        ours, pyh = [], []
        for rep in range(args.repeats):
            t, r = timed(lambda rep=rep, f=f, theta=theta, tol=tol: lanczos(
                HVP(f, theta), 5, tol=tol, generator=torch.Generator().manual_seed(rep)))
            ours.append(t)
            err = float(np.max(np.abs(r.top - exact_top) / exact_top))
            t, p = timed(lambda rep=rep, model=model, X=X, y=y: pyhessian_top_eigenvalues(
                model, nn.CrossEntropyLoss(), X, y, top_n=5, seed=rep))
            pyh.append(t)
            perr = float(np.max(np.abs(np.sort(p.values)[::-1] - exact_top) / exact_top))
        eig = eigenthings_top5(model, X, y, exact_top, max(err, 1e-6))
        name = str(dtype).replace("torch.", "")
        print(f"  {name}: ours {median(ours) * 1e3:6.1f} ms {r.hvps:3d} HVPs (+1 setup gradient) "
              f"error {err:.1e}")
        if eig is not None:
            print(f"  {name}: hessian-eigenthings {eig[0] * 1e3:6.1f} ms {eig[1]:3d} HVPs (each redoes "
                  "forward "
                  f"and backward) error {eig[2]:.1e}  -> {eig[0] / median(ours):.1f}x ours")
        print(f"  {name}: PyHessian default {median(pyh) * 1e3:6.1f} ms {p.hvps:3d} HVPs error {perr:.1e} "
              f"(cannot reach 1e-6)")


def section_hvp_strategy() -> None:
    print("(b) HVP strategy: ms per product, looped vs one block of 10 (is_grads_batched)")
    for dtype in (torch.float64, torch.float32):
        model, X, y = digits_mlp(50, dtype)
        f, theta = flat_loss(model, X, y)
        V = torch.randn(10, theta.numel(), dtype=dtype, generator=torch.Generator().manual_seed(0))
        looped, batched = HVP(f, theta), HVP(f, theta, batched=True)
        looped.matmat(V), batched.matmat(V)
        tl, tb = [], []
        for _ in range(5):
            tl.append(timed(lambda op=looped, V=V: op.matmat(V))[0] / 10)
            tb.append(timed(lambda op=batched, V=V: op.matmat(V))[0] / 10)
        print(f"  {str(dtype).replace('torch.', '')}: looped {median(tl) * 1e3:.2f} ms, batched "
              f"{median(tb) * 1e3:.2f} ms ({median(tb) / median(tl):.2f}x looped)")
    print("    reusing a run's gradient graph (digits_mlp, float64): a product through the gradient of")
    print("    the sum over K*M rows (one row probed) vs building one row's graph and a product on it")
    problem = get_network("digits_mlp", batch_size=None)
    x = problem.x0()
    for rows in (1, 2, 4):
        X = x.repeat(rows, 1).requires_grad_(True)
        (g,) = torch.autograd.grad(problem.loss(X).sum(), X, create_graph=True)
        op = HVP.from_gradient([g], [X])
        v = torch.zeros(rows, problem.dim, dtype=torch.float64)
        v[0] = 1.0
        v = v.reshape(-1)
        op(v)
        reuse = median([timed(lambda op=op, v=v: op(v))[0] for _ in range(10)])
        setup = median([timed(lambda: HVP(lambda t: problem.loss(t[None])[0], x))[0] for _ in range(5)])
        one = HVP(lambda t: problem.loss(t[None])[0], x)
        single = median([timed(lambda one=one, v=v: one(v[: problem.dim]))[0] for _ in range(10)])
        print(f"    K*M={rows}: product {reuse * 1e3:5.2f} ms through the run's graph vs setup "
              f"{setup * 1e3:.2f} + product {single * 1e3:.2f} ms on a fresh one")


def section_warm(args: argparse.Namespace) -> float:
    print("(c) warm vs cold probes along a run: digits_mlp_mse, GD lr 0.2, full batch, float64 products")
    problem = get_network("digits_mlp_mse", batch_size=None)
    ratio16 = math.nan
    reference: dict[int, float] = {}  # step -> lambda_max to 1e-10 (probes leave the trajectory alone)
    for every, steps, k in ((1, args.steps_every1, 1), (16, args.steps, 1), (50, args.steps, 1),
                            (16, args.steps, 5)):
        per: dict[str, float] = {}
        lams: dict[str, np.ndarray] = {}
        honest: dict[str, tuple[float, int, int]] = {}
        for mode in ("cold", "warm", "warm, sharpness only") if k == 1 else ("cold", "warm"):
            # the economy preset's sharpness (tol 1e-3); the full preset's top-5 (tol 1e-6); sharpness
            # only: the warm start without the update's product (ProbeConfig.directional=False)
            probes = (ProbeConfig.economy(every=every, dtype=None, directional=mode != "warm, sharpness only")
                      if k == 1 else ProbeConfig(every=every, top_k=k, tol=1e-6))
            config = RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.2}),), device="cpu", probes=probes)
            run = Run(problem, config)
            found = []
            for step in range(steps):
                if mode == "cold":
                    run._warm.clear()  # forget the last probe's Ritz vectors: every probe starts cold
                if k == 1 and probes.due(step) and step not in reference:
                    x = torch.as_tensor(run.positions(0)[0], dtype=torch.float64)
                    reference[step] = float(lanczos(HVP.for_problem(problem, x), 3, tol=1e-10).top[0])
                found += [r.curvature for r in run.step() if r.curvature is not None]
            per[mode] = float(np.mean([p.hvps for p in found]))
            lams[mode] = np.array([p.lambda_max for p in found])
            if k == 1:  # each probe against the reference: relative error, above tol, above its residual
                err = np.array([abs(p.lambda_max - reference[p.step]) for p in found])
                ref = np.array([reference[p.step] for p in found])
                res = np.array([p.lambda_max_residual for p in found])
                honest[mode] = (float((err / ref).max()), int((err > probes.tol * ref).sum()),
                                int((err > res).sum()))
        agree = float(np.max(np.abs(lams["warm"] - lams["cold"]) / lams["cold"]))
        ratio = per["cold"] / per["warm"]
        if every == 16 and k == 1:
            ratio16 = ratio
        print(f"  every {every:2d} steps, top-{k} at tol {probes.tol:g} ({steps} steps, "
              f"{len(found)} probes): "
              f"cold {per['cold']:5.1f} HVPs/probe, warm {per['warm']:5.1f} -> {ratio:.2f}x fewer"
              + (f" (sharpness only {per['warm, sharpness only']:5.2f})" if k == 1 else "") + "; "
              f"lambda_max differ by up to {agree:.0e}")
        for mode, (worst, above_tol, above_res) in honest.items():
            print(f"    {mode}: against lambda_max to 1e-10, worst relative error {worst:.1e}; above tol in "
                  f"{above_tol}, above the reported residual in {above_res} of {len(found)} probes")
    return ratio16


def section_overhead(args: argparse.Namespace) -> dict[str, float]:
    print("(d) sharpness probes (economy: top-1, tol 1e-3; also with a budget of max_hvps products per "
          "probe) vs a plain run: digits_mlp, GD lr 0.1, "
          "full batch, "
          "one lane")
    problem = get_network("digits_mlp", batch_size=None)
    headline: dict[str, float] = {}
    for dtype in ("float64", "float32"):
        # products in the run's dtype (then a probe reuses the step's gradient graph); each probed
        # run against a plain run of the same length (early steps differ from later ones)
        cases = {"plain short": None, "plain long": None,
                 **{f"every {n}": ProbeConfig.economy(every=n, dtype=None) for n in (1, 16, 50)}}
        # sharpness only: no product for the update's directional sharpness (ProbeConfig.directional)
        for n in (1, 16):
            cases[f"every {n}, sharpness only"] = ProbeConfig.economy(every=n, dtype=None, directional=False)
        if dtype == "float64":
            cases["every 1, float32 products"] = ProbeConfig.economy(every=1)
            cases["every 1, graph rebuilt"] = ProbeConfig.economy(every=1, dtype=None)
            # a budget of products per probe (looser, reported residuals): see the error lines below
            for cap in (4, 6):
                cases[f"every 1, max_hvps {cap}"] = ProbeConfig.economy(every=1, dtype=None, max_hvps=cap)
                cases[f"every 16, max_hvps {cap}"] = ProbeConfig.economy(every=16, dtype=None, max_hvps=cap)
        times: dict[str, list[float]] = {c: [] for c in cases}
        cpu: dict[str, list[float]] = {c: [] for c in cases}  # process time: robust to other load
        hvps: dict[str, list[int]] = {c: [] for c in cases}  # products per probe (exact, load-free)
        for _ in range(args.repeats):
            runs = {}
            for label, probes in cases.items():
                config = RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.1}),), device="cpu", dtype=dtype,
                                   probes=probes)
                runs[label] = run = Run(problem, config)
                if label.endswith("graph rebuilt"):  # what a probe costs without the step's graph
                    run._probe_reuses_graph = lambda lanes, run=run: False
            short = [c for c in cases if c.split(",")[0] == "every 1" or c == "plain short"]
            for group, steps, chunk in ((short, args.steps_every1, 10),
                                        ([c for c in cases if c not in short], args.steps, 50)):
                wall, used, products = _interleaved({c: runs[c] for c in group}, steps, chunk)
                for c in group:
                    times[c].append(wall[c])
                    cpu[c].append(used[c])
                    hvps[c] += products[c][1:]  # each round's runs start cold
        for clock, table in (("wall", times), ("cpu", cpu)):
            short, long = median(table["plain short"]), median(table["plain long"])
            ratios = {c: median(table[c]) / (short if c.split(",")[0] == "every 1" else long)
                      for c in cases if not c.startswith("plain")}
            text = ", ".join(f"{c} {r:.2f}x" for c, r in ratios.items())
            print(f"  {dtype} ({clock} time): plain {long / args.steps * 1e3:.1f} ms/step; {text}")
            if dtype == "float64":
                suffix = "" if clock == "wall" else "_cpu"
                headline[f"every1{suffix}"] = ratios["every 1"]
                headline[f"every16{suffix}"] = ratios["every 16"]
                headline[f"every1_sharpness{suffix}"] = ratios["every 1, sharpness only"]
                headline[f"every16_sharpness{suffix}"] = ratios["every 16, sharpness only"]
        counts = ", ".join(f"{c} {np.mean(h):.2f}" for c, h in hvps.items() if h)
        print(f"  {dtype}: products per warm probe (each run's first, cold, left out): {counts}")
        if dtype == "float64":
            budget_accuracy(problem, args)
    cockpit_overhead(args)
    return headline


def section_late(args: argparse.Namespace) -> dict[str, float]:
    print(f"(h) the runs of (d) after {args.late} steps (float64; process time, ratios to a plain run "
          "stepped alongside)")
    problem = get_network("digits_mlp", batch_size=None)
    headline: dict[str, float] = {}
    for every, steps, chunk in ((1, args.steps_every1, 10), (16, args.steps, 50)):
        cases = {"plain": None, "economy": ProbeConfig.economy(every=every, dtype=None),
                 "sharpness only": ProbeConfig.economy(every=every, dtype=None, directional=False)}
        runs = {c: Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.1}),), device="cpu",
                                          dtype="float64", probes=p)) for c, p in cases.items()}
        for run in runs.values():
            run.run(args.late)
        cpu: dict[str, list[float]] = {c: [] for c in cases}
        hvps: dict[str, list[int]] = {c: [] for c in cases}
        for _ in range(args.repeats):
            _, used, products = _interleaved(runs, steps, chunk)
            for c in cases:
                cpu[c].append(used[c])
                hvps[c] += products[c]
        ratios = {c: median(cpu[c]) / median(cpu["plain"]) for c in cases if c != "plain"}
        print(f"  every {every} (steps {args.late}-{args.late + steps * args.repeats}): " + ", ".join(
            f"{c} {r:.2f}x ({np.mean(hvps[c]):.2f} products/probe)" for c, r in ratios.items()))
        headline[f"late_every{every}_cpu"] = ratios["economy"]
        headline[f"late_every{every}_sharpness_only_cpu"] = ratios["sharpness only"]
    return headline


def _interleaved(runs: dict[str, Run], steps: int, chunk: int
                 ) -> tuple[dict[str, float], dict[str, float], dict[str, list[int]]]:
    """Wall and process seconds of each run over ``steps`` steps, the runs stepped ``chunk`` steps
    at a time in turn (order reversed every other turn): a change in the machine's other load
    then falls on all of them alike instead of on whichever ran at the time. Also each run's
    products per probe, in order."""
    wall = dict.fromkeys(runs, 0.0)
    used = dict.fromkeys(runs, 0.0)
    hvps: dict[str, list[int]] = {label: [] for label in runs}
    for i in range(0, steps, chunk):
        order = list(runs) if (i // chunk) % 2 == 0 else list(runs)[::-1]
        for label in order:
            t0, c0 = time.perf_counter(), time.process_time()
            records = runs[label].run(min(chunk, steps - i))
            wall[label] += time.perf_counter() - t0
            used[label] += time.process_time() - c0
            hvps[label] += [r.curvature.hvps for r in records if r.curvature is not None]
    return wall, used, hvps


def budget_accuracy(problem: Any, args: argparse.Namespace) -> None:
    """What a budget of products costs in accuracy: lambda_max against the uncapped probe's at the
    same steps (probes leave the trajectory as it is), and the worst reported relative residual."""
    def probes(cap: int | None, every: int, steps: int) -> tuple[np.ndarray, np.ndarray, float]:
        run = Run(problem, RunConfig(lanes=(LaneConfig("sgd", {"lr": 0.1}),), device="cpu",
                                     probes=ProbeConfig.economy(every=every, dtype=None, max_hvps=cap)))
        found = [r.curvature for r in run.run(steps) if r.curvature is not None]
        lam = np.array([p.lambda_max for p in found])
        rel = np.array([p.lambda_max_residual for p in found]) / lam
        return lam, rel, float(np.mean([p.hvps for p in found]))
    for every, steps in ((1, args.steps_every1), (16, args.steps)):
        ref, _, hvps = probes(None, every, steps)
        text = [f"uncapped {hvps:.1f} HVPs/probe"]
        for cap in (4, 6):
            lam, rel, hv = probes(cap, every, steps)
            err = np.abs(lam - ref)[1:] / ref[1:]
            text.append(f"max_hvps {cap}: {hv:.1f} HVPs, error vs uncapped median {np.median(err):.1e} "
                        f"max {err.max():.1e}, reported residual max {rel[1:].max():.1e}")
        print(f"    every {every}: " + "; ".join(text))


def cockpit_overhead(args: argparse.Namespace) -> None:
    cockpit = _peer("cockpit")
    if cockpit is None:
        print(f"  Cockpit: not installed; the issue's figures (float32): HessMaxEV every step "
              f"{COCKPIT_ISSUE['every 1']:.0f}x, every 16 steps {COCKPIT_ISSUE['every 16']:.1f}x a plain run")
        return
    from backpack import extend
    from cockpit import Cockpit, quantities
    from cockpit.utils import schedules

    problem = get_network("digits_mlp", batch_size=None)
    X, y = problem.X_train.float(), problem.y_train
    times: dict[str, list[float]] = {"plain": [], "every 1": [], "every 16": []}
    steps = {"plain": args.steps_every1, "every 1": max(20, args.steps_every1 // 4), "every 16": args.steps}
    for _ in range(args.repeats):
        for label in times:
            torch.manual_seed(0)
            model = extend(nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)))
            loss_fn = extend(nn.CrossEntropyLoss())
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            cp = None if label == "plain" else Cockpit(model.parameters(), quantities=[
                quantities.HessMaxEV(track_schedule=schedules.linear(1 if label == "every 1" else 16))])
            t0 = time.perf_counter()
            for step in range(steps[label]):
                opt.zero_grad()
                loss = loss_fn(model(X), y)
                if cp is None:
                    loss.backward()
                else:
                    info = {"batch_size": len(y), "optimizer": opt, "loss": loss}
                    with warnings.catch_warnings(), cp(step, info=info):
                        warnings.simplefilter("ignore")
                        loss.backward(create_graph=cp.create_graph(step))
                opt.step()
            times[label].append((time.perf_counter() - t0) / steps[label])
    plain = median(times["plain"])
    print(f"  Cockpit 1.0.2 HessMaxEV (power iteration, rtol 1e-3), float32 (it fails in float64): "
          f"every step "
          f"{median(times['every 1']) / plain:.1f}x, every 16 steps {median(times['every 16']) / plain:.2f}x "
          f"a plain loop ({plain * 1e3:.1f} ms/step; issue: 42x and 4.0x)")


def section_presets(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """(e): each preset's probe share (``Run.probe_overhead``) after 100 steps and after the run, and
    its products per probe (exact counts), rounds interleaved (medians of ``--repeats - 1``)."""
    problem = get_network("digits_mlp_mse", batch_size=None)
    slow = (LaneConfig("sgd", {"lr": 0.2}), LaneConfig("sgd", {"lr": 0.1}))
    shipped = (LaneConfig("sgd", {"lr": 0.4}), LaneConfig("sgd", {"lr": 0.3}))  # app/presets.toml's
    runs = {"sharpness (every 50)": (slow, ProbeConfig.sharpness()),
            "economy (app default)": (slow, NETWORK_PROBES),
            "economy, float64 products": (slow, dataclasses.replace(NETWORK_PROBES, dtype=None)),
            "business": (slow, ProbeConfig.business()), "full": (slow, ProbeConfig.full()),
            "EoS as shipped, sharpness": (shipped, ProbeConfig.sharpness(every=10)),
            "EoS as shipped, economy": (shipped, dataclasses.replace(NETWORK_PROBES, every=10))}
    shares: dict[str, dict[int, list[float]]] = {k: {100: [], args.steps: []} for k in runs}
    hvps: dict[str, list[int]] = {k: [] for k in runs}
    for _ in range(max(1, args.repeats - 1)):
        for label, (lanes, probes) in runs.items():
            run = Run(problem, RunConfig(lanes=lanes, device="cpu", probes=probes))
            for i in range(args.steps):
                for r in run.step():
                    if r.curvature is not None and r.step > 0:  # warm probes (the first is cold)
                        hvps[label].append(r.curvature.hvps)
                if i + 1 in shares[label]:  # (after the run's length, not 1,000)
                    shares[label][i + 1].append(run.probe_overhead)
    print("(e) probe share on the edge-of-stability run (digits_mlp_mse, full-batch GD, two lanes, "
          "float64 run): lr 0.2 and 0.1 every 50 steps (the app's network default), and the app's "
          "preset as shipped (lr 0.4 and 0.3, every 10)")
    out = {}
    for label in runs:
        s100 = median(shares[label][100]) if shares[label][100] else math.nan
        send = median(shares[label][args.steps]) if shares[label][args.steps] else math.nan
        out[label] = (s100, send)
        print(f"  {label:27s}: {s100:5.1%} of compute after 100 steps, {send:5.1%} after {args.steps} "
              f"({1 / (1 - send):.2f}x a plain run); {np.mean(hvps[label]):.2f} products a warm probe")
    return out


def section_presets_often(args: argparse.Namespace) -> dict[str, float]:
    """(e), second part: the sharpness and economy presets as shipped (float32 products on a
    float64 run) every 1 and 16 steps against a plain run stepped alongside (process time), on (d)'s
    run from step 0 (digits_mlp, GD lr 0.1, full batch, one lane)."""
    print("(e) the sharpness and economy presets as shipped (float32 products) every 1 / 16 steps vs a "
          "plain run (digits_mlp, GD lr 0.1, full batch, one lane, float64 run, process time)")
    problem = get_network("digits_mlp", batch_size=None)
    headline = {}
    for every, steps, chunk in ((1, args.steps_every1, 10), (16, args.steps, 50)):
        cases = {"plain": None, "economy": ProbeConfig.economy(every=every),
                 "sharpness": ProbeConfig.sharpness(every=every)}
        cpu: dict[str, list[float]] = {c: [] for c in cases}
        hvps: dict[str, list[int]] = {c: [] for c in cases}
        for _ in range(args.repeats):
            lane = (LaneConfig("sgd", {"lr": 0.1}),)
            runs = {c: Run(problem, RunConfig(lanes=lane, device="cpu", probes=p)) for c, p in cases.items()}
            _, used, products = _interleaved(runs, steps, chunk)
            for c in cases:
                cpu[c].append(used[c])
                hvps[c] += products[c][1:]  # each round's runs start cold
        plain = median(cpu["plain"])
        for c in ("economy", "sharpness"):
            headline[f"preset_every{every}_{c}_cpu"] = median(cpu[c]) / plain
        print(f"  every {every} ({steps} steps): " + ", ".join(
            f"{c} {median(cpu[c]) / plain:.2f}x ({np.mean(hvps[c]):.2f} products a warm probe)"
            for c in ("economy", "sharpness")) + f"; plain {plain / steps * 1e3:.2f} ms/step")
    return headline


NOISE_FIELDS = ("noise", "estimate_cosine")


def _share(problem: Any, lanes: tuple[LaneConfig, ...], probes: ProbeConfig | None, steps: int,
           dtype: str = "float64") -> tuple[float, float]:
    """(probe share after 100 steps, after ``steps``) of one run."""
    run = Run(problem, RunConfig(lanes=lanes, device="cpu", probes=probes, dtype=dtype))
    at100 = math.nan
    for i in range(steps):
        run.step()
        if i + 1 == 100:
            at100 = run.probe_overhead
    return at100, run.probe_overhead


def section_noise(args: argparse.Namespace) -> dict[str, float]:
    print("(g) gradient-noise instruments: probe share with and without them (medians)")
    problem = get_network("digits_mlp_mse", batch_size=None)
    lanes = (LaneConfig("sgd", {"lr": 0.2}), LaneConfig("sgd", {"lr": 0.1}))
    eco = ProbeConfig.economy()
    off = {f: False for f in NOISE_FIELDS}
    cases = {"economy without noise fields": dataclasses.replace(eco, **off),
             "economy (preset)": eco,
             "economy + estimate_cosine": dataclasses.replace(eco, **{**off, "estimate_cosine": True}),
             "economy + noise (256 samples)": dataclasses.replace(eco, **{**off, "noise": True}),
             "business without noise fields": dataclasses.replace(ProbeConfig.business(), **off),
             "business (preset)": ProbeConfig.business(),
             "full without noise fields": dataclasses.replace(ProbeConfig.full(), **off),
             "full (preset)": ProbeConfig.full()}
    shares: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
    for _ in range(max(1, args.repeats - 1)):
        for label, probes in cases.items():
            shares[label].append(_share(problem, lanes, probes, args.steps))
    out = {}
    print("  (1) edge-of-stability preset (digits_mlp_mse, full batch, GD lr 0.2 and 0.1, float64 run)")
    for label in cases:
        s100, s_end = median([a for a, _ in shares[label]]), median([b for _, b in shares[label]])
        out[label] = s_end
        print(f"    {label:32s}: {s100:5.1%} of compute after 100 steps, {s_end:5.1%} after {args.steps}")
    print("  (2) minibatch race (digits_mlp, batch 64, SGD lr 0.1 and ZO-SGD lr 1e-3 q=4, float64 run)")
    mini = get_network("digits_mlp", batch_size=64)
    zo_lanes = (LaneConfig("sgd", {"lr": 0.1}), LaneConfig("zo_sgd", {"lr": 1e-3, "q": 4}))
    mcases = {"economy without estimate_cosine": dataclasses.replace(eco, **off), "economy (preset)": eco}
    mshares: dict[str, list[float]] = {c: [] for c in mcases}
    for _ in range(max(1, args.repeats - 1)):
        for label, probes in mcases.items():
            mshares[label].append(_share(mini, zo_lanes, probes, args.steps)[1])
    for label in mcases:
        print(f"    {label:32s}: {median(mshares[label]):5.1%} of compute after {args.steps} steps")
    print("  (3) one noise measurement alone (digits_mlp, 4,810 parameters; per-sample gradients, their")
    print("      variance and SNR per tensor, the norm test), against one full-batch training gradient")
    from engine.noise import measure
    full = get_network("digits_mlp", batch_size=None)
    for dtype in (torch.float32, torch.float64):
        x = full.x0().to(dtype)
        leaf = x.clone().requires_grad_(True)
        step = median([timed(lambda leaf=leaf: torch.autograd.grad(full.loss(leaf[None])[0], leaf))[0]
                       for _ in range(5)])
        gradient = torch.autograd.grad(full.loss(leaf[None])[0], leaf)[0]
        parts = []
        for samples in (64, 256, 1024):
            def once(samples: int = samples, x: torch.Tensor = x, gradient: torch.Tensor = gradient) -> Any:
                return measure(full, x, None, gradient, noise=True, samples=samples, estimate_cosine=False,
                               estimate=None, generator=torch.Generator().manual_seed(0))
            once()
            t = median([timed(once)[0] for _ in range(5)])
            parts.append(f"{samples} samples {t * 1e3:5.1f} ms ({t / step:4.1f} gradients)")
        label = str(dtype).replace("torch.", "")
        print(f"    {label}: full-batch gradient {step * 1e3:.1f} ms; " + ", ".join(parts))
    mezo_keep_cost(mini)
    return out


def mezo_keep_cost(problem: Any) -> None:
    """A MeZO step with and without keeping its estimate (rebuilt from its seeds for an instrument)."""
    from engine.optimizers.zeroth_order import ZOSGD
    from engine.oracles import Oracles

    batch = problem.sample_batch(torch.Generator().manual_seed(0))
    for q in (1, 4):
        times: dict[bool, list[float]] = {False: [], True: []}
        theta = problem.x0().clone()
        opt = ZOSGD([theta], lr=1e-4, q=q, seed=0)
        oracles = Oracles(lambda x: problem.loss(x, batch), [theta])
        for rep in range(40):
            keep = rep % 2 == 1
            opt.keep_estimate = keep
            times[keep].append(timed(lambda opt=opt, oracles=oracles: opt.step(oracles))[0])
            opt.take_estimate()
        plain, kept = median(times[False][5:]), median(times[True][5:])
        print(f"  (4) MeZO q={q} step (digits_mlp, batch 64, float64): {plain * 1e3:.2f} ms; keeping its "
              f"estimate for a probe {kept * 1e3:.2f} ms ({kept / plain:.2f}x; P = {problem.dim:,} floats)")


def section_slq(args: argparse.Namespace, eigs: np.ndarray) -> float:
    n, m = args.probes, args.slq_steps
    print(f"(f) SLQ, {n} probes x {m} steps (digits MLP): time and first two moments vs the dense spectrum")
    best: dict[str, float] = {}
    ours_best = math.inf
    for dtype in (torch.float64, torch.float32):
        model, X, y = digits_mlp(args.train_steps, dtype)
        f, theta = flat_loss(model, X, y)
        exact = (float(eigs.mean()), float((eigs**2).mean()))
        HVP(f, theta)(torch.ones_like(theta))
        runners: dict[str, Callable] = {
            "ours": lambda f=f, theta=theta: _ours_slq(f, theta, n, m, False),
            "ours, full reorth.": lambda f=f, theta=theta: _ours_slq(f, theta, n, m, True),
            **slq_peers(model, X, y, n, m)}
        times: dict[str, list[float]] = {k: [] for k in runners}
        results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for rep in range(args.repeats):
            for name, fn in runners.items():
                if name == "curvlinops" and rep >= args.peer_repeats:  # the slowest by far: fewer rounds
                    continue
                t, results[name] = timed(fn)
                times[name].append(t)
        label = str(dtype).replace("torch.", "")
        print(f"  {label} (exact tr(H)/P = {exact[0]:.5g}, tr(H^2)/P = {exact[1]:.5g}):")
        for name in runners:
            mo = moments(*results[name])
            err = max(abs(mo[0] - exact[0]) / exact[0], abs(mo[1] - exact[1]) / exact[1])
            print(f"    {name:20s} {median(times[name]):6.2f} s  moments {mo[0]:.5g}, {mo[1]:.5g} "
                  f"(max rel. error {err:.1%})  {median(times[name]) / median(times['ours']):.2f}x ours")
            if not name.startswith("ours"):
                best[f"{name} {label}"] = median(times[name])
        ours_best = min(ours_best, median(times["ours"]))
        print(f"    -> fastest peer / ours at {label}: "
              f"{min(v for k, v in best.items() if k.endswith(label)) / median(times['ours']):.2f}x")
    peer, t = min(best.items(), key=lambda kv: kv[1])
    print(f"  fastest peer over both dtypes: {peer} {t:.2f} s; ours at its fastest {ours_best:.2f} s")
    return t / ours_best


def _ours_slq(f: Callable, theta: torch.Tensor, n: int, m: int,
              reorth: bool) -> tuple[np.ndarray, np.ndarray]:
    d = spectral_density(HVP(f, theta), n_probes=n, m=m, generator=torch.Generator().manual_seed(0),
                         reorthogonalize=reorth)
    return d.nodes, d.weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-steps", type=int, default=50, help="Adam steps before (a) and (f)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians)")
    ap.add_argument("--peer-repeats", type=int, default=1, help="rounds for curvlinops' SLQ (the slowest)")
    ap.add_argument("--steps", type=int, default=1000, help="run length in (c)-(e)")
    ap.add_argument("--steps-every1", type=int, default=200, help="run length when probing every step")
    ap.add_argument("--probes", type=int, default=10)
    ap.add_argument("--slq-steps", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="one round, shorter runs (a smoke test)")
    ap.add_argument("--only", default="abcdefgh", help="sections to run, e.g. 'cdf'")
    ap.add_argument("--late", type=int, default=1000, help="steps taken before (h) measures")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.steps, args.steps_every1, args.slq_steps, args.late = 1, 200, 40, 30, 100
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"cpu, {torch.get_num_threads()} thread, torch {torch.__version__}; "
          f"medians of {args.repeats} rounds")

    warm = slq = math.nan
    overhead: dict[str, float] = {}
    if "a" in args.only or "f" in args.only:
        model, X, y = digits_mlp(args.train_steps)
        eigs = torch.linalg.eigvalsh(dense_hessian(*flat_loss(model, X, y))).numpy()  # ~30 s
    if "a" in args.only:
        section_top5(args, eigs[::-1][:5].copy())
    if "b" in args.only:
        section_hvp_strategy()
    if "c" in args.only:
        warm = section_warm(args)
    if "d" in args.only:
        overhead = section_overhead(args)
    late: dict[str, float] = {}
    if "h" in args.only:
        late = section_late(args)
    if "e" in args.only:
        section_presets(args)
        late.update(section_presets_often(args))
    if "g" in args.only:
        section_noise(args)
    if "f" in args.only:
        slq = section_slq(args, eigs)
    nan = math.nan
    print(f"warm_hvp_ratio={warm:.2f} probe_every1_overhead={overhead.get('every1', nan):.2f} "
          f"probe_every16_overhead={overhead.get('every16', nan):.2f} "
          f"probe_every1_cpu={overhead.get('every1_cpu', nan):.2f} "
          f"probe_every16_cpu={overhead.get('every16_cpu', nan):.2f} slq_vs_best_peer={slq:.2f} "
          f"probe_every1_sharpness_only={overhead.get('every1_sharpness', nan):.2f} "
          f"probe_every16_sharpness_only={overhead.get('every16_sharpness', nan):.2f} "
          f"probe_every1_sharpness_only_cpu={overhead.get('every1_sharpness_cpu', nan):.2f} "
          f"probe_every16_sharpness_only_cpu={overhead.get('every16_sharpness_cpu', nan):.2f} "
          + " ".join(f"probe_{k}={v:.2f}" for k, v in late.items()))


if __name__ == "__main__":
    main()
