"""A lighter repaint for the page's plots: BokehJS 3.9 rewrites each renderer's position stylesheet at
every paint, changed or not, which invalidates the page's styles, and the next visual property read
(``getComputedStyle``, for CSS-variable theming) then recalculates them: one style recalculation per
renderer per paint. Measured on the 8-lane race in software-painted Chromium (Chrome's performance
metrics, the same page before and after the patch, 10 s each): style recalculation took 59-66 % of
the page's main thread, 17-29 % with the unchanged rewrites skipped; ``benchmarks/controls.py`` times
the controls with and without it (main's tree). Upstream: bokeh/bokeh#15286 (visual reads
always consult the CSS cascade) and #15205 (a cache of those reads), not in a release this project
can install (3.9.2 is the newest).

The patch only skips writing a ``<style>`` element's text when it equals what it holds already, so
what the page shows is unchanged. It is installed once per page, when the document is ready, and does
nothing where BokehJS's internals are not the ones it was written for.
"""

from __future__ import annotations

from typing import Any

from bokeh.models import CustomJS

SKIP_UNCHANGED_STYLES_JS = """
try {
  const dom = Bokeh.require("core/dom");
  const proto = dom.InlineStyleSheet && dom.InlineStyleSheet.prototype;
  if (proto && typeof proto._update === "function" && !proto._optiscope_unchanged_skipped) {
    const update = proto._update;
    proto._update = function (css) {
      if (this.el == null || this.el.textContent !== css) update.call(this, css);
    };
    proto._optiscope_unchanged_skipped = true;
  }
} catch (e) {
  // another BokehJS: leave it as it is
}
"""


def install(doc: Any) -> None:
    """Skip unchanged stylesheet rewrites on ``doc``'s page (a served Bokeh document), from its load on."""
    doc.js_on_event("document_ready", CustomJS(code=SKIP_UNCHANGED_STYLES_JS))
