"""Bokeh's hooks for the ``panel serve app`` directory app (this file's name is Bokeh's convention).

This module is executed once before the server binds its socket and forks its processes
(``--num-procs``): it imports nothing heavy. :func:`on_server_loaded` runs in every server process
once it serves.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from app.sockets import keep_closing_pages_attached, sticky_processes

# the app's own lines in the server's log beside Bokeh's (warm-up, each page built and by which process)
logging.getLogger("app").setLevel(logging.INFO)
# --num-procs N: a client's connections (a page's GET and its websocket) reach one process, which
# builds the page once (app/sockets.py); before Bokeh binds its socket and forks, which is after this
sticky_processes()
# a page closed right after a click: its last messages reach its session (Bokeh's keep-alive detached it)
keep_closing_pages_attached()


def on_server_loaded(server_context: Any) -> None:
    """Warm this process up (:func:`app.page.warm`): the first student does not pay for the app's
    imports, and idle memory is measured with the app loaded. The warm-up page is checked by Bokeh's
    integrity checks; the pages after it are not (:func:`check_pages_once`)."""
    from app.page import warm

    warm()
    check_pages_once()


def check_pages_once() -> None:
    """Bokeh checks every new document's integrity (all its ~550 models, after they are built): ~10 %
    of what a page costs the server, for a page that is always the same code's and whose checks ran
    on the warm-up page (they only log). ``BOKEH_VALIDATE_DOC`` set by hand still decides."""
    if "BOKEH_VALIDATE_DOC" not in os.environ:
        from bokeh.settings import settings

        settings.perform_document_validation.set_value(False)
