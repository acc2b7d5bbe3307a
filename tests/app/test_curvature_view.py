"""The curvature and diagnostics views under sharpness-only probes: the page's "sharpness" preset
sends :meth:`engine.instruments.ProbeConfig.sharpness`, and the views say that the directional
sharpness along the update is not measured (no dotted curve drawn from nothing)."""

from __future__ import annotations

import math

import numpy as np

from app.explorer import Explorer
from app.model import PROBE_PRESETS
from app.views import CurvatureView
from app.views.curvature import KEY, KEY_OFF, NOT_MEASURED
from app.views.diagnostics import DiagnosticsView
from engine.events import SetProbes
from engine.instruments import ProbeConfig
from tests.app.conftest import steps


def test_the_sharpness_preset_says_what_it_does_not_measure() -> None:
    """On the bowl (Hessian diag(1, 10)): economy-style default probes draw the dotted curve and
    name no gap; after the "sharpness" preset the title, the table ("not measured") and a caption
    name the directional sharpness as not measured, while lambda_max stays exactly 10."""
    ex = Explorer(landscape="quadratic", lanes=[("sgd", {"lr": 0.05})], probe_every=2, speed=500)
    try:
        view, diag = ex.view(CurvatureView), ex.view(DiagnosticsView)
        steps(ex, 3)
        view.refresh()
        diag.refresh()
        src = view.slots.sources[0].data
        assert all(math.isfinite(d) for d in src["directional"])
        assert view.key.object == KEY and NOT_MEASURED not in view.summary.object
        assert "not measured" not in view.summary.object and "Not measured" not in diag.table.object

        assert "sharpness" in PROBE_PRESETS
        ex.session.probe_preset = "sharpness"
        log = ex.worker.call(lambda run: [e.event for e in run.log]).result(timeout=10)
        sent = [dict(e.config) for e in log if isinstance(e, SetProbes)]
        assert sent[-1] == ProbeConfig.sharpness(seed=ex.session.seed).to_dict()
        ex.session.probe_every = 1  # a widget change keeps the preset's other fields
        steps(ex, 2)
        view.refresh()
        diag.refresh()
        assert ex.worker.call(lambda run: run.probes.directional).result(timeout=10) is False
        n = len(src["step"])
        assert n == 4 and np.isnan(src["directional"][-2:]).all()
        np.testing.assert_allclose(src["sharpness"], 10.0, rtol=1e-6)  # float32 products
        assert view.key.object == KEY_OFF
        assert NOT_MEASURED in view.summary.object and "<td>not measured</td>" in view.summary.object
        assert "Not measured: the directional sharpness along the update or the estimate cosine" \
            in diag.table.object
    finally:
        ex.close()
