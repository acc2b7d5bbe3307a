"""The per-network default learning rates of ``landscapes/defaults.py``, from an experiment's results.

    python -m engine.experiments run benchmarks/defaults.toml --out /tmp/defaults.parquet
    python benchmarks/defaults.py /tmp/defaults.parquet

For each (problem, optimizer): the median log10 final loss of each learning rate over the run seeds
(a diverged trajectory counts as +inf, so an lr that diverges for any seed loses to one that never
does), and the lr with the lowest (the smallest of those within ``SLACK`` decades of it: none by
default, since a smaller lr that looked as good at 300 steps was measurably worse at 200). Prints
the table as Python, to paste into ``landscapes/defaults.py``, and each problem's grid (stderr).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

SLACK = 0.0
"""Decades of final loss given up for a safer (smaller) learning rate."""


def table(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    f = frame.copy()
    f["score"] = np.where((f["diverged_at"] >= 0) | ~np.isfinite(f["final_loss"]), np.inf,
                          np.log10(f["final_loss"].clip(lower=1e-30)))
    out: dict[str, dict[str, float]] = {}
    for (problem, opt), g in f.groupby(["problem", "optimizer"]):
        med = g.groupby("hp_lr")["score"].agg(lambda s: float(np.max(s)) if np.isinf(s).any()
                                              else float(np.median(s)))
        print(f"{problem:22s} {opt:9s} " + "  ".join(f"{lr:g}:{v:.2f}" for lr, v in med.items()),
              file=sys.stderr)
        best = med.min()
        out.setdefault(problem, {})[opt] = float(med[med <= best + SLACK].index.min())
    return out


if __name__ == "__main__":
    result = table(pd.read_parquet(sys.argv[1]))
    print("NETWORK_DEFAULTS = {")
    for problem, row in sorted(result.items()):
        cells = ", ".join(f"{k!r}: {{'lr': {v:g}}}" for k, v in sorted(row.items()))
        print(f"    {problem!r}: {{{cells}}},")
    print("}")
