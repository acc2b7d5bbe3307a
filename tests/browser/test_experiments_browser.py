"""The experiments tab in a served page, as a person uses it: basin maps of the race's lanes drawn
beside each other inside the instrument column, and a click on a pixel opens that start as a race."""

from __future__ import annotations

import re

from tests.browser.test_app_browser import REACT, Server, Session, wait_until

_BASIN_FIGURES_JS = """() => {
  // the basin maps' figures: [left, top, width, height] of each 210-px figure on the page
  const out = [];
  const walk = (root) => {
    for (const e of root.querySelectorAll('*')) {
      if (e.shadowRoot) walk(e.shadowRoot);
      const cls = typeof e.className === 'string' ? e.className.split(' ') : [];
      if (!cls.includes('bk-Figure')) continue;
      const r = e.getBoundingClientRect();
      if (Math.abs(r.width - 210) < 2) out.push([r.left, r.top, r.width, r.height, window.innerWidth]);
    }
  };
  walk(document);
  return out;
}"""


def test_basin_maps_are_drawn_and_a_pixel_opens_its_race(browser: object, server: Server) -> None:
    s = Session(browser, server.url, size=(1280, 900))
    try:
        s.slow_down()
        wait_until(lambda: len(s.legend()) == 3, REACT, "the default race's three lanes", s.legend)
        s.tab("experiments")
        s.click("Basin maps")
        captions = s.page.get_by_text(re.compile("Click a pixel to race from it"))
        wait_until(lambda: captions.count() == 3, 3 * REACT, "three basin maps", captions.count)
        boxes = s.page.evaluate(_BASIN_FIGURES_JS)
        assert len(boxes) == 3, boxes
        # two a row inside the window: none squeezed, none past the right edge
        assert all(left >= 0 and left + width <= win for left, _, width, _, win in boxes)
        assert boxes[0][1] == boxes[1][1] and boxes[2][1] > boxes[0][1]
        left, top, width, height, _ = boxes[0]
        s.page.mouse.click(left + width / 2, top + height / 2)  # the first map: the first lane
        first = next(iter(s.legend()))
        wait_until(lambda: list(s.legend()) == [first], REACT, "the pixel's race (one lane)", s.legend)
        assert s.unexpected_errors() == []
    finally:
        s.close()
