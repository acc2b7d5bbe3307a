"""The step-rate meter: the steps per second the race really takes, beside the rate asked of it
(a slow machine, a costly probe or a network's metrics make them differ; a presenter should know)."""

from __future__ import annotations

import time
from typing import Any

import panel as pn

from app.views.base import View

WINDOW = 2.0
"""Seconds the measured rate averages over."""


class RateView(View):
    title = "step rate"
    area = "status"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.text = pn.pane.HTML("", margin=(0, 10), styles={"font-size": "0.85em", "color": "#555"},
                                 css_classes=["step-rate"])
        self.samples: list[tuple[float, int]] = []
        self.panel = self.text

    def rate(self) -> float | None:
        """Steps per second over the last :data:`WINDOW` seconds (None before two samples)."""
        if len(self.samples) < 2:
            return None
        (t0, k0), (t1, k1) = self.samples[0], self.samples[-1]
        return (k1 - k0) / (t1 - t0) if t1 > t0 else None

    def refresh(self) -> None:
        s = self.session
        now = time.monotonic()
        self.samples.append((now, s.worker.tick))
        while len(self.samples) > 2 and now - self.samples[0][0] > WINDOW:
            self.samples.pop(0)
        rate = self.rate()
        if not s.running:
            text = f"paused · asks {s.speed:g} steps/s"
        elif rate is None:
            text = f"asks {s.speed:g} steps/s"
        else:
            slow = rate < 0.8 * s.speed
            shown = f"<b style='color:#b35900'>{rate:.0f}</b>" if slow else f"{rate:.0f}"
            text = f"{shown} of {s.speed:g} steps/s asked"
        if text != self.text.object:
            self.text.object = text

    def set_problem(self) -> None:
        self.samples = []
