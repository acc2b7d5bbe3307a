"""What a person sees of the page's layout at a classroom projector's size."""

from __future__ import annotations

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


@pytest.mark.parametrize("size", [(1280, 720), (1024, 768)])
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
