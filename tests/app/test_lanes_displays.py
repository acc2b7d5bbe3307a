"""Displays that never mislead (issue 14): a diverged segment never stretches the loss axis, and
its divergence is written against the optimizer that diverged, on the curves and the leaderboard."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from app.explorer import Explorer
from app.views.curves import LossView
from app.views.leaderboard import LeaderboardView
from tests.app.conftest import steps


@pytest.fixture
def blown() -> Iterator[Explorer]:
    """SGD at lr 1 on the quadratic diverges at step 4 (|loss| 8.6e8 > 1e6 x start); Adam runs."""
    ex = Explorer(landscape="quadratic", lanes=[("sgd", {"lr": 1.0}), ("adam", {"lr": 0.1})], speed=500)
    yield ex
    ex.close()


def view(ex: Explorer, kind: type):
    return next(v for v in ex.views if type(v) is kind)


def test_a_diverged_lane_switched_to_another_optimizer_keeps_the_axis_and_its_own_name(blown) -> None:
    s = blown.session
    steps(blown, 12)
    assert "diverged" in s.latest[s.lanes[0].id].status[0]
    s.switch_optimizer(s.lanes[0], "adam")
    steps(blown, 5)
    blown._refresh()
    loss = view(blown, LossView)
    drawn = np.concatenate([np.asarray(src.data["loss"], dtype=float) for src in loss.slots.sources])
    assert np.nanmax(drawn) > 1e8  # the blown-up curve is still drawn ...
    adam = np.asarray(loss.slots.sources[loss.slots.slot_of(s.lanes[1].id)].data["loss"], dtype=float)
    y = loss.figure.y_range
    lo, hi = 10.0 ** np.floor(np.log10(adam.min() / 1.2)), 10.0 ** np.ceil(np.log10(adam.max() * 1.2))
    assert (y.start, y.end) == pytest.approx((lo / 1.25, hi * 1.25))  # ... but the axis fits the others
    assert hi <= 100
    assert "SGD (now Adam #1) stopped or diverged: axis fits the rest" in loss.figure.title.text
    board = {r["optimizer"]: r["status"] for r in view(blown, LeaderboardView).rows()}
    assert board["Adam #1"].startswith("SGD diverged at step 4")


def test_a_segment_left_while_running_stays_on_the_axis(blown) -> None:
    """Adam (lane 2) switched to SGD while running: its first segment still counts for the axis."""
    s = blown.session
    steps(blown, 3)
    loss = view(blown, LossView)
    before = loss._bounds[s.lanes[1].id]
    s.switch_optimizer(s.lanes[1], "momentum")
    steps(blown, 2)
    assert loss._kept[s.lanes[1].id] == before


def test_a_lanes_own_batch_size_reaches_the_run_and_the_loss_title() -> None:
    """Full batch on digits, then a card asks for batches of 16: the title stops saying "full batch",
    and the lane's records say 16 samples."""
    from tests.app.conftest import pump_until
    ex = Explorer(landscape="digits_mlp", optimizers=["sgd"], batch_size=0, speed=500)
    try:
        loss = view(ex, LossView)
        assert loss.figure.title.text == "training loss (full batch)"
        lane = ex.session.lanes[0]
        lane.wrap.param.update(batch="constant", size=16)
        assert loss.figure.title.text == "training loss (each lane's batch size: see its card)"
        ex.session.step()
        pump_until(ex, lambda: lane.id in ex.session.latest, 30)
        assert ex.session.latest[lane.id].batch_size == 16
    finally:
        ex.close()


def test_a_value_below_the_log_axis_floor_is_drawn_at_it_and_said() -> None:
    """SGD at lr 1 on the round bowl (Hessian I) lands on the minimum in one step: f - f* = 0, which
    a log axis cannot show. It is drawn at the floor and the title says so, naming only that lane (a
    flat line at 1e-16 read alone says the method stalled there)."""
    ex = Explorer(landscape="quadratic", problem_options={"kappa": 1.0},
                  lanes=[("sgd", {"lr": 1.0}), ("adam", {"lr": 0.1})], speed=500)
    try:
        s = ex.session
        steps(ex, 3)
        ex._refresh()
        loss = view(ex, LossView)
        sgd = np.asarray(loss.slots.sources[loss.slots.slot_of(s.lanes[0].id)].data["loss"], dtype=float)
        assert sgd[0] > 1 and (sgd[1:] == 1e-16).all()  # exactly 0 after the first step
        assert float(s.latest[s.lanes[0].id].loss[0]) == 0.0
        title = loss.figure.title.text
        assert title.endswith(" · SGD below 1e-16: drawn at it") and "Adam" not in title
    finally:
        ex.close()
