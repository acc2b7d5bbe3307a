"""Per-plot axis controls: any figure of the page on a log or linear y-axis, over a range of the
user's choice or the automatic one. One small card in the sidebar (pick the plot, then its scale
and range), and :func:`set_axes`, which presets use too (``axes = {"sharpness" = {log = false,
y = [2, 9]}}`` in ``app/presets.toml``: the figure whose title starts with the key)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import panel as pn
from bokeh.models import DataRange1d, LogScale, Range1d
from bokeh.plotting import figure

from app.figures import set_log_y

_AUTO: dict[str, Any] = {}
"""figure id -> its automatic y-range, kept while a fixed one is shown."""


def set_axes(fig: figure, *, log: bool | None = None, y: Sequence[float] | None = None,
             auto: bool = False) -> str:
    """Change ``fig``'s y-axis in place: ``log`` (None: keep), a fixed range ``y = (low, high)``,
    or back to the automatic range (``auto``). Returns "" or why a range was refused."""
    if log is not None:
        set_log_y(fig, log)
    if auto and fig.id in _AUTO:
        fig.y_range = _AUTO.pop(fig.id)
    if y is not None:
        low, high = (float(v) for v in y)
        if not low < high:
            return f"the range needs low < high, got {low:g} to {high:g}"
        if isinstance(fig.y_scale, LogScale) and low <= 0:
            return f"a log axis cannot show {low:g}: choose a range above 0 or a linear axis"
        if isinstance(fig.y_range, Range1d) and fig.id in _AUTO:
            fig.y_range.update(start=low, end=high)
        else:
            if isinstance(fig.y_range, DataRange1d):
                _AUTO[fig.id] = fig.y_range
            fig.y_range = Range1d(low, high)
    return ""


def find(figures: Sequence[figure], prefix: str) -> figure | None:
    """The first figure whose title starts with ``prefix``."""
    return next((f for f in figures if f.title is not None and f.title.text.startswith(prefix)), None)


class AxisControls:
    """The sidebar card: a plot (by title), its y scale and range."""

    def __init__(self, figures: Callable[[], list[figure]]) -> None:
        self.figures = figures
        w = pn.widgets
        self.plot = w.Select(label="plot", options={}, sizing_mode="stretch_width")
        self.log = w.Checkbox(label="log y-axis")
        self.low = w.FloatInput(label="y from", value=None, width=100)
        self.high = w.FloatInput(label="y to", value=None, width=100)
        self.auto = w.Button(label="auto range", width=90, margin=(22, 5, 5, 5))
        self.note = pn.pane.Str("", styles={"font-size": "0.8em", "color": "#b00"})
        self._syncing = False
        self.plot.param.watch(lambda _: self._show(), "value")
        self.log.param.watch(lambda e: self._apply(log=e.new), "value")
        for box in (self.low, self.high):
            box.param.watch(lambda _: self._range(), "value")
        self.auto.on_click(lambda _: self._apply(auto=True))
        self.panel = pn.Card(self.plot, self.log, pn.Row(self.low, self.high, self.auto), self.note,
                             title="Plot axes", collapsed=True, sizing_mode="stretch_width", margin=(3, 0))
        self.panel.param.watch(lambda e: e.new or self.list_plots(), "collapsed")

    def list_plots(self) -> None:
        """The page's figures now (titles change with the problem)."""
        options = {f"{f.title.text[:60]}": i for i, f in enumerate(self.figures()) if f.title is not None}
        if options != self.plot.options:
            self.plot.options = options
        self._show()

    def _fig(self) -> figure | None:
        figs = self.figures()
        i = self.plot.value
        return figs[i] if isinstance(i, int) and 0 <= i < len(figs) else None

    def _show(self) -> None:
        fig = self._fig()
        if fig is None:
            return
        self._syncing = True
        try:
            self.log.value = isinstance(fig.y_scale, LogScale)
            fixed = isinstance(fig.y_range, Range1d) and fig.id in _AUTO
            self.low.value = fig.y_range.start if fixed else None
            self.high.value = fig.y_range.end if fixed else None
        finally:
            self._syncing = False

    def _range(self) -> None:
        if self.low.value is not None and self.high.value is not None:
            self._apply(y=(self.low.value, self.high.value))

    def _apply(self, **change: Any) -> None:
        fig = self._fig()
        if self._syncing or fig is None:
            return
        self.note.object = set_axes(fig, **change)
        if change.get("auto"):
            self._show()
