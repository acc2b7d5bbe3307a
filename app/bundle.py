"""The export bundle: every record of the race (replayed exactly from its config and event log, so
nothing the plots thinned out is lost) as Parquet with its metadata, JSON on request, and the
pictures (the race and its GIF on a 2-D problem, the loss curves), zipped. Never imports Panel.

It is work for an :class:`app.jobs.Job`: the replay reports progress and stops at its checkpoints
when the job is cancelled (:func:`engine.export.export_log`).
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.curves_image import curves_png
from app.jobs import Job
from app.race_image import race_gif, race_png
from engine.export import export_log
from engine.problem import Problem


def build_bundle(job: Job, problem: Problem, log: Mapping[str, Any], *, drawn: bool, x_axis: str,
                 f_star: float | None, json: bool = False, directory: str | None = None) -> Path:
    """Write ``optiscope-race.zip`` into a fresh temporary directory (or ``directory``) and return
    its path. Progress: the replay and tables 0-80 %, the pictures the rest."""
    out = Path(directory or tempfile.mkdtemp(prefix="optiscope-export-"))
    parts = out / "parts"
    parts.mkdir(exist_ok=True)

    def progress(fraction: float, message: str) -> None:
        job.progress(0.8 * fraction, message)

    exported = export_log(problem, log, parts, stem="records", json=json, progress=progress)
    files = list(exported.files.values())
    records = exported.records
    if records:
        job.check()
        job.progress(0.82, "drawing the loss curves")
        files.append(curves_png(records, parts / "loss.png", x=x_axis, f_star=f_star))
        if drawn and problem.dim == 2:
            job.check()
            job.progress(0.88, "drawing the race")
            files.append(race_png(problem, records, parts / "race.png"))
            job.check()
            job.progress(0.93, "drawing the GIF")
            files.append(race_gif(problem, records, parts / "race.gif"))
    job.check()
    path = out / "optiscope-race.zip"
    with zipfile.ZipFile(path, "w") as bundle:
        for f in files:
            bundle.write(f, f.name)
    job.progress(1.0, f"{path.stat().st_size / 1e6:.1f} MB")
    return path
