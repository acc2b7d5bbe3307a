"""The page's panels, in the order the page shows them. Each is one file with one
:class:`~app.views.base.View`; a new panel is one more file and one more entry here."""

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

__all__ = ["VIEWS", "View"]
