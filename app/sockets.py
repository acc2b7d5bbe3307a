"""The server's sockets: a page's requests reach the process that built it, and a page that closes
in the middle of a message leaves no traceback (:func:`quiet_closed_sockets`,
:func:`keep_closing_pages_attached`).

Several server processes (``panel serve --num-procs``, ``./dev serve``): Bokeh binds one listening
socket and forks, and every process accepts from it. A page is two connections, its GET (the server
builds the page's document) and, once the HTML is in, its websocket; while the process that built it
is busy building the next page, the other process accepts the websocket, does not know the session,
and builds the page again from its token. Measured (``benchmarks/load.py``, 20 pages opened at once,
2 processes): 41 builds for 22 pages, 1.86 per page. :func:`sticky_processes` gives each process its
own listening socket on the port (``SO_REUSEPORT``) and lets the kernel pick the socket by the
client's address (a classic-BPF program on the group, ``SO_ATTACH_REUSEPORT_CBPF``): all the
connections of one machine reach one process, and the machines of a class spread over the processes
(address modulo the number of processes). Nothing between the browser and the server: no proxy, no
scheduler. One machine (or a class behind one NAT address) is served by one process, as with
``--num-procs 1``.
"""

from __future__ import annotations

import asyncio
import ctypes
import socket
import struct
from typing import Any

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>: Linux 4.5+
_SKF_NET_OFF = -0x100000  # classic BPF: loads relative to the network (IP) header
_SRC = {socket.AF_INET: 12, socket.AF_INET6: 20}  # IPv4 source address; the last 4 bytes of IPv6's


