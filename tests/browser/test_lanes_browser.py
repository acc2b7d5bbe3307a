"""Lane cards in headless Chromium: an lr schedule picked on a card moves the live lr; a diverged
lane switched to another optimizer keeps its divergence under its own name; the loss axis stays
readable beside a diverged lane. Screenshots (1280 x 720) of a card with a schedule and clipping,
and of the diagnostics tab, go to ``$OPTISCOPE_ARTIFACTS``. Fixtures: tests/browser/test_app_browser.py."""

from __future__ import annotations

import json
import re
from urllib.parse import urlencode

import pytest

from tests.browser.test_app_browser import REACT, Server, Session, wait_until

pytestmark = pytest.mark.browser

_AXIS_JS = """() => {
  // the loss figure: its title and its y-axis range
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.type === "Figure" && m.title && typeof m.title.text === "string"
        && m.title.text.startsWith("f(x) − f*"))
      return {title: m.title.text, start: m.y_range.start, end: m.y_range.end};
  return null;
}"""


def url(srv: Server, lanes: list) -> str:
    return srv.url + "?" + urlencode({"problem": "quadratic", "lanes": json.dumps(lanes)})


def select_in(card: object, label: str) -> object:
    return card.locator(".bk-input-group").filter(has_text=label).locator("select").first


def live_lr(card: object) -> float | None:
    text = card.get_by_text(re.compile(r"^lr now")).first
    if not text.count():
        return None
    m = re.search(r"lr now ([0-9.e+-]+) at step (\d+)", text.inner_text())
    return float(m.group(1)) if m else None


def test_a_schedule_picked_on_a_card_moves_the_live_lr(browser: object, server: Server) -> None:
    s = Session(browser, url(server, [["sgd", {"lr": 0.01}]]))
    try:
        s.slow_down(20)
        s.click("Pause")
        wait_until(lambda: "paused" in s.counter(), REACT, "paused")
        s.click("Reset")  # the schedule is a function of the lane's step: start it at step 0
        wait_until(lambda: s.step() == 0, REACT, "a fresh race")
        card = s.open_card("SGD")
        select_in(card, "lr schedule").select_option("linear")
        horizon = card.locator(".bk-input-group").filter(has_text="horizon T").locator("input").first
        horizon.fill("300")
        horizon.press("Enter")
        select_in(card, "gradient clipping").select_option("norm")
        s.click("▶ Run")
        wait_until(lambda: (live_lr(card) or 1) < 0.01, REACT, "the live lr to fall below its base")
        first = live_lr(card)
        wait_until(lambda: (live_lr(card) or first) < first, REACT, "the live lr to move on")
        assert card.locator("svg.lr-schedule polyline").count() == 1
        wait_until(lambda: s.step() > 40, REACT, "a few seconds of the race for the screenshot")
        card.scroll_into_view_if_needed()
        s.screenshot("lanes-card-schedule-clip-1280x720")
        s.tab("diagnostics")
        s.page.locator("table.dg").get_by_text("clipped fraction").first.wait_for(timeout=REACT * 1000)
        s.screenshot("lanes-diagnostics-1280x720")
        assert s.unexpected_errors() == []
    finally:
        s.close()


def test_a_diverged_lane_switched_keeps_its_name_and_the_axis_stays_readable(
        browser: object, server: Server) -> None:
    """SGD at lr 1 on the quadratic diverges at step 4 (loss 8.6e8); switched to Adam, its lane is
    "Adam #1" but the divergence stays SGD's, and the loss axis fits Adam #2's curve (< 100)."""
    s = Session(browser, url(server, [["sgd", {"lr": 1.0}], ["adam", {"lr": 0.1}]]))
    try:
        s.slow_down(20)
        board = s.page.locator("table.lb")
        wait_until(lambda: "diverged" in board.inner_text(), REACT, "SGD to diverge")
        select_in(s.open_card("SGD"), "switch this lane to").select_option("adam")
        wait_until(lambda: "Adam #1" in s.legend(), REACT, "the switched lane's new label")
        wait_until(lambda: "SGD diverged at step 4" in board.inner_text(), REACT,
                   "the divergence named SGD's", board.inner_text)
        axis = lambda: s.page.evaluate(_AXIS_JS)  # noqa: E731
        wait_until(lambda: "SGD (now Adam #1) stopped or diverged" in (axis() or {}).get("title", ""), REACT,
                   "the curve's title to name SGD", axis)
        wait_until(lambda: (axis() or {}).get("end") is not None and axis()["end"] <= 125, REACT,
                   "a y-axis fitted to the running lane", axis)
        s.screenshot("lanes-diverged-switched-1280x720")
        assert s.unexpected_errors() == []
    finally:
        s.close()
