"""The one small interface every panel of the page shares, and a progress strip for slow actions.

A view is told when a new run starts (:meth:`View.set_problem`), when lanes come, go or switch
(:meth:`View.show_lanes`), which x-axis to plot against (:meth:`View.set_x`), what the race
produced (:meth:`View.consume`, every pump: stream it, nothing else) and to redraw what is not
streamed (:meth:`View.refresh`, a few times a second while it is on screen), and to forget the
race's data on a reset (:meth:`View.clear`). Adding a panel is a new view file and one entry in
:data:`app.views.VIEWS`.

A page builds only the views it shows (:func:`app.views.deferred`): one that does not apply to the
problem, or a tab never opened, is a shell until then (``built`` False; the page calls none of its
methods but :meth:`View.applies`, which must therefore read only ``self.session``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import panel as pn

from app.batch import Batch
from app.jobs import Job

if TYPE_CHECKING:
    from app.lanes import Lane
    from app.model import RaceSession


class View:
    """A panel of the page on the race session (see the module docstring)."""

    title: ClassVar[str] = ""
    """Its tab's title (instruments)."""
    area: ClassVar[str] = "instrument"
    """Where the page puts it: "race" (the large left area), "curves" (beside it, always shown),
    "instrument" (a tab below the curves: one shown at a time), "status" (beside the step counter)."""
    built: bool = True
    """False while it is a shell (:func:`app.views.deferred`): its ``__init__`` has not run yet."""

    def __init__(self, session: RaceSession, notify: Callable[[str], None]) -> None:
        self.session = session
        self.notify = notify  # shows a message to the user (an error in their terms)
        self.panel: pn.viewable.Viewable = pn.Column()

    def __panel__(self) -> pn.viewable.Viewable:
        return self.panel

    def applies(self) -> bool:
        """Whether it has something to show for the session's problem (else it is left out)."""
        return True

    def set_problem(self) -> None:
        """A new run started (new problem or settings): start over."""

    def show_lanes(self, lanes: Sequence[Lane]) -> None:
        """The race's lanes now (some came, went, switched optimizer or were relabelled)."""

    def set_x(self, column: str, label: str) -> None:
        """Plot against this x-axis column (``app.batch.AXES``)."""

    def consume(self, batch: Batch) -> None:
        """New records and marks: stream them (called at every pump, shown or not)."""

    def refresh(self) -> None:
        """Redraw what is not streamed (tables, text, ranges): called a few times a second while shown."""

    def clear(self) -> None:
        """The race restarted (Reset): forget its data, keep the lanes."""

    def present(self, big: bool) -> None:
        """Presenter view on or off (type legible from the back of a room)."""

    def close(self) -> None:
        """The page closed: cancel what it started."""


class JobStrip:
    """A slow action's progress bar, its status line and a Cancel button (hidden when idle)."""

    def __init__(self) -> None:
        self.job: Job | None = None
        self.bar = pn.indicators.Progress(value=0, max=100, width=160, height=18, visible=False,
                                          margin=(8, 5))
        # wrapping text in the rest of the row (a Str is a <pre>: a long status ran past the window)
        self.text = pn.pane.HTML("", margin=(5, 5), sizing_mode="stretch_width",
                                 styles={"font-size": "0.85em", "font-family": "monospace"})
        self.cancel = pn.widgets.Button(label="Cancel", width=70, visible=False, margin=(2, 5))
        self.cancel.on_click(lambda _: self.job is not None and self.job.cancel())
        self.panel = pn.Row(self.bar, self.cancel, self.text, sizing_mode="stretch_width")

    def start(self, job: Job) -> Job:
        self.job = job.start()
        self.bar.visible = self.cancel.visible = True
        self.bar.value, self.text.object = 0, html_escape(f"{job.title}: starting…")
        return job

    @property
    def busy(self) -> bool:
        return self.job is not None and not self.job.done

    def refresh(self) -> Job | None:
        """Show the job's state; returns it once, when it has just finished."""
        job = self.job
        if job is None:
            return None
        value = int(100 * job.fraction)
        if self.bar.value != value:
            self.bar.value = value
        status = html_escape(job.status)
        if self.text.object != status:
            self.text.object = status
        if not job.done:
            return None
        self.bar.visible = self.cancel.visible = False
        self.job = None
        return job

    def close(self) -> None:
        if self.job is not None:
            self.job.cancel()


def html_escape(text: Any) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def swatch(color: str) -> str:
    return (f'<span style="display:inline-block;width:12px;height:12px;border-radius:2px;'
            f'background:{color};vertical-align:middle;margin-right:4px"></span>')
