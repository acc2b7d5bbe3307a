"""The page's panels, in the order the page shows them. Each is one file with one
:class:`~app.views.base.View`; a new panel is one more file and one more entry here.

A page builds a view when it first has to show it (:func:`deferred`, :func:`build`): every page built
all 16 panels' figures and widgets, while the default race shows 6 of them (measured: views were 40 %
of a page's build; ``benchmarks/load.py --build``). A view that streams the race (overrides
:meth:`View.consume`) is built as soon as it applies, at the start of a run, so that it misses no
record; one that does not (a tool that computes on demand) is built when its tab is first opened.
"""

from collections.abc import Callable
from typing import Any

import panel as pn

from app.views.base import View
from app.views.bilevel import BilevelView
from app.views.connectivity import ConnectivityView
from app.views.curvature import CurvatureView
from app.views.curves import GradView, LossView
from app.views.diagnostics import DiagnosticsView
from app.views.experiments import ExperimentsView
from app.views.game import GameView
from app.views.landscape import LandscapeView
from app.views.leaderboard import LeaderboardView
from app.views.memory import MemoryView
from app.views.network import LearnedView, NetworkView
from app.views.rate import RateView
from app.views.share import ShareView
from app.views.slice import SliceView

VIEWS: tuple[type[View], ...] = (
    LandscapeView,  # race: a 2-D problem's picture
    NetworkView,  # race: a network's train/test curves
    LossView,  # curves
    RateView,  # status: real vs asked steps per second
    LeaderboardView,  # instruments, one tab each
    GradView,
    CurvatureView,
    DiagnosticsView,  # per-optimizer diagnostics, clipping, gradient noise
    MemoryView,
    SliceView,
    ExperimentsView,  # issue 15: tuned, seeded comparisons and basin maps around the race
    GameView,  # issue 18: a simplex game's strategies on their triangles, duality gap and KL
    ConnectivityView,  # issue 18: linear mode connectivity before and after weight matching
    LearnedView,  # a network's decision boundary or predictions
    BilevelView,  # issue 18: bilevel methods, the penalty's bias, SSO's two oracle counts
    ShareView,
)



def deferred(cls: type[View], session: Any, notify: Callable[[str], None]) -> View:
    """A shell of a ``cls`` view: an instance whose ``__init__`` has not run (``built`` False), with
    the base's ``session``, ``notify`` and an empty panel; :func:`build` completes it in place, so
    the page's list of views and ``isinstance`` tests hold throughout."""
    view = cls.__new__(cls)
    View.__init__(view, session, notify)
    view.built = False
    view.frame = pn.Column(sizing_mode="stretch_width", margin=0)  # holds its panel once built
    return view


def build(view: View) -> bool:
    """Run a shell's ``__init__`` (no-op once built); whether it was built now."""
    if view.built:
        return False
    type(view).__init__(view, view.session, view.notify)
    view.built = True
    view.frame.objects = [view.panel]
    return True


def live(views: Any) -> list[View]:
    """The built ones (the page calls a shell's ``applies`` only)."""
    return [v for v in views if getattr(v, "built", True)]


def on_page(view: View) -> Any:
    """What the page lays out for the view: its panel, or (a shell's) the frame it will be built in."""
    return view.__dict__.get("frame", view.panel)


def streams(view: View) -> bool:
    """Whether the view keeps what the race streams (it overrides :meth:`View.consume`): such a view
    must be built from the start of a run on, or it would show a partial race."""
    return type(view).consume is not View.consume


def applies(view: View) -> bool:
    """``view.applies()``; a shell whose ``applies`` needs more than its session is built first."""
    try:
        return view.applies()
    except AttributeError:
        if not build(view):
            raise
        return view.applies()


__all__ = ["VIEWS", "View", "applies", "build", "deferred", "live", "on_page", "streams"]
