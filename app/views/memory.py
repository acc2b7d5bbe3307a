"""Memory of one step per lane, as stacked bars: accounted bytes (exact, counted from the tensors),
and on request the measured peak, in an isolated subprocess per lane (peak RSS on CPU, the
allocator's on CUDA). Every figure says which it is.

Both run off the event loop, and only while this panel is shown: the accounting steps a private
copy of the problem once per lane (cached per optimizer and hyperparameters, so a slider release
re-accounts that lane only); the measurement shows its progress and can be cancelled. RSS cannot
see a difference smaller than :data:`RSS_RESOLUTION` (allocator pages, library buffers): such a lane
is not measured, and a measured peak below it is written as text, never drawn as a result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import panel as pn
import torch
from bokeh.models import ColumnDataSource, FactorRange, HoverTool

from app.figures import make_figure
from app.jobs import Job
from app.views.base import JobStrip, View, html_escape, swatch
from engine.memory import MEASURED_RSS, MemoryReport, PeakMeasurement, account, measure_peak_subprocess
from landscapes import available_networks, get_landscape, get_network

PARTS = ("parameters", "gradients", "optimizer state", "saved activations")
COLUMNS = ("parameters", "gradients", "state", "activations")
FIELDS = ("parameter_bytes", "gradient_bytes", "optimizer_state_bytes", "activation_bytes")
COLORS = ("#4c72b0", "#dd8452", "#c44e52", "#8172b3")
UNITS = ((1 << 20, "MB"), (1 << 10, "KB"), (1, "bytes"))
RSS_RESOLUTION = 1 << 20
"""The smallest difference of peak RSS this instrument reports (1 MB): below it, allocator pages and
library buffers (MKL keeps ~1 MB per new shape) decide what RSS shows, not the optimizer."""


def _unit(largest: float) -> tuple[int, str]:
    for scale, name in UNITS:
        if largest >= scale:
            return scale, name
    return UNITS[-1]


def account_step(problem: str, options: dict[str, Any], optimizer: str, values: dict[str, Any],
                 dtype: str) -> Callable[[], MemoryReport]:
    """One accounted step of a lane, for :func:`engine.memory.measure_peak_subprocess` (its target,
    called in the child with the user's choices as JSON data); warmed up once."""
    make = get_network if problem in available_networks() else get_landscape
    built = make(problem, **options)

    def step() -> MemoryReport:
        return account(optimizer, built, hyperparameters=values, dtype=getattr(torch, dtype))

    step()  # the first optimizer step of a process imports ~800 modules: not the step's peak
    return step


class MemoryView(View):
    title = "memory"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.source = ColumnDataSource({"lane": [], **{c: [] for c in COLUMNS}, "total": []})
        self.peaks = ColumnDataSource(dict(lane=[], peak=[], kind=[]))
        fig = make_figure("one step's memory (accounted)", 200,
                          y_range=FactorRange(), tools="save", x_label="")
        bars = fig.hbar_stack(list(COLUMNS), y="lane", height=0.6, source=self.source, color=list(COLORS))
        fig.scatter("peak", "lane", source=self.peaks, marker="diamond", size=16, fill_color="black",
                    line_color="white")
        fig.add_tools(HoverTool(renderers=bars, tooltips=[("", "@lane"), ("accounted", "@total")]))
        self.figure = fig
        legend = " ".join(f"{swatch(c)}{p}" for c, p in zip(COLORS, PARTS, strict=True))
        self.legend = pn.pane.HTML(legend + f" {swatch('#000')}measured peak above baseline",
                                   styles={"font-size": "0.85em"}, margin=(0, 5), sizing_mode="stretch_width")
        self.plot = pn.Column(self.legend, pn.pane.Bokeh(fig, sizing_mode="stretch_width"), visible=False,
                              sizing_mode="stretch_width")
        self.note = pn.pane.HTML("<p><i>Accounting one step of each lane…</i></p>",
                                 sizing_mode="stretch_width",
                                 styles={"font-size": "0.85em"})
        self.measure = pn.widgets.Button(label="Measure peaks (a subprocess per optimizer)", width=300)
        self.measure.on_click(lambda _: self.measure_peaks())
        self.jobs = JobStrip()
        self.reports: dict[tuple, MemoryReport | None] = {}  # (optimizer, values, revision) -> report
        self.measured: dict[str, PeakMeasurement] = {}  # lane label -> measurement
        self._accounting: Job | None = None
        self._drawn: tuple = ()
        self.asked = False  # a measurement finished (a lane left out of it is said to be)
        # the job strip under the button, as in the other views: beside it, the row's 530 px minimum
        # widened the whole tab past the window at 1280 px (bars, axis and notes cut off)
        self.panel = pn.Column(self.plot, self.note, self.measure, self.jobs.panel,
                               sizing_mode="stretch_width")

    def _key(self, lane: Any) -> tuple:
        return (lane.optimizer, tuple(sorted(lane.values().items())), self.session.revision)

    def accounted(self) -> dict[str, MemoryReport]:
        """Each lane's accounted step so far, by its label (computed while the panel refreshes)."""
        reports = {ln.label: self.reports.get(self._key(ln)) for ln in self.session.lanes}
        return {label: r for label, r in reports.items() if r is not None}

    def set_problem(self) -> None:
        self.reports, self.measured, self.asked = {}, {}, False
        self.jobs.close()

    # -- accounting (a thread, while shown) ---------------------------------------------------------
    def refresh(self) -> None:
        lanes = list(self.session.lanes)
        done = self._accounting
        if done is not None and done.done:  # messages go to the page from here, not from the thread
            self._accounting = None
            for error in [done.error] if done.error else done.result:
                self.notify(error)
        missing = {self._key(ln): ln for ln in lanes if self._key(ln) not in self.reports}
        if missing and self._accounting is None:
            self._accounting = Job("memory accounting", self._account_work(missing)).start()
        job = self.jobs.refresh()
        if job is not None:
            if job.error:
                self.notify(job.error)
            else:
                self.measured.update(job.result)
                self.asked = True
        self._draw(lanes)

    def _account_work(self, missing: Mapping[tuple, Any]) -> Callable[[Job], dict]:
        copy = self.session.private_problem()  # taken between two steps by the worker
        dtype = self.session.worker.run.dtype
        todo = {key: (lane.optimizer, lane.values()) for key, lane in missing.items()}

        def work(job: Job) -> list[str]:
            problem = copy.result(timeout=60)
            errors = []
            for key, (name, values) in todo.items():
                job.check()
                try:
                    self.reports[key] = account(name, problem, hyperparameters=values, dtype=dtype)
                except (NotImplementedError, ValueError, RuntimeError) as exc:
                    self.reports[key] = None  # not tried again
                    errors.append(f"{name}: memory accounting failed: {exc}")
            return errors
        return work

    # -- measured peaks ------------------------------------------------------------------------------
    def measure_peaks(self, wait: bool = False) -> Job | None:
        """Each lane's step in its own fresh subprocess (seconds each), with progress; lanes whose
        accounted memory is below RSS's resolution are left out (and said so)."""
        s = self.session
        if s.problem == "custom: type f(x, y)":
            self.notify("peaks are measured for catalogue problems; a typed f(x, y) holds 16 bytes of "
                        "parameters anyway")
            return None
        if self.jobs.busy:
            return None
        options = dict(s.problem_options)
        if s.is_network and s.batch_size is not None:
            options["batch_size"] = s.batch_size or None
        dtype = str(s.worker.run.dtype).removeprefix("torch.")
        cuda = s.worker.run.device.type == "cuda"
        lanes = [(ln.label, ln.optimizer, ln.values(), self.reports.get(self._key(ln))) for ln in s.lanes]

        def work(job: Job) -> dict[str, PeakMeasurement]:
            out = {}
            for i, (label, name, values, report) in enumerate(lanes):
                job.check()
                if not cuda and report is not None and report.accounted_bytes < RSS_RESOLUTION:
                    continue  # RSS cannot resolve it: not measured
                job.progress(i / len(lanes), f"measuring {label} ({i + 1} of {len(lanes)})")
                params = {"problem": s.problem, "options": options, "optimizer": name, "values": values,
                          "dtype": dtype}
                out[label] = measure_peak_subprocess("app.views.memory:account_step", params=params,
                                                     cuda=cuda, timeout=300)
            return out

        job = self.jobs.start(Job("measuring peaks", work))
        if wait:
            job.wait()
        return job

    # -- drawing ---------------------------------------------------------------------------------------
    def _draw(self, lanes: list) -> None:
        shown = [(ln.label, self.reports[self._key(ln)]) for ln in lanes
                 if self.reports.get(self._key(ln)) is not None]
        key = (tuple((k, r) for k, r in shown), tuple((k, m.increase) for k, m in self.measured.items()),
               self.jobs.busy, self.asked)
        if key == self._drawn:
            return
        self._drawn = key
        if not shown:
            return
        self.plot.visible = True
        measured = {k: m for k, m in self.measured.items() if k in dict(shown)}
        resolved = {k: m for k,
                    m in measured.items() if m.kind != MEASURED_RSS or m.increase >= RSS_RESOLUTION}
        largest = max([r.accounted_bytes for _, r in shown] + [m.increase for m in resolved.values()] + [1])
        scale, unit = _unit(largest)
        labels = [k for k, _ in shown]
        self.figure.y_range.factors = labels[::-1]
        self.figure.xaxis.axis_label = unit
        reports = dict(shown)
        self.source.data = {"lane": labels,
                            **{c: [getattr(reports[k], f) / scale for k in labels] for c,
                               f in zip(COLUMNS, FIELDS,
                                                                                                 strict=True)},
                            "total": [f"{reports[k].accounted_bytes:,} bytes" for k in labels]}
        self.peaks.data = dict(lane=list(resolved), peak=[m.increase / scale for m in resolved.values()],
                               kind=[m.kind for m in resolved.values()])
        lines = ["<b>Bars: accounted</b>, exact bytes of the tensors one step holds (parameters, gradients, "
                 "optimizer state, activations saved for backward); transients are not in them."]
        small = [k for k in labels if k not in resolved and reports[k].accounted_bytes < RSS_RESOLUTION]
        if resolved:
            kinds = sorted({m.kind for m in resolved.values()})
            lines.append("<b>Diamonds: " + "; ".join(kinds) + "</b>, the step's peak above its baseline: "
                         + ", ".join(f"{html_escape(k)} {m.increase / scale:.3g} {unit}" for k,
                                     m in resolved.items())
                         + ".")
        if small and (self.asked or self.jobs.busy):
            lines.append(f"Below RSS resolution (~{RSS_RESOLUTION >> 20} MB), not measured: "
                         + ", ".join(map(html_escape, small))
                         + ". Pick a wider network (its width option) to measure a difference RSS can see.")
        self.note.object = "<p>" + "</p><p>".join(lines) + "</p>"

    def close(self) -> None:
        self.jobs.close()
        if self._accounting is not None:
            self._accounting.cancel()
