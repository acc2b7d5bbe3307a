"""The notebooks: each executed headless in FAST mode (nbclient, the venv's own ``python3`` kernel),
its key numbers checked against exact answers; and every committed notebook checked clean.

A notebook prints its key numbers as one line ``RESULTS {json}`` in its last cell. The checks
compare them with closed forms (gradient descent on a quadratic and on a saddle, gradient
descent-ascent and extragradient on a bilinear game), with independent computations (Lanczos
against the dense Hessian's ``eigvalsh``, a live session against its replay) and with byte counts
worked out from the architecture and each optimizer's state. FAST mode is set the way a reader
would: by editing the first code cell, the one tagged ``parameters``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = (
    "01_tour",
    "02_curvature",
    "03_edge_of_stability",
    "04_zeroth_order_and_memory",
    "05_second_order_and_mirror_descent",
    "06_experiments",
    "07_bilevel_and_surrogates",
    "08_games_and_mode_connectivity",
)
KERNEL = "python3"
"""ipykernel's own kernelspec: jupyter_client starts it with ``sys.executable`` (the venv's python)."""
CELL_TIMEOUT = 300  # seconds per cell; a FAST notebook takes ~20 s, more on a loaded machine
PREFIX_PROBE = "import sys\nprint('KERNEL_PREFIX ' + sys.prefix)"

# The 64-64-10 digits MLP of notebook 04: two weight matrices and two bias vectors, float64 in a run.
DIGITS_P = 64 * 64 + 64 + 64 * 10 + 10
DIGITS_TENSORS = 4
FLOAT64 = 8
STEP_COUNTER = 4  # torch.optim keeps Adam's `step` as a 0-d tensor of the default dtype (float32)


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def run_fast(name: str) -> dict[str, Any]:
    """Execute notebook ``name`` with ``FAST = True``; return its RESULTS after checking that no cell
    failed or printed a traceback and that the kernel ran in this environment."""
    nb = read(name)
    params = code_cells(nb)[0]
    assert params.source.count("FAST = False") == 1, "the parameters cell must set FAST = False once"
    params.source = params.source.replace("FAST = False", "FAST = True")
    nb.cells.append(new_code_cell(PREFIX_PROBE))
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=CELL_TIMEOUT, allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})  # cwd as in JupyterLab
    client.execute()
    stdout: list[str] = []
    for cell in code_cells(nb):
        for out in cell.outputs:
            assert out.output_type != "error", f"{name}: {out.ename}: {out.evalue}"
            if out.output_type == "stream" and out.name == "stderr":
                assert "Traceback" not in out.text and "Error" not in out.text, f"{name}: {out.text}"
            if out.output_type == "stream" and out.name == "stdout":
                stdout.extend(out.text.splitlines())
    prefixes = [ln.split(" ", 1)[1] for ln in stdout if ln.startswith("KERNEL_PREFIX ")]
    assert prefixes == [sys.prefix], "the kernel must run in the test's own environment"
    lines = [ln for ln in stdout if ln.startswith("RESULTS ")]
    assert len(lines) == 1, f"{name}: expected one RESULTS line, got {len(lines)}"
    return json.loads(lines[0].split(" ", 1)[1])


def by_optimizer(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["optimizer"]: row for row in rows}


# -- committed notebooks ---------------------------------------------------------------------------

def test_the_notebook_folder_holds_exactly_the_tested_notebooks() -> None:
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean(name: str) -> None:
    nb = read(name)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown"  # an introduction first
    cells = code_cells(nb)
    for cell in cells:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: stale outputs in\n{cell.source}"
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", [])
    assert re.search(r"^FAST = False\b", first.source, re.MULTILINE)
    assert nb.metadata["kernelspec"]["name"] == KERNEL
    last = cells[-1].source
    assert ".close()" in last and 'print("RESULTS "' in last  # live components stop their threads


# -- executed in FAST mode -------------------------------------------------------------------------

def test_tour_steers_a_live_race_that_replays_exactly() -> None:
    r = run_fast("01_tour")
    live = r["live"]
    assert live["replay_max_abs_diff"] == 0.0  # the live race and its replayed event log, bit for bit
    assert 0 < live["adam_switch_tick"] < live["ticks"]  # the notebook changed a learning rate mid-run
    assert live["n_hyperparameter_events"] == 2
    assert (live["adam_lr_before"], live["adam_lr_after"]) == (0.1, 0.02)  # in effect from that step
    assert live["points_streamed"] > 0  # the periodic pump streamed records into the plots
    # gradient descent on 1/2 (x^2 + 10 y^2), lr changed mid-run, against (1 - lr lambda)^t
    assert r["closed_form"]["max_abs_err"] <= 1e-12
    himmelblau = [row for row in r["race"] if row["landscape"] == "himmelblau"]
    assert len(himmelblau) == 3 and all(row["reached a global minimum"] == 1.0 for row in himmelblau)
    assert r["running_at_end"] is True  # "Run All" ends with the live race streaming, not paused
    assert r["workers_alive"] == [False]


def test_curvature_estimators_match_the_dense_hessian() -> None:
    r = run_fast("02_curvature")
    lz = r["lanczos"]
    scale = max(1.0, abs(lz["exact_top"][0]))
    np.testing.assert_allclose(lz["top"], lz["exact_top"], rtol=0, atol=1e-8 * scale)
    np.testing.assert_allclose(lz["bottom"], lz["exact_bottom"], rtol=0, atol=1e-8 * scale)
    assert lz["hvps"] < lz["P"] / 2  # ten eigenvalues for a fraction of P products
    assert abs(lz["power_value"] - lz["exact_top"][0]) <= 1e-6 * abs(lz["exact_top"][0])
    slq = r["slq"]
    assert abs(slq["top_node"] - slq["exact_top"]) <= 1e-6 * abs(slq["exact_top"])
    assert slq["l1"] < 0.25  # broadened SLQ density vs the exact spectrum's (two unit masses: <= 2)
    trace = r["trace"]
    for row in trace["rows"]:  # within the plotted error bar: 3 standard errors
        assert abs(row["estimate"] - trace["exact"]) <= 3 * row["stderr"], row
        if row["estimator"] == "Hutchinson" and row["HVPs"] >= 40:
            # the reported error bar against the exact sqrt(2 (|H|_F^2 - sum H_ii^2) / n)
            assert 0.5 <= row["stderr"] / row["exact stderr"] <= 1.5, row
    assert r["workers_alive"] == [False]


def test_edge_of_stability_threshold_follows_the_learning_rate() -> None:
    r = run_fast("03_edge_of_stability")
    eos = r["eos"]
    etas, bounds = eos["etas"], np.cumsum([0, *eos["phase_steps"]])
    for step, lr, _, threshold in eos["probes"]:
        phase = int(np.searchsorted(bounds, step, side="right")) - 1
        assert lr == etas[phase]
        assert threshold == 2 / lr  # exactly 2/eta at the current learning rate
    first = np.array([s for step, _, s, _ in eos["probes"] if step < bounds[1]])
    rising = first[int(np.argmin(first)):]
    assert np.all(np.diff(rising) > 0)  # progressive sharpening, probe after probe
    assert rising[-1] >= 1.2 * rising[0] and rising[-1] >= 0.8 * 2 / etas[0]  # towards 2/eta
    # at eta = 0.2 (threshold 10, sharpness ~5.5) the descent lemma holds: the loss never goes up
    assert eos["phases"][2]["loss went up (fraction of steps)"] == 0.0
    assert eos["loss_end"] < eos["loss_start"]
    assert r["workers_alive"] == [False]


def test_zeroth_order_oracle_counts_and_memory_bars() -> None:
    r = run_fast("04_zeroth_order_and_memory")
    race = by_optimizer(r["race"])
    zo, sgd, adam = race["zo_sgd"], race["sgd"], race["adam"]
    assert (zo["function values"], zo["gradients"]) == (2 * zo["steps"], 0)  # MeZO: two forward passes
    for row in (sgd, adam):
        assert (row["function values"], row["gradients"]) == (row["steps"], row["steps"])  # one gradient
    assert sgd["test accuracy"] > 0.85 and adam["test accuracy"] > 0.85
    assert zo["test accuracy"] > 0.3  # chance is 0.1: it learns from function values alone
    mem = r["memory"]
    assert (mem["P"], mem["n_tensors"]) == (DIGITS_P, DIGITS_TENSORS)
    m = mem["optimizers"]
    params = DIGITS_P * FLOAT64
    assert m["zo_sgd"] == {"parameter_bytes": params, "gradient_bytes": 0, "optimizer_state_bytes": 0,
                           "activation_bytes": 0, "accounted": params}
    assert mem["inference"] == params == m["zo_sgd"]["accounted"]  # MeZO holds what inference holds
    assert (m["sgd"]["gradient_bytes"], m["sgd"]["optimizer_state_bytes"]) == (params, 0)
    assert m["adam"]["gradient_bytes"] == params
    assert m["adam"]["optimizer_state_bytes"] == 2 * params + DIGITS_TENSORS * STEP_COUNTER
    assert m["adam"]["activation_bytes"] == m["sgd"]["activation_bytes"] > 0  # the same forward pass
    assert mem["card"] == {name: row["accounted"] for name, row in m.items()}  # the app's bars agree
    assert r["workers_alive"] == [False]


def test_second_order_on_the_saddle_and_mirror_prox_on_the_game() -> None:
    r = run_fast("05_second_order_and_mirror_descent")
    s = r["saddle"]
    rows = by_optimizer(s["rows"])
    (x0, y0), eta, steps = s["start"], s["eta_gd"], s["steps"]
    # f = x^2 - y^2: gradient descent is x_t = (1 - 2 eta)^t x0, y_t = (1 + 2 eta)^t y0
    assert s["gd_closed_form_max_rel_err"] <= 1e-12
    t = np.arange(steps)
    f = ((1 - 2 * eta) ** t * x0) ** 2 - ((1 + 2 * eta) ** t * y0) ** 2
    below = np.flatnonzero(f < -1)
    assert rows["sgd"]["escape step"] == (int(below[0]) if below.size else None)
    newton = rows["newton"]
    assert newton["distance to the saddle"] <= 1e-12 and newton["escape step"] is None  # stuck on it
    sophia = rows["sophia_h"]
    assert sophia["final f"] < -1 and sophia["escape step"] is not None
    assert sophia["escape step"] < (rows["sgd"]["escape step"] or steps)
    g = r["game"]
    game = by_optimizer(g["rows"])
    eta, T = g["eta"], g["steps"]
    # min_x max_y xy: GDA multiplies the distance by sqrt(1 + eta^2) per step, extragradient by
    # sqrt((1 - eta^2)^2 + eta^2)
    assert math.isclose(game["sgd"]["distance ratio"], (1 + eta**2) ** (T / 2), rel_tol=1e-10)
    assert math.isclose(game["mirror_prox"]["distance ratio"], ((1 - eta**2) ** 2 + eta**2) ** (T / 2),
                        rel_tol=1e-10)
    assert game["optimistic_md"]["distance ratio"] < 1
    assert [game[n]["gradients per step"] for n in ("sgd", "mirror_prox", "optimistic_md")] == [1, 2, 1]
    assert r["workers_alive"] == [False, False]


def test_experiment_notebook_has_one_row_per_trial_and_a_row_replays_exactly() -> None:
    r = run_fast("06_experiments")
    e = r["experiment"]
    assert e["complete"] and e["rows"] == e["unique_trials"] == e["expected_rows"] == 2 * 6 * 2 * 2
    assert e["replay_equal"]  # the best row, reopened alone as a race, bit for bit
    assert e["units_spent_max"] <= e["budget"]
    assert set(r["basins"]) == {"sgd", "adam"}
    for fractions in r["basins"].values():
        assert abs(sum(fractions.values()) - 1.0) < 1e-12
    assert r["running_after_close"] is False


def test_bilevel_notebook_penalty_bias_is_linear_in_sigma_and_sso_counts_its_model_steps_apart() -> None:
    r = run_fast("07_bilevel_and_surrogates")
    mu, rho = 2.0, 0.1  # the toy: f = (y - 1)^2/2 + rho x^2/2, g = mu y^2/2 - mu y sin x

    def stationary(sigma: float) -> float:
        """psi_sigma'(x) = rho x + mu/(sigma + mu) cos x (sin x - 1) = 0, with y_sigma = (sigma + mu sin x) /
        (sigma + mu); Newton's method near x* ~ 0.97."""
        k, x = mu / (sigma + mu), 1.0
        for _ in range(100):
            x -= (rho * x + k * math.cos(x) * (math.sin(x) - 1)) / (rho + k * (math.cos(2 * x) + math.sin(x)))
        return x

    exact = r["exact"]
    assert exact["distance"] < 1e-10 and exact["hvps"] > 0
    # y* by 50 gradient steps of 0.1 from the last y: each contracts the error by 1 - 0.1 mu = 0.8, |y| <= 1
    assert exact["max_curve_error"] < 2 * 0.8**50
    # gradient descent on f (lr 0.5) from (-1.2, 1.5): x_t = (1 - 0.5 rho)^t x_0, y_t - 1 = 0.5^t (y_0 - 1),
    # towards argmin f = (0, 1), off the curve y = sin x
    t = r["steps"]
    np.testing.assert_allclose(r["plain_gd"], [-1.2 * (1 - 0.5 * rho) ** t, 1 + 0.5 * 0.5**t], rtol=1e-12)
    pen = r["penalty"]
    for sigma, x in zip(pen["sigmas"], pen["x"], strict=True):
        assert abs(x - stationary(sigma)) < 1e-9, (sigma, x)
    bias, sigmas = np.array(pen["bias"]), np.array(pen["sigmas"])
    assert np.all(np.diff(bias) < 0) and (bias / sigmas).max() / (bias / sigmas).min() < 1.25  # O(sigma)
    assert 0.9 < pen["slope"] < 1.1
    bo = r["bo_rep"]
    assert bo["median_last"] < bo["median_first"] < bo["first"] and bo["median_last"] < 0.1 * bo["first"]
    assert bo["cold_first"] > 1.5 * bo["first"]  # the initialization refinement helps
    sso = r["sso"]
    assert 1.5 * sso["sso_loss_gradients"] <= sso["sgd_loss_gradients"] < math.inf
    assert sso["sso_loss_gradients"] < sso["sso_model_passes"] <= 10 * sso["sso_loss_gradients"]
    assert sso["sso_loss_gradients_total"] == sso["steps"] and sso["sso_model_steps_total"] > 0
    assert sso["one_inner_step_is_sgd"] <= 1e-13
    panel = r["panel"]
    assert panel["figures"] == ["error", "gap", "objective", "sso_gradients", "sso_passes", "trajectory"]
    assert panel["sso_shown"] == panel["sso_engine"]  # the panel shows the engine's two counts
    assert r["busy_after_close"] is False


