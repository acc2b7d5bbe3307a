"""What a person sees of the page's layout at a classroom projector's size."""

from __future__ import annotations

import time

import pytest

from tests.browser.test_app_browser import REACT, Server, Session, wait_until

_TABS_JS = """() => {
  const out = [];
  const walk = (root) => {
    for (const e of root.querySelectorAll('*')) {
      if (e.shadowRoot) walk(e.shadowRoot);
      if (e.classList && e.classList.contains('bk-tab')) {
        const r = e.getBoundingClientRect();
        out.push({title: e.textContent, left: r.left, right: r.right, top: r.top,
                  width: window.innerWidth});
      }
    }
  };
  walk(document);
  return out;
}"""


@pytest.mark.parametrize("size", [(1024, 768)])
def test_every_instrument_tab_is_on_screen(browser: object, server: Server, size: tuple[int, int]) -> None:
    """The instrument tabs beside the race (8 on a landscape, 11 on a network): every header is
    inside the window, none scrolled out of sight (at 1280 px three to six were, among them the tab
    a preset opens)."""
    s = Session(browser, server.url, size=size)
    try:
        wait_until(lambda: any(t["title"] == "share" for t in s.page.evaluate(_TABS_JS)), REACT, "the tabs",
                   lambda: s.page.evaluate(_TABS_JS))
        tabs = s.page.evaluate(_TABS_JS)
        off = [t["title"] for t in tabs if t["left"] < 0 or t["right"] > t["width"] + 0.5]
        assert not off, f"tab headers outside the {size[0]}-px window: {off}"
        assert s.unexpected_errors() == []
    finally:
        s.close()


_OVERFLOW_JS = """() => {
  const kinds = ['bk-Figure', 'bk-Title', 'bk-Row', 'bk-panel-models-layout-Column',
                 'bk-panel-models-markup-HTML', 'bk-panel-models-markup-Markdown'];
  const widgets = /^bk-(Select|Slider|Button|Toggle|Spinner|TextInput|NumericInput|MultiChoice|FileInput)$/;
  const out = [];
  const walk = (root) => {
    for (const e of root.querySelectorAll('*')) {
      if (e.shadowRoot) walk(e.shadowRoot);
      const cls = typeof e.className === 'string' ? e.className : '';
      // the layouts and panes above, and every Bokeh widget (bk-Select, bk-Slider, bk-Button, ...)
      if (!cls.split(' ').some((c) => kinds.includes(c) || widgets.test(c))) continue;
      const r = e.getBoundingClientRect();
      if (r.width > 0 && r.right > window.innerWidth + 1)
        out.push(`${cls} ${Math.round(r.left)}-${Math.round(r.right)}`);
    }
  };
  walk(document);
  return out;
}"""


NETWORK = "?problem=digits_mlp&lanes=%5B%5B%22sgd%22%2C%7B%7D%5D%5D"  # all eleven tabs


_PRESENTER_JS = """() => {
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.type === "Checkbox" && String(m.label).startsWith("presenter view")) {
      m.active = true;
      return true;
    }
  return false;
}"""


@pytest.mark.parametrize(("size", "presenting"),
                         [((1280, 720), False), ((1024, 768), False), ((1024, 768), True)])
def test_no_instrument_tab_is_wider_than_the_window(browser: object, server: Server,
                                                    size: tuple[int, int], presenting: bool) -> None:
    """Each of the eleven tabs of a network race at a laptop's and a projector's size: no figure,
    title, row, text or widget runs past the window's right edge (the memory tab's row of a 300-px
    button and its job strip made the whole tab 530 px wide in a 460-px column, the share tab's row of
    buttons 600 px: bars, axis, notes cut off; the slice tab's row of four widgets, 680 px, put its
    Compute button out of sight; at 1024 px the curvature and memory titles and the bilevel tab's
    penalty σ ran past the edge; in the presenter view's type, the curvature title to 1,148 px)."""
    s = Session(browser, server.url + NETWORK, size=size)
    try:
        wait_until(lambda: any(t["title"] == "share" for t in s.page.evaluate(_TABS_JS)), REACT, "the tabs")
        if presenting:
            assert s.page.evaluate(_PRESENTER_JS), "no presenter checkbox on the page"
        wide = {}
        for tab in [t["title"] for t in s.page.evaluate(_TABS_JS)]:
            s.tab(tab)
            time.sleep(2.0)  # its content drawn (a tab is built when first shown)
            over = s.page.evaluate(_OVERFLOW_JS)
            if over:
                wide[tab] = over[:3]
        assert not wide, f"tabs wider than the window: {wide}"
        assert s.unexpected_errors() == []
    finally:
        s.close()