def by_address(sock: socket.socket, n: int) -> None:
    """Make ``sock``'s ``SO_REUSEPORT`` group pick, for each new connection, its ``(source address mod
    n)``-th socket (in the order the group's sockets were bound): every connection from one address
    reaches the same socket. Raises ``OSError`` where the kernel has no such option."""
    load = 0x20, 0, 0, (_SKF_NET_OFF + _SRC[sock.family]) & 0xFFFFFFFF  # A = source address (word)
    mod = 0x94, 0, 0, n  # A = A % n
    ret = 0x16, 0, 0, 0  # return A: the index of the socket
    program = (ctypes.c_uint64 * 3)(*(struct.unpack("=Q", struct.pack("=HBBI", *op))[0]
                                      for op in (load, mod, ret)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                    struct.pack("@HP", len(program), ctypes.addressof(program)))


def listeners(family: int, address: str, port: int, n: int) -> list[socket.socket]:
    """This process's own listening socket(s) on ``address:port``, in the port's ``SO_REUSEPORT``
    group, picked by the client's address among ``n`` processes (:func:`by_address`)."""
    from tornado.netutil import bind_sockets

    socks = bind_sockets(port, address, family=family, reuse_port=True)
    for s in socks:
        by_address(s, n)
    return socks


_bound: list[socket.socket] = []  # the sockets Bokeh bound (before it forks)
_processes = 1
_running: Any = None  # with --num-procs: the races running in each process, in memory all of them share


def _index() -> int | None:
    """This process's index among the forked ones (None where it was not forked)."""
    from tornado.process import task_id

    return task_id()


def publish_running(n: int) -> None:
    """Tell the server's other processes that ``n`` races run in this one (:func:`running_elsewhere`)."""
    i = _index()
    if _running is not None and i is not None:
        _running[i] = n


def running_elsewhere() -> int:
    """Races running in the server's other processes now (0 with one process). The processes are
    picked by client address (:func:`sticky_processes`), so a class behind one address (a school's
    NAT) lands on one process while the other idles: the step budget is shared over all races of the
    server, not halved per process (``app/load.py``)."""
    i = _index()
    if _running is None or i is None:
        return 0
    return sum(n for j, n in enumerate(_running) if j != i)


def processes() -> int:
    """Server processes sharing this one's port (``--num-procs``; 1 when not forked)."""
    return _processes


def sticky_processes() -> None:
    """With ``--num-procs N`` (N > 1): each process listens on its own socket and a client's
    connections all reach one process (see the module docstring). Call before Bokeh's server binds
    (``app/server_lifecycle.py`` runs then, once, in the process that forks); with one process, and
    where the kernel lacks the option (then the sockets stay shared), nothing changes."""
    import bokeh.server.server as bokeh_server
    from tornado import process
    from tornado.tcpserver import TCPServer

    if getattr(TCPServer, "_optiscope_sticky", False):
        return
    bind, start, add = bokeh_server.bind_sockets, TCPServer.start, TCPServer.add_sockets

    def bind_sockets(address: Any, port: int) -> Any:
        socks, port = bind(address, port)
        _bound[:] = socks
        return socks, port

    def start_(self: TCPServer, num_processes: int | None = 1, max_restarts: int | None = None) -> None:
        global _processes, _running
        n = num_processes if num_processes and num_processes > 0 else process.cpu_count()
        _processes = max(1, n)  # inherited by the processes forked below
        if n > 1:  # shared memory made before the fork: every process writes its slot, reads the others'
            from multiprocessing.sharedctypes import RawArray

            _running = RawArray("i", n)
        if n > 1 and _bound:
            where = [(s.family, s.getsockname()[0], s.getsockname()[1]) for s in _bound]
            try:  # the group must form before any process listens: try it here, on a spare port
                for probe in listeners(where[0][0], where[0][1], 0, n):
                    probe.close()
            except OSError:
                where = []
            if where:
                for s in _bound:  # closed before the fork: no socket outside the group keeps the port
                    s.close()
                self._optiscope_listen = (where, n)  # type: ignore[attr-defined]
        start(self, num_processes, max_restarts)

    def add_sockets(self: TCPServer, sockets: Any) -> None:
        sockets = [s for s in sockets if s.fileno() != -1]  # Bokeh's, closed before the fork
        plan = self.__dict__.pop("_optiscope_listen", None)
        if plan is not None:
            where, n = plan
            sockets += [s for family, address, port in where for s in listeners(family, address, port, n)]
        add(self, sockets)

    bokeh_server.bind_sockets = bind_sockets
    TCPServer.start = start_  # type: ignore[method-assign]
    TCPServer.add_sockets = add_sockets  # type: ignore[method-assign]
    TCPServer._optiscope_sticky = True  # type: ignore[attr-defined]


def quiet_closed_sockets() -> None:
    """Let a page close in the middle of a message without a traceback in the server's log.

    Tornado writes each message as a task; when the browser goes away mid-message the task fails
    with ``WebSocketClosedError``, and Panel does not always await it, so asyncio logs "Task
    exception was never retrieved" with two tracebacks (measured: 10 per 16 pages closed while
    streaming, before this app stopped writing to closed pages; 1 per 16 after). Nothing is lost:
    the page is gone. Every other exception still reaches asyncio's default handler."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    if getattr(loop, "_optiscope_quiet", False):
        return
    from tornado.websocket import WebSocketClosedError

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if isinstance(context.get("exception"), WebSocketClosedError):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    loop._optiscope_quiet = True  # type: ignore[attr-defined]


def keep_closing_pages_attached() -> None:
    """Let a closing page's last messages reach its session (Bokeh's keep-alive detached it first).

    Bokeh pings every page every 37 s; a ping to a page whose socket is already closed (the browser
    went away) makes Bokeh drop the connection's session at once (``client_lost``, Bokeh #13655, a
    guard for connections never cleaned up). But the page's last messages (a click, a range change)
    may still wait, read before the close, in Tornado's buffer behind a busy server: each then met
    a detached session and Bokeh logged "error handling message" with an ``AssertionError``
    traceback, then another one from the socket's own close (measured: 4 in 30 pages closed right
    after a Reset, ``tests/browser/test_app_browser.py``'s closing test failing 1 run in 4). Here
    a failed ping leaves a connection whose socket has not closed yet alone (its close, which
    Tornado calls once the buffered messages are read, ends it as on every page); one whose close
    already ran, or whose ping failed at the keep-alive before too (a message stuck for over 37 s),
    keeps Bokeh's guard."""
    from bokeh.server.tornado import BokehTornado
    from tornado.websocket import WebSocketClosedError

    if getattr(BokehTornado, "_optiscope_keep_alive", False):
        return

    def keep_alive(self: BokehTornado) -> None:
        for connection in list(self._clients):
            try:
                connection.send_ping()
            except WebSocketClosedError:
                failed = getattr(connection, "_optiscope_failed_pings", 0) + 1
                connection._optiscope_failed_pings = failed
                if failed > 1 or getattr(connection._socket, "_on_close_called", True):
                    self.client_lost(connection)

    BokehTornado._keep_alive = keep_alive  # type: ignore[method-assign]
    BokehTornado._optiscope_keep_alive = True  # type: ignore[attr-defined]


__all__ = ["by_address", "keep_closing_pages_attached", "listeners", "processes", "publish_running",
           "quiet_closed_sockets", "running_elsewhere", "sticky_processes"]
