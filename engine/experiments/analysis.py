r"""What an experiment's table says: sensitivity curves, tuned vs default, performance profiles.

All functions take the results table (:mod:`engine.experiments.results`) and return small
DataFrames, the data behind the views (the views only draw them).

**Penalties.** A diverged trial has no finite loss and an unsolved one no time to target; each
function says how it scores them: losses as the worst finite loss of that problem in the table
("as bad as the worst trial that finished"), times to target censored at what the trial spent
(a lower bound on its true time), performance-profile times as infinite (Dolan & Moré).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

LOSS_METRICS = ("final_loss", "best_loss")
TIME_METRICS = {"units_to_target": "units", "steps_to_target": "steps", "seconds_to_target": "wall_time"}
TRIAL = ["seed", "start"]


def _searched(frame: pd.DataFrame) -> list[str]:
    """The hyperparameters that take more than one value among an entry's configurations."""
    return [c[3:] for c in frame.columns if c.startswith("hp_") and frame[c].dropna().nunique() > 1]


def _values(frame: pd.DataFrame, metric: str) -> np.ndarray:
    """``metric`` per row with the module's penalties (not yet transformed)."""
    if metric in LOSS_METRICS:
        v = frame[metric].to_numpy(dtype=float).copy()
        bad = ~np.isfinite(v)
        if bad.any():
            finite = v[~bad]
            v[bad] = finite.max() if finite.size else np.nan
        return v
    if metric in TIME_METRICS:
        v = frame[metric].to_numpy(dtype=float).copy()
        missed = ~np.isfinite(v) | (v < 0)
        v[missed] = frame[TIME_METRICS[metric]].to_numpy(dtype=float)[missed]
        return v
    raise ValueError(f"metric must be one of {', '.join((*LOSS_METRICS, *TIME_METRICS))}, got {metric!r}")


LOG_FLOOR = 1e-16
"""Losses are floored here before a logarithm (an exact 0 is a minimum reached, not -inf decades)."""


def _transform(v: np.ndarray, log: bool, metric: str) -> np.ndarray:
    if not log:
        return v
    if (v < 0).any():
        raise ValueError(f"{metric} has negative values, which have no logarithm: pass log=False")
    return np.log10(np.maximum(v, LOG_FLOOR))


def sensitivity(
    frame: pd.DataFrame, metric: str = "final_loss", quantiles: tuple[float, float] = (0.25, 0.75)
) -> pd.DataFrame:
    """Sensitivity curves: for every (problem, entry, searched hyperparameter) and configuration,
    the median of ``metric`` over its trials (seeds x starts) and a seed band (``quantiles``,
    inverted-CDF quantiles: no interpolation, so a band never mixes a diverged trial's penalty with a
    finite loss). Columns: ``problem, entry, optimizer, hyperparameter, value, config, is_default,
    median, low, high, n, diverged``; rows sorted by value, one curve per (problem, entry,
    hyperparameter)."""
    out = []
    for problem, pf in frame.groupby("problem", sort=True):
        vals = pd.Series(_values(pf, metric), index=pf.index)
        for entry, ef in pf.groupby("entry", sort=False):
            names = _searched(ef)
            for config, cf in ef.groupby("config", sort=True):
                v = vals.loc[cf.index].to_numpy()
                med = float(np.quantile(v, 0.5, method="inverted_cdf"))
                lo, hi = (float(np.quantile(v, q, method="inverted_cdf")) for q in quantiles)
                for name in names:
                    out.append(
                        {
                            "problem": problem,
                            "entry": entry,
                            "optimizer": cf["optimizer"].iloc[0],
                            "hyperparameter": name,
                            "value": cf[f"hp_{name}"].iloc[0],
                            "config": int(config),
                            "is_default": bool(cf["is_default"].iloc[0]),
                            "median": med,
                            "low": lo,
                            "high": hi,
                            "n": len(v),
                            "diverged": int((cf["diverged_at"] >= 0).sum()),
                        }
                    )
    cols = [
        "problem",
        "entry",
        "optimizer",
        "hyperparameter",
        "value",
        "config",
        "is_default",
        "median",
        "low",
        "high",
        "n",
        "diverged",
    ]
    df = pd.DataFrame(out, columns=cols)
    return df.sort_values(
        ["problem", "entry", "hyperparameter", "value", "config"], kind="stable", ignore_index=True
    )


