"""Widgets generated from registry specs: no hand-written widget code per optimizer.

A log-scale hyperparameter becomes a slider over a log-spaced grid (1, 1.5, 2, 3, 5, 7 per decade)
that shows the value itself; a linear one a plain slider; an int an integer slider; a bool a checkbox;
a choice a drop-down of its options.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import panel as pn

from engine.registry import Hyperparameter, OptimizerSpec

_MANTISSAS = (1, 1.5, 2, 3, 5, 7)
_OPEN_END = 1e-6  # keeps a slider off an excluded end of its range, e.g. beta < 1


def _span(hp: Hyperparameter) -> tuple[float, float]:
    lo = hp.low if hp.low is not None else -10.0
    hi = hp.high if hp.high is not None else 10.0
    if not hp.include_low:
        lo += _OPEN_END * max(1.0, abs(lo))
    if not hp.include_high:
        hi -= _OPEN_END * max(1.0, abs(hi))
    return lo, hi


def inline_math(tex: str) -> str:
    r"""``tex`` as inline math for a LaTeX pane. ``<`` and ``>`` become ``\lt`` / ``\gt``: the pane's
    text passes through HTML, where ``_{i<q}`` opens a ``<q>`` tag and KaTeX gets half a formula."""
    return "$" + tex.replace("<", r"\lt ").replace(">", r"\gt ") + "$"


def hyperparameter_widget(hp: Hyperparameter, value: Any) -> pn.widgets.Widget:
    """A widget for ``hp`` showing ``value``; its ``value`` is the hyperparameter's value."""
    if hp.kind == "bool":
        return pn.widgets.Checkbox(label=hp.name, value=bool(value))
    if hp.kind == "choice":
        return pn.widgets.Select(label=hp.name, options=list(hp.choices), value=str(value))
    lo, hi = _span(hp)
    if hp.kind == "int":
        return pn.widgets.IntSlider(label=hp.name, start=int(lo), end=int(hi), value=int(value))
    if hp.log:
        grid = log_grid(lo, hi, float(value))
        return pn.widgets.DiscreteSlider(label=hp.name, options={f"{v:.3g}": v for v in grid},
                                         value=float(value))
    # up to 4 decimals: beta2 = 0.999 must not read "1"
    return pn.widgets.FloatSlider(label=hp.name, start=lo, end=hi, value=float(value),
                                  step=(hi - lo) / 1000, format="0.[0000]")


def log_grid(lo: float, hi: float, value: float) -> list[float]:
    """1, 1.5, 2, 3, 5, 7 x 10^k inside [lo, hi], plus ``value`` itself (a default off the grid)."""
    grid = {value}
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        grid.update(float(f"{m}e{k}") for m in _MANTISSAS)
    return sorted(v for v in grid if lo <= v <= hi)


def optimizer_card(spec: OptimizerSpec, values: dict[str, Any], color: str,
                   on_change: Callable[[str, Any], None], title: str | None = None) -> pn.Card:
    """One collapsible card: the update rule and a widget per hyperparameter."""
    widgets = []
    for hp in spec.hyperparameters:
        w = hyperparameter_widget(hp, values.get(hp.name, hp.default))

        def changed(event: Any, hp: Hyperparameter = hp) -> None:
            on_change(hp.name, event.new)

        w.param.watch(changed, "value_throttled" if "value_throttled" in w.param else "value")
        widgets.append(w)
    rule = pn.pane.LaTeX(inline_math(spec.update_rule), styles={"font-size": "0.85em", "overflow-x": "auto"},
                         sizing_mode="stretch_width") if spec.update_rule else None
    cite = pn.pane.Markdown(f"<small>{spec.paper.cite()}</small>" if spec.paper else "",
                            margin=(0, 10))
    return pn.Card(*widgets, *(x for x in (rule, cite) if x is not None),
                   title=title or spec.display_name, collapsed=False,
                   header_background=color, header_color="white", sizing_mode="stretch_width",
                   margin=(4, 0))
