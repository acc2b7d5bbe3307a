"""Export of the app's default race (SGD, momentum, Adam on Rosenbrock, one start), side by side
in one process: the replay as one ``Run.replay`` call vs :func:`engine.export.replay_log` in chunks
with progress and stop checks (the same steps; the chunking must cost nothing); writing Parquet
(the default) vs the full JSON (on request; the app wrote both before); the pictures. Medians of
``--rounds`` rounds. Last line: ``export_s=<default export> json_s=<json> parquet_mb=<n> json_mb=<n>``.

    python benchmarks/export.py [--steps 4400] [--probes] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from app.curves_image import curves_png
from app.race_image import race_gif, race_png
from engine.export import export_json, export_log, export_parquet, replay_log
from engine.instruments import LANDSCAPE_PROBES
from engine.run import Run, RunConfig
from landscapes.catalog import get_landscape


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4400)
    ap.add_argument("--probes", action="store_true", help="the app's landscape probes (every 5 steps)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    problem = get_landscape("rosenbrock")
    config = RunConfig(lanes=({"optimizer": "sgd", "hyperparameters": {"lr": 1e-3}},
                              {"optimizer": "momentum", "hyperparameters": {"lr": 1e-3}},
                              {"optimizer": "adam", "hyperparameters": {"lr": 0.1}}),
                       device="cpu", probes=LANDSCAPE_PROBES if args.probes else None)
    log = {"problem": problem.name, "config": config.to_dict(), "events": [], "ticks": args.steps}
    times: dict[str, list[float]] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t, out = _timed(fn)
        times.setdefault(name, []).append(t)
        return out

    reports: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(args.rounds):
            run, records = timed("Run.replay", lambda: Run.replay(problem, config, [], args.steps))
            reports.clear()
            _, chunked = timed("replay_log (chunks)", lambda: replay_log(
                problem, log, progress=lambda f, m: reports.append(f)))
            assert all(a.same_values(b) for a, b in zip(records, chunked, strict=True))
            timed("write Parquet", lambda r=run, rs=records: export_parquet(r, rs, out / "r.parquet"))
            timed("write JSON", lambda r=run, rs=records: export_json(r, rs, out / "r.json"))
            timed("export_log (replay + Parquet)", lambda: export_log(problem, log, out, stem="bundle"))
            timed("curves PNG", lambda rs=records: curves_png(rs, out / "loss.png"))
            timed("race PNG", lambda rs=records: race_png(problem, rs, out / "race.png"))
            timed("race GIF (60 frames)", lambda rs=records: race_gif(problem, rs, out / "race.gif"))
        sizes = {name: (out / name).stat().st_size / 1e6 for name in
                 ("r.parquet", "r.json", "loss.png", "race.png", "race.gif")}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"steps={args.steps} lanes=3 starts=1 probes={'every 5' if args.probes else 'none'} "
          f"rows={len(records)} device=cpu threads=1 rounds={args.rounds} (medians)")
    for name, t in med.items():
        per_step = f"  ({1e3 * t / args.steps:.2f} ms/step)" if "eplay" in name else ""
        print(f"  {name:32s} {t:7.3f} s{per_step}")
    print(f"  chunked / one call: {med['replay_log (chunks)'] / med['Run.replay']:.3f}x; "
          f"{len(reports)} progress reports")
    for name, mb in sizes.items():
        print(f"  {name:12s} {mb:7.3f} MB")
    print(f"export_s={med['export_log (replay + Parquet)']:.2f} json_s={med['write JSON']:.2f} "
          f"parquet_mb={sizes['r.parquet']:.2f} json_mb={sizes['r.json']:.2f}")


if __name__ == "__main__":
    main()