def _trial_matrix(ef: pd.DataFrame, values: pd.Series) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``(matrix [configs, trials], is_default per config, config ids)`` with trials aligned by
    (seed, start): every configuration runs the same trials."""
    pivot = (
        values.loc[ef.index]
        .to_frame("v")
        .join(ef[["config", *TRIAL]])
        .pivot_table(index="config", columns=TRIAL, values="v", aggfunc="first")
    )
    if pivot.isna().any().any():
        raise ValueError("configurations do not share the same trials (an incomplete table?)")
    configs = [int(c) for c in pivot.index]
    default = ef.groupby("config")["is_default"].first().reindex(configs).to_numpy(dtype=bool)
    return pivot.to_numpy(dtype=float), default, configs


def tuned_vs_default(
    frame: pd.DataFrame,
    metric: str = "final_loss",
    *,
    log: bool = True,
    tuning_budget: int | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Each entry at its defaults and at its best searched configuration, per problem.

    A configuration's score is the mean of ``metric`` over its trials (``log10`` of it when
    ``log``: losses span decades, so a mean of logs, i.e. a geometric mean). *Tuned* is the best
    score among the first ``tuning_budget`` searched configurations (all when None; the same number
    for every entry is the fair comparison), the defaults are not among them. The improvement is
    default score - tuned score (decades when ``log``). Its interval is a percentile bootstrap over
    trials (paired: the same resampled trials for every configuration) that **redoes the selection
    in every resample**, so the interval carries the optimism of picking the best of many
    (Bouthillier et al. 2021, "Accounting for Variance in Machine Learning Benchmarks").

    Columns: ``problem, entry, optimizer, default_score, default_spread, tuned_score,
    tuned_spread`` (spreads: standard deviation over trials), ``tuned_config,
    tuned_hyperparameters`` (JSON), ``improvement, ci_low, ci_high, n_trials, n_configs``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    out = []
    for problem, pf in frame.groupby("problem", sort=True):
        vals = pd.Series(_transform(_values(pf, metric), log, metric), index=pf.index)
        for entry, ef in pf.groupby("entry", sort=False):
            m, is_default, configs = _trial_matrix(ef, vals)
            search = np.flatnonzero(~is_default)
            if tuning_budget is not None:
                search = search[:tuning_budget]
            row = {
                "problem": problem,
                "entry": entry,
                "optimizer": ef["optimizer"].iloc[0],
                "n_trials": m.shape[1],
                "n_configs": len(search),
            }
            d = m[is_default][0] if is_default.any() else None
            if d is not None:
                row.update(
                    default_score=float(d.mean()), default_spread=float(d.std(ddof=1)) if d.size > 1 else 0.0
                )
            if len(search):
                scores = m[search].mean(axis=1)
                best = search[int(np.argmin(scores))]
                t = m[best]
                hps = ef.loc[ef["config"] == configs[best], "hyperparameters"].iloc[0]
                row.update(
                    tuned_score=float(t.mean()),
                    tuned_spread=float(t.std(ddof=1)) if t.size > 1 else 0.0,
                    tuned_config=configs[best],
                    tuned_hyperparameters=hps,
                )
            if d is not None and len(search):
                row["improvement"] = row["default_score"] - row["tuned_score"]
                idx = rng.integers(0, m.shape[1], size=(n_boot, m.shape[1]))
                tuned_b = m[search][:, idx].mean(axis=2).min(axis=0)  # [n_boot]: re-selected each time
                diff = d[idx].mean(axis=1) - tuned_b
                a = (1 - level) / 2
                row["ci_low"], row["ci_high"] = (float(x) for x in np.quantile(diff, [a, 1 - a]))
            out.append(row)
    cols = [
        "problem",
        "entry",
        "optimizer",
        "default_score",
        "default_spread",
        "tuned_score",
        "tuned_spread",
        "tuned_config",
        "tuned_hyperparameters",
        "improvement",
        "ci_low",
        "ci_high",
        "n_trials",
        "n_configs",
    ]
    return pd.DataFrame(out).reindex(columns=cols)


def times_to_target(
    frame: pd.DataFrame,
    metric: str = "units_to_target",
    *,
    configuration: str = "tuned",
    aggregate: str = "median",
) -> pd.DataFrame:
    """``t[problem, entry]``: each entry's time to target on each problem, inf when not reached.

    A configuration's time is the ``aggregate`` ("median" or "mean") over its trials, a trial that
    missed the target counting as infinite (so a median is finite only if most trials reached
    it). ``configuration``: "tuned" (the entry's fastest configuration, AlgoPerf's external tuning)
    or "default"."""
    if metric not in TIME_METRICS:
        raise ValueError(f"metric must be one of {', '.join(TIME_METRICS)}, got {metric!r}")
    if configuration not in ("tuned", "default"):
        raise ValueError(f"configuration must be 'tuned' or 'default', got {configuration!r}")
    agg = {"median": np.median, "mean": np.mean}.get(aggregate)
    if agg is None:
        raise ValueError(f"aggregate must be 'median' or 'mean', got {aggregate!r}")
    t = frame[metric].to_numpy(dtype=float).copy()
    t[~np.isfinite(t) | (t < 0)] = np.inf
    f = frame.assign(_t=t)
    if configuration == "default":
        f = f[f["is_default"]]
    per_config = f.groupby(["problem", "entry", "config"])["_t"].agg(lambda s: float(agg(s.to_numpy())))
    table = per_config.groupby(["problem", "entry"]).min().unstack("entry")
    return table.fillna(np.inf)


def profile_ratios(times: pd.DataFrame) -> pd.DataFrame:
    r"""Dolan & Moré (2002) ratios :math:`r_{p,s} = t_{p,s} / \min_s t_{p,s}` (inf where the entry
    did not reach the target, or where no entry did)."""
    t = times.to_numpy(dtype=float)
    best = t.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(np.isfinite(t) & np.isfinite(best), t / np.where(best > 0, best, 1.0), np.inf)
    r[np.isfinite(t) & (best == 0)] = np.where(t[np.isfinite(t) & (best == 0)] == 0, 1.0, np.inf)
    return pd.DataFrame(r, index=times.index, columns=times.columns)


def performance_profile(
    frame: pd.DataFrame | None = None,
    metric: str = "units_to_target",
    *,
    times: pd.DataFrame | None = None,
    taus: Sequence[float] | None = None,
    configuration: str = "tuned",
    aggregate: str = "median",
) -> pd.DataFrame:
    r"""Performance profiles (Dolan & Moré 2002, "Benchmarking optimization software with
    performance profiles"; the form AlgoPerf uses, Dahl et al. 2023): for each entry,
    :math:`\rho_s(\tau) = |\{p : r_{p,s} \le \tau\}| / n_p`, the fraction of problems it solves within
    :math:`\tau` times the best entry's time to target. The x-axis is in oracle units
    (``units_to_target``), steps or wall time (``seconds_to_target``).

    ``times`` (a problem x entry table, see :func:`times_to_target`) may be given instead of
    ``frame``. ``taus``: where to evaluate (default: 1 and every finite ratio, the profile's corners).
    Returns columns ``entry, tau, fraction``."""
    if times is None:
        if frame is None:
            raise ValueError("give a results frame or a times table")
        times = times_to_target(frame, metric, configuration=configuration, aggregate=aggregate)
    r = profile_ratios(times)
    ratios = r.to_numpy()
    if taus is None:
        finite = ratios[np.isfinite(ratios)]
        taus = np.unique(np.concatenate([[1.0], finite]))
    taus = np.asarray(taus, dtype=float)
    rows = []
    for j, entry in enumerate(r.columns):
        for tau in taus:
            rows.append({"entry": entry, "tau": float(tau), "fraction": float((ratios[:, j] <= tau).mean())})
    return pd.DataFrame(rows, columns=["entry", "tau", "fraction"])


def profile_score(times: pd.DataFrame, tau_max: float = 4.0) -> pd.Series:
    r"""Area under each entry's profile over :math:`\tau \in [1, \tau_{max}]`, divided by
    :math:`\tau_{max} - 1` (1: fastest on every problem; 0: never within :math:`\tau_{max}`), the
    scalar AlgoPerf ranks submissions by (its :math:`r_{max} = 4`)."""
    if not tau_max > 1:
        raise ValueError(f"tau_max must be > 1, got {tau_max}")
    r = profile_ratios(times).to_numpy()
    # rho is a step function: each problem with ratio r <= tau_max adds (tau_max - max(r, 1)) / n_p
    area = np.where(r <= tau_max, tau_max - np.maximum(r, 1.0), 0.0).mean(axis=0)
    return pd.Series(area / (tau_max - 1.0), index=times.columns, name="score")


def hyperparameters(row: pd.Series) -> dict:
    """A row's hyperparameters as a dict."""
    return json.loads(row["hyperparameters"])
