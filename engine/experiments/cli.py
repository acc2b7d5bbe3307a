"""The command line: ``python -m engine.experiments run spec.toml`` and ``... basins``.

    python -m engine.experiments run spec.toml [--out results.parquet] [--scheduler tcp://host:8786]
                                               [--workers 2] [--resume] [--problems module:MAPPING]
    python -m engine.experiments basins --problem himmelblau --optimizer sgd --set lr=0.01
                                        [--grid 200] [--steps 500] [--tol 1e-3] [--out basins.parquet]

Bad input (spec, hyperparameters, sizes, an unreachable scheduler) is reported before any work,
with exit status 2. Ctrl-C cancels the running tasks and still writes every finished row
(``complete: false`` in the file's metadata); ``--resume`` then runs only what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"True": True, "False": False}.get(text, text)


def _settings(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for p in pairs:
        name, sep, value = p.partition("=")
        if not sep or not name:
            raise ValueError(f"--set takes name=value, got {p!r}")
        out[name] = _parse_value(value)
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from engine.experiments.analysis import tuned_vs_default
    from engine.experiments.executor import SchedulerError, run_experiment
    from engine.experiments.results import ExperimentResult
    from engine.experiments.spec import ExperimentSpec, SpecError

    out = Path(args.out) if args.out else Path(args.spec).with_suffix(".parquet")
    try:
        spec = ExperimentSpec.from_toml(args.spec)
        spec.validate(args.problems)
        resume = None
        if args.resume and out.exists():
            resume = ExperimentResult.read_parquet(out)
    except (SpecError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar = None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        tqdm = None

    def progress(p: Any) -> None:
        nonlocal bar
        if tqdm is None:
            return
        if bar is None:
            bar = tqdm(
                total=p.trials_total, unit="trial", desc=spec.name, file=sys.stderr, dynamic_ncols=True
            )
        bar.update(p.trials_done - bar.n)

    try:
        result = run_experiment(
            spec,
            scheduler=args.scheduler,
            n_workers=args.workers,
            catalogs=args.problems,
            progress=progress,
            resume=resume,
            connect_timeout=args.timeout,
        )
    except (SpecError, SchedulerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    result.to_parquet(out)
    meta = result.metadata
    print(
        f"wrote {len(result.frame)} of {meta['trials']} trials to {out}"
        + (
            ""
            if result.complete
            else f" (incomplete: {meta['missing']} missing"
            + (", cancelled" if meta["cancelled"] else "")
            + "; --resume runs the rest)"
        )
    )
    if len(result.frame):
        positive = bool((result.frame["final_loss"].dropna() >= 0).all())
        table = tuned_vs_default(result.frame, log=positive, n_boot=500)
        cols = ["problem", "entry", "default_score", "tuned_score", "improvement", "ci_low", "ci_high"]
        with_pd = table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}")
        print("final loss (log10 when positive), defaults vs tuned:\n" + with_pd)
    for key, err in meta["errors"].items():
        print(f"task {key} failed: {err}", file=sys.stderr)
    return 0 if result.complete else 1


def _cmd_basins(args: argparse.Namespace) -> int:
    import pandas as pd

    from engine.experiments.basins import DIVERGED, NOT_CONVERGED, basin_map
    from engine.experiments.problems import ProblemRef, merged, resolve

    try:
        hps = _settings(args.set)
        problem = resolve(ProblemRef(args.problem, _settings(args.option)), merged(args.problems))
        from engine.registry import get_spec

        get_spec(args.optimizer).validate(hps)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    side = args.grid
    bar = tqdm(total=side * side, unit="start", file=sys.stderr, dynamic_ncols=True) if tqdm else None
    try:
        m = basin_map(
            problem,
            args.optimizer,
            hps,
            grid=side,
            steps=args.steps,
            tol=args.tol,
            chunk=args.chunk,
            device=args.device,
            on_chunk=lambda mp, ch: bar.update(ch.index[1] - ch.index[0]) if bar else None,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    ii, jj = np.meshgrid(np.arange(len(m.ys)), np.arange(len(m.xs)), indexing="ij")
    frame = pd.DataFrame(
        {
            "i": ii.reshape(-1),
            "j": jj.reshape(-1),
            "x": m.xs[jj.reshape(-1)],
            "y": m.ys[ii.reshape(-1)],
            "label": m.label.reshape(-1),
            "steps": m.steps.reshape(-1),
        }
    )
    out = Path(args.out)
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = {
        "problem": m.problem,
        "options": m.options,
        "optimizer": m.optimizer,
        "hyperparameters": m.hyperparameters,
        "minima": m.minima,
        "tol": m.tol,
        "steps": m.n_steps,
        "device": m.device,
        "point_steps_per_second": m.point_steps_per_second,
    }
    pq.write_table(table.replace_schema_metadata({b"optiscope-basins": json.dumps(meta).encode()}), out)
    names = {DIVERGED: "diverged", NOT_CONVERGED: "not converged"}
    print(
        f"{m.optimizer} on {m.problem}, {side}x{side} starts, {m.n_steps} steps "
        f"({m.point_steps_per_second:,.0f} point-steps/s on {m.device}); wrote {out}"
    )
    for label, frac in sorted(m.fractions().items()):
        where = names.get(label) or "minimum ({:.4g}, {:.4g})".format(*m.minima[label])
        print(f"  {where}: {frac:.1%}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.experiments", description="Tuned, seeded optimizer comparisons and basin maps."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment spec (TOML) and write its results table")
    run.add_argument("spec", help="experiment spec, a TOML file")
    run.add_argument("--out", help="results Parquet file (default: the spec's name with .parquet)")
    run.add_argument(
        "--scheduler",
        help="address of an existing Dask scheduler, e.g. tcp://host:8786 (default: a local cluster)",
    )
    run.add_argument("--workers", type=int, default=2, help="local cluster size (default 2)")
    run.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for --scheduler (default 5)")
    run.add_argument("--resume", action="store_true", help="keep the rows already in --out, run the rest")
    run.add_argument(
        "--problems",
        action="append",
        help="a problem catalog module:MAPPING (repeatable; default: the installed ones)",
    )
    run.set_defaults(fn=_cmd_run)
    bas = sub.add_parser("basins", help="a basin map of one optimizer on a 2-D landscape")
    bas.add_argument("--problem", required=True)
    bas.add_argument("--option", action="append", default=[], help="problem option name=value (repeatable)")
    bas.add_argument("--optimizer", required=True)
    bas.add_argument("--set", action="append", default=[], help="hyperparameter name=value (repeatable)")
    bas.add_argument("--grid", type=int, default=200, help="starts per side (<= 1000)")
    bas.add_argument("--steps", type=int, default=500)
    bas.add_argument("--tol", type=float, default=1e-3, help="distance to a minimum that counts as reached")
    bas.add_argument("--chunk", type=int, default=65_536, help="starts per batched run")
    bas.add_argument("--device", default="auto")
    bas.add_argument("--out", default="basins.parquet")
    bas.add_argument("--problems", action="append", help="a problem catalog module:MAPPING (repeatable)")
    bas.set_defaults(fn=_cmd_basins)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1) if args.command == "run" else None
    return args.fn(args)
