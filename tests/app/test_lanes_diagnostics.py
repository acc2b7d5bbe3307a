"""The diagnostics view: an optimizer's own diagnostics, the run's clipped fraction and the noise
fields of the newest probe, one row per lane, with what each number means."""

from __future__ import annotations

import numpy as np

from app.model import RaceSession
from app.views.diagnostics import DiagnosticsView, noise_cells
from engine.instruments import Probe
from tests.app.conftest import wait_for


def test_clipped_fraction_and_estimate_cosine_reach_the_table() -> None:
    s = RaceSession(problem="quadratic", optimizers=["sgd", "adam"], speed=500)
    try:
        view = DiagnosticsView(s, lambda _: None)
        s.lanes[0].wrap.param.update(clip="norm", threshold=1e-9)  # every step clipped: fraction 1
        s.step()
        wait_for(lambda: s.worker.tick == 1)
        wait_for(lambda: (view.consume(s.drain()) or True) and s.lanes[0].id in view.probes)
        rows = view.rows()
        assert rows[0]["values"] == {"clipped_fraction": 1.0}
        assert rows[1]["values"] == {}  # Adam declares none and does not clip
        # a full-gradient lane's estimate is the gradient: cosine exactly 1 (first probe, step 0)
        assert rows[1]["noise"]["estimate cosine"].startswith("1")
        view.refresh()
        html = view.table.object
        assert "clipped fraction" in html and "share of the gradient the lane's clipping changed" in html
    finally:
        s.close()


def test_noise_cells_show_what_a_probe_measured_and_dash_the_rest() -> None:
    fields = {f: None for f in Probe.__dataclass_fields__}
    fields.update(grad_snr=np.array([0.5, 2.0, 8.0]), noise_scale=123.456, norm_test=float("nan"),
                  estimate_cosine=0.25, estimate_cosine_full=0.125)
    probe = type("P", (), fields)()
    assert noise_cells(probe) == {"grad SNR": "2", "noise scale": "123", "norm test": "—",
                                  "estimate cosine": "0.25 (0.125)"}
