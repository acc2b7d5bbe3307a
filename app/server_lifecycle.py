"""Bokeh's hooks for the ``panel serve app`` directory app (this file's name is Bokeh's convention).

This module is executed once before the server forks its processes (``--num-procs``): it imports
nothing heavy. :func:`on_server_loaded` runs in every server process once it serves.
"""

from __future__ import annotations

from typing import Any


def on_server_loaded(server_context: Any) -> None:
    """Warm this process up (:func:`app.page.warm`): the first student does not pay for the app's
    imports, and idle memory is measured with the app loaded."""
    from app.page import warm

    warm()
