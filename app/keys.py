"""Keyboard shortcuts for the page: space runs or pauses the race, the right arrow takes one step.

Panel has no global key handler, so a zero-size :class:`~panel.reactive.ReactiveHTML` element
listens on the document (one listener per page, replaced when the element is rendered again) and
reports each press as one string property, ``"space:<time>.<count>"`` (so a repeated key is a new
value). Keys typed into a field, a drop-down, a button or a slider handle are theirs, not
the page's (a focused slider moves with the arrows; a focused button already clicks on space): the
check walks the event's composed path, since Panel's widgets live in shadow roots, where
``event.target`` is only the shadow host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import param
from panel.reactive import ReactiveHTML

KEYS = {"space": "run / pause", "right": "one step"}


class Shortcuts(ReactiveHTML):
    """Calls ``on_key(name)`` (a key of :data:`KEYS`) for each shortcut pressed on the page."""

    press = param.String(default="", doc='the last shortcut pressed, "<key>:<count>"')

    _template = '<div id="keys" style="width:0;height:0;overflow:hidden"></div>'
    _scripts: ClassVar[dict[str, str]] = {
        "render": """
          if (window.__optiscopeKeys) document.removeEventListener('keydown', window.__optiscopeKeys);
          let count = 0;
          const handler = (e) => {
            if (e.ctrlKey || e.metaKey || e.altKey) return;
            // the real target: widgets live in shadow roots, where e.target is only their host
            const own = 'input, textarea, select, button, [contenteditable], [role=slider], .noUi-target';
            const path = e.composedPath ? e.composedPath() : [e.target];
            if (path.some((el) => el instanceof Element && el.closest(own))) return;
            const key = e.code === 'Space' ? 'space' : (e.key === 'ArrowRight' ? 'right' : null);
            if (key === null) return;
            e.preventDefault();
            count += 1;
            data.press = key + ':' + Date.now() + '.' + count;  // a new value even after a re-render
          };
          window.__optiscopeKeys = handler;
          document.addEventListener('keydown', handler);
        """,
        "remove": """
          if (window.__optiscopeKeys) document.removeEventListener('keydown', window.__optiscopeKeys);
          window.__optiscopeKeys = null;
        """,
    }

    def __init__(self, on_key: Callable[[str], None], **params: object) -> None:
        super().__init__(width=0, height=0, margin=0, **params)
        self._on_key = on_key
        self.param.watch(self._pressed, "press")

    def _pressed(self, event: param.parameterized.Event) -> None:
        key = event.new.partition(":")[0]
        if key in KEYS:
            self._on_key(key)
