"""Share, replay and export: a link that reopens the race with its changes at their steps, the
event log to save and to open again, and the export bundle (built off the event loop, with
progress and Cancel, then offered as a download)."""

from __future__ import annotations

import io
import json
from typing import Any

import panel as pn

from app import sharing
from app.bundle import build_bundle
from app.jobs import Job
from app.views.base import JobStrip, View


def page_url() -> str:
    """This page's absolute address without its query ("" outside a served page)."""
    loc = pn.state.location
    if loc is None or not loc.hostname:
        return ""
    port = f":{loc.port}" if loc.port and loc.port not in ("80", "443") else ""
    return f"{loc.protocol}//{loc.hostname}{port}{loc.pathname}"


class ShareView(View):
    title = "share"

    def __init__(self, session: Any, notify: Any) -> None:
        super().__init__(session, notify)
        self.link = pn.widgets.TextInput(label="link to this race (its changes included)",
                                         placeholder="press “Share link”", sizing_mode="stretch_width")
        share = pn.widgets.Button(label="Share link", color="primary", width=110, margin=(22, 5, 5, 5))
        share.on_click(lambda _: self.share_link())
        self.log_download = pn.widgets.FileDownload(callback=self._log_file,
                                                    filename="optiscope-session.json",
                                                    label="Save event log", color="light", width=140)
        self.upload = pn.widgets.FileDropper(accepted_filetypes=[".json", "application/json"],
                                             max_file_size=sharing.UPLOAD_LIMIT.replace(" ", ""),
                                             multiple=False, height=90, sizing_mode="stretch_width")
        self.upload.param.watch(self._on_upload, "value")
        self.export = pn.widgets.Button(label="Export records + pictures", width=200)
        self.export.on_click(lambda _: self.start_export())
        self.download = pn.widgets.FileDownload(label="Download", filename="optiscope-race.zip",
                                                visible=False,
                                                color="success", width=260)
        self.jobs = JobStrip()
        self.panel = pn.Column(
            pn.Row(share, self.link, sizing_mode="stretch_width"),
            # wraps: one row of the three buttons (600 px) widened the tab past a 1280-px window
            pn.FlexBox(self.log_download, self.export, self.download, sizing_mode="stretch_width"),
            self.jobs.panel,
            pn.pane.Markdown(f"**Replay a saved session**: drop its event log here (a .json file of at most "
                             f"{sharing.UPLOAD_LIMIT}).", margin=(0, 5), sizing_mode="stretch_width"),
            self.upload, sizing_mode="stretch_width")

    # -- links and logs --------------------------------------------------------------------------
    def share_link(self) -> str:
        """An absolute link that reopens this race, changes included (also put in the address bar)."""
        word = sharing.encode(self.session.spec())
        self.link.value = f"{page_url()}?race={word}"
        loc = pn.state.location
        if loc is not None:
            loc.search = f"?race={word}"
        return self.link.value

    def _log_file(self) -> io.StringIO:
        s = self.session
        log = s.worker.call(lambda run: run.event_log()).result(timeout=30)
        return io.StringIO(json.dumps(sharing.event_log_file(s.spec(), log), indent=1))

    def open_log(self, data: bytes) -> bool:
        """Replay a saved session from the bytes of its file (refused as a whole, with the reason)."""
        try:
            spec = sharing.read_upload(data)
        except sharing.RaceError as exc:
            self.notify(str(exc))
            return False
        if not self.session.load(spec, "this event log"):
            self.notify(self.session.message)
            return False
        return True

    def _on_upload(self, event: Any) -> None:
        for content in (event.new or {}).values():
            self.open_log(content.encode() if isinstance(content, str) else bytes(content))

    # -- export --------------------------------------------------------------------------------------
    def start_export(self, wait: bool = False) -> Job | None:
        s = self.session
        if self.jobs.busy:
            return None
        log = s.worker.call(lambda run: run.event_log())  # answered between two steps
        copy = s.private_problem()
        drawn, x_axis = s.is_drawn, s.x_axis
        self.download.visible = False

        def work(job: Job) -> Any:
            problem = copy.result(timeout=120)
            minima = problem.minima
            f_star = min(m.value for m in minima) if minima and getattr(problem, "ascent",
                                                                        None) is None else None
            return build_bundle(job, problem, log.result(timeout=120), drawn=drawn, x_axis=x_axis,
                                f_star=f_star)

        job = self.jobs.start(Job("export", work))
        if wait:
            job.wait()
        return job

    def refresh(self) -> None:
        job = self.jobs.refresh()
        if job is None:
            return
        if job.error:
            self.notify(job.error)
            return
        path = job.result
        self.download.file = str(path)
        self.download.label = f"Download {path.name} ({path.stat().st_size / 1e6:.1f} MB)"
        self.download.visible = True

    def close(self) -> None:
        self.jobs.close()