def test_games_cycle_or_converge_and_weight_matching_removes_the_barrier() -> None:
    from landscapes import get_landscape
    from landscapes.simplex_games import play

    r = run_fast("08_games_and_mode_connectivity")
    game = r["game"]
    for g in game.values():
        np.testing.assert_allclose(g["equilibrium"], [1 / 3] * 6, atol=1e-15)  # rock-paper-scissors' Nash
    mw = game["exp_gradient"]
    # simultaneous multiplicative weights in a zero-sum game: the KL to an interior equilibrium never
    # decreases (Bailey & Piliouras 2018); only the running average approaches it
    assert min(mw["kl_steps"]) > 0 and mw["kl_last"] > 2 * mw["kl_first"]
    assert mw["average_gap_last"] < 0.1 * mw["gap_last"]
    for m in ("optimistic_mw", "mirror_prox_entropic"):  # last-iterate convergence
        assert game[m]["kl_last"] < 0.5 * game[m]["kl_first"], (m, game[m])
    for m, g in r["regularized"].items():  # tau > 0: every method converges, MW included
        assert g["kl_last"] < 0.05 * g["kl_first"], (m, g)
    lmc = r["lmc"]
    # a permutation of hidden units computes the same function: both paths start and end at equal losses
    assert lmc["end_matched"] == pytest.approx(lmc["end_naive"], rel=1e-9)
    assert lmc["start_matched"] == lmc["start_naive"]
    assert lmc["l2_naive"] == pytest.approx(lmc["l2_check"], rel=1e-12)
    assert lmc["l2_matched"] < lmc["l2_naive"]
    assert lmc["barrier_matched"]["train_loss"] < 0.5 * lmc["barrier_naive"]["train_loss"]
    # the app's game tab shows what the engine plays for its study
    s = r["tab_study"]
    rps = get_landscape("rps_game", tau=s["tau"])
    for m, kl in r["tab"].items():
        assert kl == play(rps, m, s["steps"], {"lr": s["lr"]}).kl_to_equilibrium[-1]
