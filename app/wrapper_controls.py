"""A lane card's training-loop controls: its lr schedule (a small drawing of it, the live lr),
gradient clipping and, on networks, the batch size; each kind shows only the fields it uses."""

from __future__ import annotations

import math
from typing import Any

import panel as pn
import param

from app.lanes import OWN_BATCH, SCHEDULED, Lane
from engine.schedules import Schedule


def schedule_horizon(s: Schedule) -> int:
    """Steps a card's little curve spans: the schedule's shape with some of its tail."""
    if s.kind in ("cosine", "linear"):
        body = int(s.steps * 1.25)
    elif s.kind == "step":
        body = 4 * s.every
    elif s.kind == "exponential":
        body = int(min(math.log(0.01) / math.log(s.gamma), 100_000)) if s.gamma < 1 else 100
    elif s.kind == "refined":
        body = len(s.values)
    else:
        body = max(100, s.warmup)
    return max(s.warmup + body, 2)


def schedule_svg(s: Schedule | None, base: float, step: int | None, color: str,
                 width: int = 210, height: int = 56) -> str:
    """A small drawing of the lr the schedule gives, from ``base`` down to 0, with a dot at ``step``."""
    s = s or Schedule()
    horizon = schedule_horizon(s)
    ts = [round(i * (horizon - 1) / 99) for i in range(100)]
    left, top, w, h = 34, 4, width - 40, height - 18
    pts = " ".join(f"{left + w * t / (horizon - 1):.1f},{top + h * (1 - s.factor(t)):.1f}" for t in ts)
    dot = ""
    if step is not None:
        t = min(step, horizon - 1)
        dot = (f'<circle cx="{left + w * t / (horizon - 1):.1f}" cy="{top + h * (1 - s.factor(step)):.1f}" '
               f'r="3.5" fill="{color}" stroke="black" stroke-width="0.8"/>')
    label = "font-size:9px;fill:#555;font-family:sans-serif"
    why = ("lr = base x the schedule's factor at the lane's own step, counted from the lane's start: "
           "a schedule picked at step 400 takes its value at step 400 at once")
    return (f'<svg width="{width}" height="{height}" class="lr-schedule"><title>{why}</title>'
            f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#bbb"/>'
            f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#bbb"/>'
            f'<text x="{left - 3}" y="{top + 7}" text-anchor="end" style="{label}">{base:.2g}</text>'
            f'<text x="{left - 3}" y="{top + h}" text-anchor="end" style="{label}">0</text>'
            f'<text x="{left + w}" y="{height - 2}" text-anchor="end" style="{label}">'
            f'step {horizon - 1}</text>'
            f'<text x="{left}" y="{height - 2}" style="{label}">0</text>'
            f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"/>{dot}</svg>')


_SCHEDULE_FIELDS = {"constant": (), "step": ("gamma", "every"), "exponential": ("gamma",),
                    "cosine": ("steps", "final"), "linear": ("steps", "final"), "refined": ()}
_CLIP_FIELDS = {"none": (), "norm": ("threshold",), "value": ("threshold",), "coordinate": ("fraction",)}
_BATCH_FIELDS = {OWN_BATCH: (), "constant": ("size",), "schedule": ("size", "growth", "batch_every"),
                 "norm_test": ("size", "theta")}
_ARROW_STEP = {"gamma": 0.05, "final": 0.05, "fraction": 0.05}  # what an arrow key adds (default 0.1)


class WrapperControls:
    """A lane's lr schedule (with its curve and the live lr), clipping and, on networks, batch size:
    widgets on ``lane.wrap``; a field is built when its kind first needs it (a card opens sooner)."""

    def __init__(self, lane: Lane, network: bool) -> None:
        self.lane = lane
        w, p = pn.widgets, lane.wrap.param
        self.fields: dict[str, pn.widgets.Widget] = {}  # the fields built so far
        self._rows: list[tuple[pn.Row, tuple[str, ...]]] = []
        self.curve = pn.pane.HTML("", margin=(0, 5), css_classes=["lr-curve"])
        self.live = pn.pane.HTML("", margin=(0, 5), styles={"font-size": "0.8em", "color": "#333"},
                                 css_classes=["lr-live"])
        schedule = pn.Column(w.Select.from_param(p.schedule, margin=(2, 5)),
                             self._row("warmup", "steps", "every"), self._row("gamma", "final"), self.curve,
                             self.live, margin=0, sizing_mode="stretch_width")
        clip = pn.Column(w.Select.from_param(p.clip, margin=(2, 5)), self._row("threshold", "fraction"),
                         margin=0)
        parts: list[Any] = [schedule, clip]
        if network:
            parts.append(pn.Column(w.Select.from_param(p.batch, margin=(2, 5)), self._row("size", "growth"),
                                   self._row("batch_every", "theta"), margin=0))
        self.panel = pn.Column(*parts, margin=0, sizing_mode="stretch_width")
        self._step: int | None = None
        lane.wrap.param.watch(lambda *_: self.show(), [n for n in lane.wrap.param if n != "name"])
        self.show()

    def _row(self, *names: str) -> pn.Row:
        row = pn.Row(visible=False)
        self._rows.append((row, names))
        return row

    def _field(self, name: str) -> pn.widgets.Widget:
        if name not in self.fields:
            p = self.lane.wrap.param[name]
            kind = pn.widgets.IntInput if isinstance(p, param.Integer) else pn.widgets.FloatInput
            step = {"step": _ARROW_STEP[name]} if name in _ARROW_STEP else {}
            self.fields[name] = kind.from_param(p, width=95, margin=(2, 5), **step)
        return self.fields[name]

    @property
    def shown(self) -> set[str]:
        """The fields on the page."""
        on_page = [o for row, _ in self._rows if row.visible for o in row.objects]
        return {name for name, field in self.fields.items() if any(o is field for o in on_page)}

    def show(self) -> None:
        wrap = self.lane.wrap
        shown = set(_SCHEDULE_FIELDS.get(wrap.schedule, ())) | set(_CLIP_FIELDS[wrap.clip]) | \
            set(_BATCH_FIELDS[wrap.batch])
        shown.add("warmup")
        has_lr = SCHEDULED in self.lane.values()
        if not has_lr:
            shown -= {"warmup", "steps", "gamma", "every", "final"}
        for row, names in self._rows:
            want = [self._field(n) for n in names if n in shown]
            if [id(o) for o in want] != [id(o) for o in row.objects]:
                row.objects = want
            row.visible = bool(want)
        self.curve.visible = self.live.visible = has_lr
        if has_lr:
            self._draw()

    def _draw(self) -> None:
        try:
            schedule = self.lane.wrap.lr_schedule()
        except ValueError:
            return
        base = float(self.lane.values()[SCHEDULED])
        svg = schedule_svg(schedule, base, self._step, self.lane.color)
        if svg != self.curve.object:
            self.curve.object = svg

    def refresh(self, record: Any) -> None:
        """The lane's newest record: move the dot, write the live lr."""
        if record is None or SCHEDULED not in record.hyperparameters:
            return
        self._step = int(record.step)
        live = float(record.hyperparameters[SCHEDULED])
        text = f"lr now <b>{live:.4g}</b> at step {record.step}"
        if text != self.live.object:
            self.live.object = text
            self._draw()
