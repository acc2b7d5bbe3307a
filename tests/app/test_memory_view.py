"""The memory panel: accounted bytes per optimizer from first principles (computed off the event
loop, only while the panel is shown), and measured peaks labelled as measured, never drawn below
what RSS can resolve."""

from __future__ import annotations

import pytest

from app.explorer import Explorer
from app.views import MemoryView
from app.views.memory import RSS_RESOLUTION
from tests.app.conftest import wait_for


@pytest.fixture
def ex():
    explorer = Explorer(landscape="digits_mlp", lanes=[("zo_sgd", {}), ("sgd", {}), ("adam", {})])
    yield explorer
    explorer.close()


def shown(view: MemoryView, n: int) -> None:
    """Refresh the panel (as the page does while it is shown) until ``n`` bars are drawn."""
    def check() -> bool:
        view.refresh()
        return len(view.source.data["lane"]) == n
    wait_for(check, 60)


def bars(view: MemoryView) -> dict[str, dict[str, float]]:
    data = view.source.data
    scale = {"KB": 1024, "MB": 1024**2, "bytes": 1}[view.figure.xaxis[0].axis_label]
    return {lane: {c: data[c][i] * scale for c in ("parameters", "gradients", "state", "activations")}
            for i, lane in enumerate(data["lane"])}


def test_bars_show_each_optimizers_accounted_memory(ex: Explorer) -> None:
    view = ex.view(MemoryView)
    assert not view.plot.visible  # nothing drawn before anything is accounted
    shown(view, 3)
    b = bars(view)
    p_bytes = ex.problem.dim * 8  # float64 parameters of one trajectory
    zo, sgd, adam = (b[k] for k in ("MeZO / ZO-SGD", "SGD", "Adam"))
    assert zo == {"parameters": p_bytes, "gradients": 0, "state": 0, "activations": 0}  # inference memory
    assert sgd["gradients"] == p_bytes and sgd["state"] == 0 and sgd["activations"] > 0
    assert adam["state"] == 2 * p_bytes + 4 * len(ex.problem.param_shapes)  # m, v, a float32 step per tensor
    assert "accounted" in view.note.object
    # a hyperparameter that changes memory: M-FAC's window of past gradients; only that lane is redone
    lane = ex.session.lanes[0]
    ex.session.switch_optimizer(lane, "mfac")
    lane.hyperparameters.window = 8
    p = ex.problem.dim

    def mfac_state() -> float | None:
        view.refresh()
        return bars(view).get("M-FAC", {}).get("state")
    wait_for(lambda: mfac_state() == 8 * (8 * p + 8 * 8), 60)  # the window and its Gram matrix, float64


def test_measured_peaks_are_labelled_and_never_drawn_below_rss_resolution(ex: Explorer) -> None:
    view = ex.view(MemoryView)
    shown(view, 3)
    assert all(r.accounted_bytes < RSS_RESOLUTION for r in view.reports.values() if r is not None)
    job = view.measure_peaks(wait=True)
    assert not job.error and job.result == {}  # nothing RSS could resolve: nothing measured
    view.refresh()
    assert view.peaks.data["lane"] == [] and "Below RSS resolution" in view.note.object


def test_a_wide_network_is_measured_and_labelled_measured() -> None:
    ex = Explorer(landscape="digits_mlp", problem_options={"width": 1024}, lanes=[("adam", {})])
    try:
        view = ex.view(MemoryView)
        shown(view, 1)
        assert next(r for r in view.reports.values() if r is not None).accounted_bytes > RSS_RESOLUTION
        job = view.measure_peaks(wait=True)
        assert not job.error, job.error
        view.refresh()
        assert view.peaks.data["kind"] == ["measured (peak RSS of an isolated subprocess)"]
        assert view.peaks.data["peak"][0] > 0 and "measured (peak RSS" in view.note.object
    finally:
        ex.close()
