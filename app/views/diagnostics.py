"""Per-optimizer diagnostics and the gradient-noise probe: what each optimizer reports about its own
step (declared on its spec: Sophia's clipped fraction, a trust ratio, FRUGAL's state density, ...),
the run's clipped fraction when a lane clips, and the noise fields of the newest probe (gradient SNR,
noise scale, the norm test, the cosine between the lane's estimate and the true gradient), and what
sharpness-only probes leave unmeasured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import panel as pn

from app.batch import Batch
from app.lanes import Lane
from app.views.base import View, html_escape, swatch
from engine.records import Record
from engine.registry import get_spec

STYLE = ("<style>.dg{border-collapse:collapse;font-size:0.85em;width:100%}.dg td,.dg th{padding:2px 6px;"
         "border-bottom:1px solid #ddd;text-align:left;vertical-align:top;white-space:nowrap}"
         ".dg th{font-weight:600}.dg-note{font-size:0.8em;color:#555}</style>")
CLIPPED = "clipped_fraction"
RUN_MEANINGS = {CLIPPED: "share of the gradient the lane's clipping changed at its last step"}
NOISE_COLUMNS = {
    "grad SNR": "|mean g_k|^2 / tr Sigma_k per parameter tensor (Liu et al.'s GSNR): median over tensors",
    "noise scale": "tr Sigma / |mean g|^2 (McCandlish et al.'s simple noise scale, B_simple)",
    "norm test": "noise scale / batch: the norm test passes when <= theta^2 (AdAdaGrad)",
    "estimate cosine": "cos(the lane's gradient estimate, the gradient of its minibatch); "
                       "in brackets: of the full objective",
}


def _number(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.3g}"


def _mean(values: Any) -> float:
    arr = np.asarray(values, dtype=float)
    return float(np.nanmean(arr)) if arr.size and np.isfinite(arr).any() else float("nan")


def meanings(optimizer: str) -> dict[str, str]:
    try:
        declared = dict(get_spec(optimizer).diagnostics)
    except ValueError:
        declared = {}
    return {**RUN_MEANINGS, **declared}


def noise_cells(probe: Any) -> dict[str, str]:
    """The noise columns of a probe (``engine.instruments.Probe``), "—" for fields it did not measure."""
    if probe is None:
        return {}
    cells: dict[str, str] = {}
    snr = getattr(probe, "grad_snr", None)
    if snr is None:
        snr = getattr(probe, "gsnr", None)
    cells["grad SNR"] = _number(float(np.median(snr))) if snr is not None and len(snr) else "—"
    cells["noise scale"] = _number(getattr(probe, "noise_scale", None))
    cells["norm test"] = _number(getattr(probe, "norm_test", None))
    cos, full = getattr(probe, "estimate_cosine", None), getattr(probe, "estimate_cosine_full", None)
    cells["estimate cosine"] = _number(cos) + (f" ({_number(full)})" if full is not None else "")
    return cells


class DiagnosticsView(View):
    title = "diagnostics"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.table = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["diagnostics"])
        self.diag: dict[int, Record] = {}  # lane -> newest record with diagnostics
        self.probes: dict[int, Record] = {}  # lane -> newest record with a probe
        self.panel = self.table

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        ids = {lane.id for lane in lanes}
        self.diag = {k: v for k, v in self.diag.items() if k in ids}
        self.probes = {k: v for k, v in self.probes.items() if k in ids}

    def consume(self, batch: Batch) -> None:
        for lane_id, recs in batch.records.items():
            for r in recs:
                if r.diagnostics:
                    self.diag[lane_id] = r
                if r.curvature is not None:
                    self.probes[lane_id] = r

    def rows(self) -> list[dict[str, Any]]:
        """One row per lane: its diagnostics (mean over its starts) and its newest probe's noise."""
        rows = []
        for lane in self.session.lanes:
            row: dict[str, Any] = {"color": lane.color, "optimizer": lane.label, "values": {}, "noise": {}}
            r = self.diag.get(lane.id)
            if r is not None and r.optimizer == lane.optimizer:
                row["values"] = {name: _mean(v) for name, v in r.diagnostics.items()}
                row["step"] = r.step
            latest = self.session.latest.get(lane.id)
            if latest is not None and latest.batch_size is not None:
                row["batch"] = latest.batch_size  # samples its last gradient saw (networks)
            p = self.probes.get(lane.id)
            if p is not None:
                row["noise"] = noise_cells(p.curvature)
                row["probe step"] = p.step
            rows.append(row)
        return rows

    def refresh(self) -> None:
        rows = self.rows()
        names = list(dict.fromkeys(n for row in rows for n in row["values"]))
        batch = any("batch" in row for row in rows)
        noise = [c for c in NOISE_COLUMNS if any(row["noise"].get(c, "—") != "—" for row in rows)]
        glossary = {}
        for lane in self.session.lanes:
            glossary.update({k: v for k, v in meanings(lane.optimizer).items() if k in names})
        head = '<th title="samples its last gradient saw">batch</th>' if batch else ""
        head += "".join(f'<th title="{html_escape(glossary.get(n, n))}">{html_escape(n.replace("_", " "))}'
                       "</th>" for n in names)
        head += "".join(f'<th title="{html_escape(NOISE_COLUMNS[c])}">{c}</th>' for c in noise)
        body = ""
        for row in rows:
            values = row["values"]
            cells = f"<td>{row.get('batch', '')}</td>" if batch else ""
            cells += "".join(f"<td>{_number(values[n]) if n in values else ''}</td>" for n in names)
            cells += "".join(f"<td>{row['noise'].get(c, '')}</td>" for c in noise)
            body += (f"<tr><td>{swatch(row['color'])}{html_escape(row['optimizer'])}</td>"
                     f"<td>{row.get('step', '')}</td>{cells}<td>{row.get('probe step', '')}</td></tr>")
        notes = [f"<b>{html_escape(n.replace('_', ' '))}</b>: {html_escape(glossary.get(n, ''))}"
                 for n in names]
        notes += [f"<b>{c}</b>: {html_escape(NOISE_COLUMNS[c])}" for c in noise]
        if not names:
            notes.insert(0, "No lane reports diagnostics: Sophia, LAMB-type and FRUGAL lanes do, and any "
                            "lane that clips (its card's gradient clipping).")
        newest = [r.curvature for r in self.probes.values()]
        if newest and not any(p.measures_directional for p in newest):
            skipped = ["the directional sharpness along the update"]
            if all(p.estimate_cosine is None for p in newest):
                skipped.append("the estimate cosine")
            notes.append("Probes: sharpness only (the “sharpness” preset: λmax and each lane's stability "
                         f"threshold, in the curvature tab). Not measured: {' or '.join(skipped)} (the "
                         "economy preset adds them).")
        if not noise:
            notes.append("Gradient noise: choose the business or full probe preset (per-sample gradients "
                         "of the step's minibatch; its cost is in the curvature tab's overhead).")
        notes.append("Diagnostics are free (the optimizer's own step); values are the mean over a lane's "
                     "starts at its newest record.")
        html = (f'{STYLE}<table class="dg"><tr><th>optimizer</th><th>step</th>{head}<th>probe step</th></tr>'
                f'{body}</table><div class="dg-note">{"<br>".join(notes)}</div>')
        if html != self.table.object:
            self.table.object = html

    def clear(self) -> None:
        self.diag, self.probes = {}, {}

    def set_problem(self) -> None:
        self.clear()
