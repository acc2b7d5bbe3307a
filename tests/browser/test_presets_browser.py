"""Presets and playground features in the served app, in headless Chromium at 1280 x 720 (a
projector): every preset states its claim and shows it in its first 30 s without scrolling (a
screenshot of each goes to ``$OPTISCOPE_ARTIFACTS/presets/``); a click on the landscape moves the
start and the race re-runs from it; space runs/pauses and the right arrow steps; no BokehJS
"reference ... isn't known" errors while a race streams.

Fixtures (the served app, Chromium, a page) are ``tests/browser/test_app_browser.py``'s."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import urlencode

import pytest

from app.presets import presets
from tests.browser.test_app_browser import ARTIFACTS, REACT, Server, Session, wait_until

pytestmark = pytest.mark.browser

PRESETS = ("valley", "rastrigin_trap", "saddle_escape", "adam_vs_sgd", "edge_of_stability", "mezo_memory",
           "ranking_oracle", "mirror_prox")
WATCH = 30.0
"""Seconds a class watches a preset before its claim must show."""


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_states_its_claim_on_one_screen_and_is_screenshot_after_30_s(
        browser: object, server: Server, name: str) -> None:
    s = Session(browser, f"{server.url}?preset={name}")
    try:
        claim = s.page.locator(".preset-claim")
        claim.wait_for(state="visible", timeout=REACT * 1000)
        box = claim.bounding_box()
        assert box is not None and box["y"] + box["height"] <= 720, box
        time.sleep(WATCH)
        (ARTIFACTS / "presets").mkdir(parents=True, exist_ok=True)
        s.page.screenshot(path=str(ARTIFACTS / "presets" / f"{name}.png"))
        rate = s.page.get_by_text(re.compile(r"steps/s"))
        assert rate.count() > 0
        assert s.unexpected_errors() == []
    finally:
        s.close()


_START_JS = """(target) => {
  // the landscape's start marker (circle_cross): where it is, and where data point target is on screen
  const doc = Bokeh.documents[0];
  for (const m of doc._all_models.values()) {
    if (m.type !== "GlyphRenderer" || m.glyph.type !== "Scatter") continue;
    const mk = m.glyph.marker, marker = mk != null && typeof mk === "object" ? mk.value : mk;
    if (marker !== "circle_cross") continue;
    let plot = null;
    for (const p of doc._all_models.values())
      if (p.x_range !== undefined && Array.isArray(p.renderers) && p.renderers.includes(m)) plot = p;
    const view = Bokeh.index.find_one(plot), rect = view.canvas_view.el.getBoundingClientRect();
    const src = m.data_source;
    return {start: [src.data.x[0], src.data.y[0]],
            at: target && [rect.left + view.frame.x_scale.compute(target[0]),
                           rect.top + view.frame.y_scale.compute(target[1])]};
  }
  return null;
}"""


def test_a_click_or_a_drag_on_the_landscape_moves_the_start_and_the_race_reruns_from_it(
        browser: object, server: Server) -> None:
    s = Session(browser, server.url)
    try:
        s.slow_down()
        wait_until(lambda: s.step() > 5, REACT, "the race to run")
        target = [0.5, 2.0]
        x, y = s.page.evaluate(_START_JS, target)["at"]
        t0 = time.perf_counter()
        s.page.mouse.click(x, y)
        wait_until(lambda: s.page.evaluate(_START_JS, None)["start"] == target, REACT, "the start to move",
                   lambda: s.page.evaluate(_START_JS, None))
        print(f"start moved {time.perf_counter() - t0:.2f} s after the click")
        # a fresh race: the paths start over from the new start, every lane's first segment begins
        # there (not a step count falling: a loaded machine's fresh race can pass the old count first)
        def firsts() -> list:
            return s.page.evaluate("""() => {
              const out = [];  // the whole paths (faint), not their bright trails (those roll over)
              for (const m of Bokeh.documents[0]._all_models.values()) {
                if (m.type !== "GlyphRenderer" || !m.visible || m.glyph.type !== "Segment") continue;
                const a = m.glyph.line_alpha, alpha = a != null && typeof a === "object" ? a.value : a;
                const src = m.data_source;
                if (alpha < 0.5 && src.get_length() > 0) out.push([src.data.x0[0], src.data.y0[0]]);
              }
              return out;
            }""")
        wait_until(lambda: len(firsts()) == 3 and all(abs(a - 0.5) < 1e-6 and abs(b - 2.0) < 1e-6
                                                      for a, b in firsts()), REACT,
                   "a fresh race whose three paths start at the click", firsts)
        # dragging the start marker moves it too (the drop point, to a pixel), and the race re-runs
        there = [-1.0, 1.5]
        x1, y1 = s.page.evaluate(_START_JS, there)["at"]
        s.page.mouse.move(x, y)
        s.page.mouse.down()
        for k in range(1, 9):
            s.page.mouse.move(x + (x1 - x) * k / 8, y + (y1 - y) * k / 8)
        s.page.mouse.up()

        def near_there() -> bool:
            got = s.page.evaluate(_START_JS, None)["start"]
            return all(abs(a - b) < 0.05 for a, b in zip(got, there, strict=True))
        wait_until(near_there, REACT, "the start to follow the drag",
                   lambda: s.page.evaluate(_START_JS, None))
        dx, dy = s.page.evaluate(_START_JS, None)["start"]
        wait_until(lambda: len(firsts()) == 3 and all(abs(a - dx) < 1e-6 and abs(b - dy) < 1e-6
                                                      for a, b in firsts()), REACT,
                   "a fresh race whose paths start at the drop", firsts)
        assert s.unexpected_errors() == []
    finally:
        s.close()


def test_space_runs_and_pauses_and_the_right_arrow_steps(browser: object, server: Server) -> None:
    s = Session(browser, server.url)
    try:
        s.slow_down()
        assert "running" in s.counter()
        s.page.locator("body").click(position={"x": 1200, "y": 40})  # the header: focus on the page
        s.page.keyboard.press("Space")
        wait_until(lambda: "paused" in s.counter(), REACT, "space to pause", s.counter)
        time.sleep(1.0)
        n = s.step()
        s.page.keyboard.press("ArrowRight")
        wait_until(lambda: s.step() == n + 1, REACT, "the right arrow to step once", s.counter)
        s.page.keyboard.press("ArrowRight")
        wait_until(lambda: s.step() == n + 2, REACT, "a second step", s.counter)
        s.page.keyboard.press("Space")
        wait_until(lambda: "running" in s.counter() and s.step() > n + 5, REACT, "space to run", s.counter)
        assert s.unexpected_errors() == []
    finally:
        s.close()


def test_a_preset_switch_shows_its_claim_without_reference_errors(
        browser: object, server: Server) -> None:
    """Switching presets while a race streams: each claim shows (the time it took is printed;
    benchmarks/controls.py measures it) and BokehJS never reports a model it does not know."""
    s = Session(browser, server.url)
    try:
        s.slow_down(30)
        times = []
        for name in ("saddle_escape", "edge_of_stability", "rastrigin_trap"):
            title = presets()[name].title  # the menu lists presets by title
            select = s.page.locator("select:has(option:text-is('choose a preset…'))")
            t0 = time.perf_counter()
            select.select_option(label=title)
            s.page.locator(".preset-claim").get_by_text(re.compile(f"^{re.escape(title)}")).wait_for(
                state="visible", timeout=REACT * 1000)
            times.append(time.perf_counter() - t0)
            time.sleep(4)  # let it stream
        print("claim shown after", [f"{t:.2f} s" for t in times])
        errors = s.unexpected_errors()
        assert not [e for e in errors if "isn't known" in e or "reference" in e], errors
        assert errors == []
    finally:
        s.close()


def test_what_a_network_learned_shows_in_its_tab(browser: object, server: Server) -> None:
    """Two moons: the "learned" tab draws the decision boundary (an image) with the data."""
    lanes = json.dumps([["adam", {}], ["sgd", {}]])
    url = server.url + "?" + urlencode({"problem": "moons_mlp", "lanes": lanes})
    s = Session(browser, url)
    try:
        wait_until(lambda: s.step() > 50, REACT * 2, "the race to run", s.counter)
        s.tab("learned")
        has_image = """() => {
          for (const m of Bokeh.documents[0]._all_models.values())
            if (m.type === "GlyphRenderer" && m.glyph.type === "Image" && m.data_source.get_length() > 0
                && m.data_source.data.x.length === 1) return true;  // one image: the boundary
          return false;
        }"""
        wait_until(lambda: s.page.evaluate(has_image), REACT, "the decision boundary")
        titled = """() => {
          const models = Array.from(Bokeh.documents[0]._all_models.values());
          return models.some(m => m.type === "Title" && typeof m.text === "string"
                                  && /^Adam, step \\d+: P\\(class 1\\)$/.test(m.text))
              && models.some(m => typeof m.text === "string" && m.text.includes("over the plane of"));
        }"""  # the short title, and the caption under the picture
        wait_until(lambda: s.page.evaluate(titled), REACT, "the picture's title and caption")
        time.sleep(3)
        (ARTIFACTS / "presets").mkdir(parents=True, exist_ok=True)
        s.page.screenshot(path=str(ARTIFACTS / "presets" / "moons_learned.png"))
        assert s.unexpected_errors() == []
    finally:
        s.close()


def test_arrow_keys_on_a_focused_slider_move_the_slider_not_the_race(browser: object, server: Server) -> None:
    """The shortcuts leave a focused widget's keys alone (its handle sits in a shadow root)."""
    s = Session(browser, server.url)
    try:
        s.slow_down()
        card = s.open_card("SGD")
        handle = card.locator(".noUi-handle").first
        handle.focus()
        handle.press("ArrowRight", no_wait_after=True)
        label = card.get_by_text(re.compile(r"^lr: "))
        wait_until(lambda: label.inner_text() == "lr: 0.0015", REACT, "the slider to move", label.inner_text)
        time.sleep(1.0)
        assert "running" in s.counter()  # not paused by a "step"
        assert s.unexpected_errors() == []
    finally:
        s.close()
