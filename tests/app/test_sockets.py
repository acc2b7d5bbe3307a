"""The server's websocket housekeeping (app/sockets.py) against Bokeh's own classes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from bokeh.server.connection import ServerConnection
from bokeh.server.tornado import BokehTornado
from tornado.websocket import WebSocketClosedError

from app.sockets import keep_closing_pages_attached


class _Session:
    def __init__(self) -> None:
        self.subscribers: set = set()

    def subscribe(self, c: object) -> None:
        self.subscribers.add(c)

    def unsubscribe(self, c: object) -> None:
        self.subscribers.discard(c)


class _ClosedSocket:
    """A page's websocket whose stream is gone: a ping fails."""

    def __init__(self, close_ran: bool) -> None:
        self._on_close_called = close_ran

    def ping(self, data: bytes) -> None:
        raise WebSocketClosedError()


@pytest.fixture
def keep_alive(monkeypatch: pytest.MonkeyPatch) -> object:
    monkeypatch.setattr(BokehTornado, "_keep_alive", BokehTornado._keep_alive)
    monkeypatch.setattr(BokehTornado, "_optiscope_keep_alive", False, raising=False)
    keep_closing_pages_attached()
    return BokehTornado._keep_alive


def test_a_failed_ping_leaves_a_closing_page_attached_until_its_socket_closes(keep_alive: object) -> None:
    """Bokeh's keep-alive ping to a page whose socket is closing: the page's session stays attached
    (its last buffered messages still reach it; Bokeh's own keep-alive detached it and each of
    those messages raised AssertionError), and a connection whose close already ran (Bokeh's guard
    for connections never cleaned up) is still dropped."""
    closing, session = _ClosedSocket(close_ran=False), _Session()
    stale, stale_session = _ClosedSocket(close_ran=True), _Session()
    server = SimpleNamespace(_clients=set())
    server.client_lost = lambda c: BokehTornado.client_lost(server, c)
    a = ServerConnection(None, closing, None, session)  # type: ignore[arg-type]
    b = ServerConnection(None, stale, None, stale_session)  # type: ignore[arg-type]
    server._clients |= {a, b}
    keep_alive(server)  # type: ignore[operator]
    assert a.session is session and a in server._clients and a in session.subscribers
    assert b not in server._clients and b not in stale_session.subscribers
    with pytest.raises(AssertionError):
        b.session  # noqa: B018 (detached, as Bokeh's guard does)
    # once the socket's close has run, it goes as any closed page's does
    closing._on_close_called = True
    keep_alive(server)  # type: ignore[operator]
    assert server._clients == set() and session.subscribers == set()


def test_a_closing_page_stuck_past_two_pings_is_dropped(keep_alive: object) -> None:
    """A closed socket whose close never comes (a message handler stuck): Bokeh's guard after the
    second failed ping (~74 s), so its session does not stay forever."""
    session = _Session()
    server = SimpleNamespace(_clients=set())
    server.client_lost = lambda c: BokehTornado.client_lost(server, c)
    c = ServerConnection(None, _ClosedSocket(close_ran=False), None, session)  # type: ignore[arg-type]
    server._clients.add(c)
    keep_alive(server)  # type: ignore[operator]
    assert c in server._clients and c.session is session
    keep_alive(server)  # type: ignore[operator]
    assert server._clients == set() and session.subscribers == set()
