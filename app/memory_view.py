"""Memory per optimizer, as bars: accounted bytes of one step (exact) and, on request, its
measured peak. Every figure says which it is.

The accounting (:func:`engine.memory.account`) steps a fresh copy of one trajectory and counts the
tensors it holds; the measured peak runs that step in an isolated subprocess (peak RSS on CPU, the
allocator's peak on CUDA: :func:`engine.memory.measure_peak_subprocess`). Both run off the UI
thread; :meth:`MemoryView.update` draws what has arrived.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

import panel as pn
import torch
from bokeh.models import ColumnDataSource, FactorRange, HoverTool
from bokeh.plotting import figure

from engine.memory import MemoryReport, PeakMeasurement, account, measure_peak_subprocess
from landscapes import available_networks, get_landscape, get_network

PARTS = ("parameters", "gradients", "optimizer state", "saved activations")
COLUMNS = ("parameters", "gradients", "state", "activations")
COLORS = ("#4c72b0", "#dd8452", "#c44e52", "#8172b3")
UNITS = ((1 << 20, "MB"), (1 << 10, "KB"), (1, "bytes"))


def _unit(largest: float) -> tuple[int, str]:
    for scale, name in UNITS:
        if largest >= scale:
            return scale, name
    return UNITS[-1]


def account_step(problem: str, options: dict[str, Any], optimizer: str, values: dict[str, Any],
                 dtype: str) -> Callable[[], MemoryReport]:
    """One accounted step of a lane, for :func:`engine.memory.measure_peak_subprocess` (its
    target, called in the child with the user's choices as JSON data); warmed up once."""
    make = get_network if problem in available_networks() else get_landscape
    built = make(problem, **options)

    def step() -> MemoryReport:
        return account(optimizer, built, hyperparameters=values, dtype=getattr(torch, dtype))

    step()  # the first optimizer step of a process imports ~800 modules: not the step's peak
    return step


class MemoryView:
    """Stacked horizontal bars per lane; a diamond at the measured peak when one was measured."""

    def __init__(self) -> None:
        self.source = ColumnDataSource({"lane": [], **{c: [] for c in COLUMNS}, "total": [], "kind": []})
        self.peaks = ColumnDataSource(dict(lane=[], peak=[], kind=[], text=[]))
        fig = figure(height=220, sizing_mode="stretch_width", y_range=FactorRange(), toolbar_location=None,
                     title="memory of one step, per trajectory: bars accounted (exact bytes)")
        bars = fig.hbar_stack(list(COLUMNS), y="lane", height=0.6, source=self.source, color=list(COLORS),
                              legend_label=list(PARTS))
        fig.scatter("peak", "lane", source=self.peaks, marker="diamond", size=16, fill_color="black",
                    line_color="white", legend_label="measured peak above baseline")
        fig.add_tools(HoverTool(renderers=bars, tooltips=[("optimizer", "@lane"), ("accounted", "@total"),
                                                          ("how", "@kind")]))
        fig.legend.location = "bottom_right"
        fig.legend.orientation = "horizontal"
        fig.legend.background_fill_alpha = 0.7
        self.figure = fig
        self.note = pn.pane.Markdown("", margin=(0, 10))
        self.measure_button = pn.widgets.Button(label="measure peaks (isolated subprocess per optimizer)",
                                                width=330)
        self.panel = pn.Column(pn.pane.Bokeh(fig, sizing_mode="stretch_width"), self.note,
                               self.measure_button, sizing_mode="stretch_width")
        self.reports: dict[str, MemoryReport] = {}  # lane label -> accounted report
        self.measured: dict[str, PeakMeasurement] = {}
        self.error = ""
        self.busy = False
        self._drawn: tuple = ()
        self._lock = threading.Lock()
        self._generation = 0

    # -- computing (off the UI thread) -----------------------------------------------------------------
    def account_lanes(self, private_problem: Callable[[], Any],
                      lanes: Mapping[str, tuple[str, Mapping[str, Any]]], dtype: Any,
                      wait: bool = False) -> None:
        """Account one step of each lane (``label -> (optimizer, hyperparameters)``) in a thread, on
        the problem ``private_problem()`` returns there: a copy no other thread uses, since a step
        of a network problem swaps its module's parameters while it runs."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            self.measured = {}

        def work() -> None:
            out: dict[str, MemoryReport] = {}
            errors = []
            try:
                problem = private_problem()
            except Exception as exc:  # shown in the page, never lost in a thread
                with self._lock:
                    if generation == self._generation:
                        self.error = f"memory accounting failed: {exc}"
                return
            for label, (name, values) in lanes.items():
                try:
                    out[label] = account(name, problem, hyperparameters=values, dtype=dtype)
                except (NotImplementedError, ValueError, RuntimeError) as exc:
                    errors.append(f"{label}: {exc}")
            with self._lock:
                if generation == self._generation:
                    self.reports, self.error = out, "; ".join(errors)

        thread = threading.Thread(target=work, name="optiscope-memory", daemon=True)
        thread.start()
        if wait:
            thread.join()

    def measure_lanes(self, problem: str, options: Mapping[str, Any],
                      lanes: Mapping[str, tuple[str, Mapping[str, Any]]], dtype: str, cuda: bool,
                      wait: bool = False) -> None:
        """Measure each lane's peak in its own fresh subprocess (seconds each), in a thread."""
        if self.busy:
            return
        self.busy = True
        generation = self._generation

        def work() -> None:
            try:
                for label, (name, values) in lanes.items():
                    params = {"problem": problem, "options": dict(options), "optimizer": name,
                              "values": dict(values), "dtype": dtype}
                    try:
                        peak = measure_peak_subprocess("app.memory_view:account_step", params=params,
                                                       cuda=cuda, timeout=120)
                    except (RuntimeError, OSError) as exc:
                        with self._lock:
                            self.error = f"{label}: measurement failed: {str(exc)[-300:]}"
                        continue
                    with self._lock:
                        if generation == self._generation:
                            self.measured[label] = peak
            finally:
                self.busy = False

        thread = threading.Thread(target=work, name="optiscope-memory-peak", daemon=True)
        thread.start()
        if wait:
            thread.join()

    # -- drawing (UI thread) ----------------------------------------------------------------------------
    def update(self) -> str:
        """Draw what the threads produced (nothing is sent if nothing changed); returns any error."""
        with self._lock:
            reports, measured, error = dict(self.reports), dict(self.measured), self.error
        key = (tuple((k, r) for k, r in reports.items()), tuple((k, m.increase) for k, m in measured.items()),
               error, self.busy)
        if key == self._drawn:
            return ""
        self._drawn = key
        largest = max([r.accounted_bytes for r in reports.values()] + [m.increase for m in measured.values()]
                      + [1])
        scale, unit = _unit(largest)
        labels = list(reports)
        self.figure.y_range.factors = labels[::-1]
        self.figure.xaxis.axis_label = unit
        self.source.data = {
            "lane": labels,
            **{c: [getattr(reports[k], f) / scale for k in labels]
               for c, f in zip(COLUMNS, ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes",
                                         "activation_bytes"), strict=True)},
            "total": [f"{reports[k].accounted_bytes:,} bytes" for k in labels],
            "kind": ["accounted: counted from the tensors"] * len(labels)}
        shown = [k for k in labels if k in measured]
        self.peaks.data = dict(lane=shown, peak=[measured[k].increase / scale for k in shown],
                               kind=[measured[k].kind for k in shown],
                               text=[f"{measured[k].increase / scale:.3g} {unit}" for k in shown])
        kinds = sorted({m.kind for m in measured.values()})
        lines = ["Bars: **accounted**, exact bytes of the tensors one step holds (parameters, gradients, "
                 "optimizer state, activations saved for backward); transients are not in them."]
        if kinds:
            lines.append("Diamonds: **" + "; ".join(kinds) + "**, the step's peak above its baseline: "
                         + ", ".join(f"{k} {measured[k].increase / scale:.3g} {unit}" for k in shown) + ".")
        elif self.busy:
            lines.append("Measuring peaks in isolated subprocesses…")
        self.note.object = " ".join(lines)
        return error
