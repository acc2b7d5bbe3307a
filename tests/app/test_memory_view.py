"""The memory bars in the app: accounted bytes per optimizer from first principles, and a measured
peak labelled as measured."""

from __future__ import annotations

import pytest

from app.explorer import Explorer
from tests.app.test_explorer import pump_until
from tests.engine.test_worker import wait_for


@pytest.fixture
def ex():
    explorer = Explorer(landscape="digits_mlp", lanes=[("zo_sgd", {}), ("sgd", {}), ("adam", {})])
    yield explorer
    explorer.close()


def bars(ex: Explorer) -> dict[str, dict[str, float]]:
    data = ex.memory_view.source.data
    return {lane: {c: data[c][i] for c in ("parameters", "gradients", "state", "activations")}
            for i, lane in enumerate(data["lane"])}


def test_bars_show_each_optimizers_accounted_memory(ex: Explorer) -> None:
    wait_for(lambda: len(ex.memory_view.reports) == 3, 30)
    pump_until(ex, lambda: len(ex.memory_view.source.data["lane"]) == 3)
    p_bytes = ex.problem.dim * 8  # float64 parameters of one trajectory
    scale = {"KB": 1024, "MB": 1024**2, "bytes": 1}[ex.memory_view.figure.xaxis.axis_label]
    b = {k: {c: v * scale for c, v in row.items()} for k, row in bars(ex).items()}
    assert len(b) == 3
    zo, sgd, adam = (b[k] for k in ex.memory_view.source.data["lane"])
    assert zo == {"parameters": p_bytes, "gradients": 0, "state": 0, "activations": 0}  # inference memory
    assert sgd["gradients"] == p_bytes and sgd["state"] == 0 and sgd["activations"] > 0
    n_tensors = len(ex.problem.param_shapes)
    assert adam["state"] == 2 * p_bytes + 4 * n_tensors  # m, v and a float32 step per tensor
    assert "accounted" in ex.memory_view.note.object
    # a hyperparameter that changes memory: M-FAC's window of past gradients
    ex.switch_optimizer(0, "mfac")
    ex.set_hyperparameter(0, "window", 8)
    p = ex.problem.dim
    # the window of m gradients and its m x m Gram matrix, float64 (tests/engine/test_memory.py)
    wait_for(lambda: (r := ex.memory_view.reports.get("M-FAC")) is not None
             and r.optimizer_state_bytes == 8 * (8 * p + 8 * 8), 30)


def test_measured_peaks_are_labelled_measured(ex: Explorer) -> None:
    # wide enough that Adam's step must map new memory (gradients and state: ~1.8 MB in float64);
    # at the default width its ~0.1 MB could fit in pages the process already had (seen: 0 bytes)
    ex.problem_options = {"width": 1024}
    ex.optimizers = ["adam"]
    wait_for(lambda: list(ex.memory_view.reports) == ["Adam"]
             and ex.memory_view.reports["Adam"].parameter_bytes == 8 * ex.problem.dim > 600_000, 30)
    ex.measure_memory(wait=True)
    pump_until(ex, lambda: len(ex.memory_view.peaks.data["lane"]) == 1, 10)
    assert ex.memory_view.peaks.data["kind"] == ["measured (peak RSS of an isolated subprocess)"]
    assert ex.memory_view.peaks.data["peak"][0] > 0
    assert "measured (peak RSS of an isolated subprocess)" in ex.memory_view.note.object
