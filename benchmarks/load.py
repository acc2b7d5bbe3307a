"""A class on one server: N sessions of the default race against a ``panel serve app`` started here.

Each session is what a browser does, at the protocol level (no rendering, so N pages cost this
process little): GET ``/app`` (the server builds the page's document), open the page's websocket
with the token from the HTML, pull the document, say "document ready" (the race starts then), and
from there read every PATCH-DOC the server pushes. From those patches it follows two models of the
page: the step counter (``.step-counter``: "step 123 · running") and the rate meter (``.step-rate``:
"25 of 60 steps/s asked"). Measured per session:

- page load: GET start -> document pulled (what a browser waits for before it can draw);
- steps/s: the counter's steps over the measuring window / the window (the real rate);
- shown: the rate meter's last figure (the rate the page shows, to compare with the real one);
- control: a click on "Pause" -> the counter says "paused" (the page answers its controls).

Three page loads are measured: the N pages opened at once (``page_load_s_max``: the last of N documents
built one after another by one interpreter), or spread over ``--arrival`` seconds (a class arriving);
and, with the N sessions open and racing, one more page opened halfway through the measuring window
(``late_page_load_s``: what the goal "pages load in under 5 s with 20 sessions open" names).
``--build K`` measures instead what one page costs an idle server: K pages opened one after another
(each closed before the next), alternating with a second server on ``--baseline-root`` when given;
in seconds to load and in the server's CPU seconds (GET -> document pulled: what the page cost the
server, less sensitive than seconds to what else the machine runs).

Then every websocket closes, and the server's Python threads and RSS (its children too with
``--num-procs``) are sampled each second until they are back within 10 % of idle or ``--drain``
seconds pass. Idle = after one warm-up session has opened and closed (the code is imported).

The server runs as ``./dev serve`` runs it: its options (:data:`SERVE_OPTIONS`) and Python's objects
in glibc's heap (``PYTHONMALLOC=malloc``, unless the environment names an allocator).

Loopback only; bounded: at most ``MAX_SESSIONS`` sessions, each step waits at most its timeout, the
whole run at most ``--limit`` seconds. Figures on a 2-core machine shared with other work are
pessimistic: compare runs side by side.

    python benchmarks/load.py [--sessions 20] [--seconds 40] [--num-procs 1] [--speed 60] [--arrival 0]
    python benchmarks/load.py --build 8 [--baseline-root ../main]

Last line: ``sessions=<n> steps_per_s_min=<n> page_load_s_max=<n> rss_after_close_mb=<n>
threads_after_close=<n> late_page_load_s=<n> builds_per_page=<n> builds_by_process=<n/n>`` (pages
built per page opened, and per server process: app/main.py logs each build); with ``--build``:
``page_build_s_median=<n>`` (and ``baseline_page_build_s_median=<n> ratio=<n>``, and the same in CPU
seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from bokeh.protocol import Protocol
from bokeh.protocol.receiver import Receiver
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
MAX_SESSIONS = 64
SERVE_OPTIONS = ["--check-unused-sessions", "1000", "--unused-session-lifetime", "60000"]
"""As ``./dev serve``: a closed page's session ends within seconds (its worker stops at once and it
asks Bokeh to end it: app/load.py); a page whose websocket waits behind other pages' builds keeps its
session for 60 s (shorter, and it is discarded and built twice: with 20 s, 9 of 20 pages opened at
once on a loaded machine were; ``--serve-args "--unused-session-lifetime 20000"`` serves as before)."""
_ids = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html.replace("&lt;", "<").replace("&gt;", ">"))


def _models(node: Any, out: dict[str, dict]) -> dict[str, dict]:
    """Every serialized model in the pulled document: id -> attributes."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "id" in node and "attributes" in node:
            out[node["id"]] = node["attributes"]
        for v in node.values():
            _models(v, out)
    elif isinstance(node, list):
        for v in node:
            _models(v, out)
    return out


_machines = itertools.count(10)


def machine(one_address: bool = False) -> str:
    """A source address for the next page's connections: each page of a class comes from its own
    machine (127.0.0.10, .11, ... on loopback), as a class's browsers do; ``one_address``: all from
    127.0.0.1 (one machine, or a class behind one NAT address)."""
    return "127.0.0.1" if one_address else f"127.0.0.{next(_machines) % 240 + 10}"


class Page:
    """One protocol-level session of the app, from the source address ``source``."""

    def __init__(self, base: str, source: str = "127.0.0.1") -> None:
        self.base = base
        self.source = source
        self.load_s: float | None = None
        self.steps: list[tuple[float, int]] = []  # (monotonic time, counter's step)
        self.shown: list[float] = []  # the rate meter's figures
        self.state = ""
        self.error = ""
        self.ws: Any = None
        self.counter = self.rate = self.pause = ""
        self.proto = Protocol()
        self.receiver = Receiver(self.proto)

    async def open(self, timeout: float) -> None:
        t0 = time.monotonic()
        get = HTTPRequest(f"{self.base}/app", request_timeout=timeout, connect_timeout=timeout,
                          network_interface=self.source)
        resp = await AsyncHTTPClient().fetch(get)
        token = re.search(r'"token":"([^"]+)"', resp.body.decode()).group(1)
        ws_url = self.base.replace("http", "ws") + "/app/ws"
        request = HTTPRequest(ws_url, connect_timeout=timeout, request_timeout=timeout,  # tornado's own: 20 s
                              network_interface=self.source)
        self.ws = await asyncio.wait_for(websocket_connect(request, subprotocols=["bokeh", token]), timeout)
        await asyncio.wait_for(self._receive(), timeout)  # ACK
        await self._send("PULL-DOC-REQ", {})
        reply = await asyncio.wait_for(self._receive(), timeout)
        self.load_s = time.monotonic() - t0
        models = _models(reply.content, {})
        for mid, attrs in models.items():
            css = attrs.get("css_classes") or []
            if "step-counter" in css:
                self.counter = mid
                self._seen(mid, attrs.get("text", ""))
            elif "step-rate" in css:
                self.rate = mid
            elif attrs.get("label") == "Pause":
                self.pause = mid
        await self._event("document_ready", [])

    async def _send(self, msgtype: str, content: dict) -> None:
        header = {"msgid": str(next(_ids)), "msgtype": msgtype}
        for part in (header, {}, content):
            await self.ws.write_message(json.dumps(part))

    async def _event(self, name: str, entries: list) -> None:
        event = {"type": "event", "name": name, "values": {"type": "map", "entries": entries}}
        await self._send("PATCH-DOC", {"events": [{"kind": "MessageSent", "msg_type": "bokeh_event",
                                                   "msg_data": event}]})

    async def click_pause(self) -> None:
        await self._event("button_click", [["model", {"id": self.pause}]])

    async def _receive(self) -> Any:
        while True:
            fragment = await self.ws.read_message()
            if fragment is None:
                raise ConnectionError("the server closed the websocket")
            message = await self.receiver.consume(fragment)
            if message is not None:
                return message

    def _seen(self, mid: str, value: Any) -> None:
        if not isinstance(value, str):
            return
        text = _text(value)
        now = time.monotonic()
        if mid == self.counter:
            m = re.search(r"step (\d+)", text)
            if m:
                self.steps.append((now, int(m.group(1))))
            self.state = "paused" if "paused" in text else "running"
        elif mid == self.rate:
            m = re.match(r"\s*([\d.]+) of", text)
            if m:
                self.shown.append(float(m.group(1)))

    async def listen(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message.msgtype != "PATCH-DOC":
                    continue
                for e in message.content.get("events", []):
                    if e.get("kind") == "ModelChanged" and e.get("attr") == "text":
                        self._seen(e["model"]["id"], e.get("new"))
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:  # reported with the figures, never hidden
            self.error = repr(exc)

    def steps_per_s(self, t0: float, t1: float) -> float:
        """The counter's rate over [t0, t1], from its last sample at or before t0 (else its first in
        the window) to its last in the window. Under load a page's counter changes only every few
        seconds (it is redrawn on one pump in ``REFRESH_EVERY``, and pumps are throttled): samples
        inside the window alone were often fewer than two, and the rate read 0 while the rate meter
        showed 35-47 steps/s."""
        before = [(t, k) for t, k in self.steps if t <= t0][-1:]
        samples = before + [(t, k) for t, k in self.steps if t0 < t <= t1]
        if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
            return 0.0
        (ta, ka), (tb, kb) = samples[0], samples[-1]
        return (kb - ka) / (tb - ta)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()


class Server:
    """``panel serve app`` on a loopback port; its process tree's Python threads and RSS."""

    def __init__(self, num_procs: int, log: Path, root: Path = ROOT, extra: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "panel", "serve", "app", "--port", str(self.port), "--address",
               "127.0.0.1", f"--allow-websocket-origin=127.0.0.1:{self.port}", *SERVE_OPTIONS]
        if num_procs > 1:
            cmd += ["--num-procs", str(num_procs)]
        cmd += extra
        # Python's allocator as ./dev serve picks it (glibc's malloc) unless the caller's environment
        # names one: PYTHONMALLOC=pymalloc python benchmarks/load.py measures the other
        env = {"PYTHONMALLOC": "malloc", **os.environ, "PYTHONPATH": str(root)}
        self.log = open(log, "w")  # closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def usage(self) -> tuple[float, int]:
        """(RSS in MB, threads) over the server's processes."""
        rss, threads = 0, 0
        for p in self.processes():
            try:
                rss += p.memory_info().rss
                threads += p.num_threads()
            except psutil.NoSuchProcess:
                pass
        return rss / 1e6, threads

    def cpu(self) -> float:
        """CPU seconds (user + system) the server's processes have used so far."""
        total = 0.0
        for p in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def builds(self) -> dict[int, int]:
        """Pages built so far, per server process (``app/main.py`` logs one line per page built)."""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace")
        out: dict[int, int] = {}
        for pid in re.findall(r"optiscope: page built in [\d.]+ s by process (\d+)", text):
            out[int(pid)] = out.get(int(pid), 0) + 1
        return out

    def stop(self) -> None:
        """End the server and its ``--num-procs`` children (terminating the parent alone left them
        running, orphaned, after the benchmark)."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.proc.terminate()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.log.close()


async def wait_up(server: Server, timeout: float) -> None:
    """Until the server answers. It is asked for ``/`` without following its redirect to ``/app``: a GET
    of the page would build one whose websocket never comes, a session that lives on for the
    unused-session lifetime (and was counted in "idle")."""
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise SystemExit(f"panel serve exited with {server.proc.returncode}")
        try:
            resp = await AsyncHTTPClient().fetch(f"{server.base}/", request_timeout=30,
                                                 follow_redirects=False, raise_error=False)
            if resp.code == 599:  # no connection
                raise ConnectionError(resp.error)
            return
        except Exception:  # not up yet
            if time.monotonic() > deadline:
                raise SystemExit(f"no page from {server.base} within {timeout:.0f} s") from None
            await asyncio.sleep(0.5)


async def settle(server: Server, idle: tuple[float, int], limit: float) -> tuple[float, float, int]:
    """Sample the server each second until RSS and threads are within 10 % of idle (or ``limit``):
    (seconds taken, RSS MB, threads) at the end."""
    t0 = time.monotonic()
    while True:
        rss, threads = server.usage()
        back = rss <= 1.1 * idle[0] and threads <= 1.1 * idle[1]
        if back or time.monotonic() - t0 > limit:
            return time.monotonic() - t0, rss, threads
        await asyncio.sleep(1.0)


async def run(args: argparse.Namespace) -> str:
    AsyncHTTPClient.configure(None, max_clients=MAX_SESSIONS)
    extra = tuple(args.serve_args.split())
    server = Server(args.num_procs, Path(args.log), Path(args.app_root).resolve(), extra)
    try:
        await wait_up(server, 120)
        warm = Page(server.base, machine(args.one_address))  # imports everything; idle is measured after it
        await warm.open(120)
        warm.close()
        await asyncio.sleep(10)  # its session ends ~7 s after its page closed
        idle = server.usage()
        print(f"idle: {idle[0]:.0f} MB, {idle[1]} threads", flush=True)

        pages = [Page(server.base, machine(args.one_address)) for _ in range(args.sessions)]
        t_open = time.monotonic()

        listeners: list[asyncio.Future] = []

        async def arrive(i: int, page: Page) -> None:  # page i of N comes i/N of the arrival later
            await asyncio.sleep(args.arrival * i / args.sessions)
            await page.open(args.page_timeout)
            listeners.append(asyncio.ensure_future(page.listen()))  # a browser reads its page at once

        results = await asyncio.gather(*(arrive(i, p) for i, p in enumerate(pages)), return_exceptions=True)
        for p, r in zip(pages, results, strict=True):
            if isinstance(r, BaseException):
                p.error = f"open: {r!r}"
        how = f"spread over {args.arrival:g} s" if args.arrival else "at once"
        print(f"{args.sessions} pages opened ({how}) in {time.monotonic() - t_open:.1f} s", flush=True)
        await asyncio.sleep(args.warmup)
        t0 = time.monotonic()
        await asyncio.sleep(args.seconds / 2)
        late = Page(server.base, machine(args.one_address))  # one more page while the class is racing
        try:
            await late.open(args.page_timeout)
        except Exception as exc:  # reported, never hidden
            late.error = repr(exc)
        late.close()
        await asyncio.sleep(max(0.0, t0 + args.seconds - time.monotonic()))
        t1 = time.monotonic()
        busy = server.usage()

        clicked = {}
        for p in pages:
            if p.ws is not None and p.pause:
                await p.click_pause()
                clicked[id(p)] = time.monotonic()
        answer = {}
        deadline = time.monotonic() + args.page_timeout
        while len(answer) < len(clicked) and time.monotonic() < deadline:
            for p in pages:
                if id(p) in clicked and id(p) not in answer and p.state == "paused":
                    answer[id(p)] = time.monotonic() - clicked[id(p)]
            await asyncio.sleep(0.05)

        for p in pages:
            p.close()
        for task in listeners:
            task.cancel()
        took, rss, threads = await settle(server, idle, args.drain)
        builds = server.builds()
        opened = args.sessions + 2  # the warm-up page, the class, the late page

        rates = [p.steps_per_s(t0, t1) for p in pages]
        loads = [p.load_s if p.load_s is not None else float("inf") for p in pages]
        print(f"\n{'page':>4} {'load s':>7} {'steps/s':>8} {'shown':>6} {'pause s':>8}  error")
        for i, p in enumerate(pages):
            shown = f"{p.shown[-1]:.0f}" if p.shown else "-"
            ans = answer.get(id(p))
            print(f"{i:>4} {loads[i]:>7.1f} {rates[i]:>8.1f} {shown:>6} "
                  f"{'-' if ans is None else f'{ans:.2f}':>8}  {p.error}")
        print(f"\nsteps/s: min {min(rates):.1f}, median {statistics.median(rates):.1f} "
              f"(asked {args.speed:g}; window {t1 - t0:.0f} s after {args.warmup:.0f} s)")
        late_s = late.load_s if late.load_s is not None else float("inf")
        print(f"page load: max {max(loads):.1f} s, median {statistics.median(loads):.1f} s ({how}); "
              f"one more page while they race: {late_s:.1f} s {late.error}")
        print(f"pause answered: {len(answer)}/{len(clicked)}, max "
              f"{max(answer.values(), default=float('nan')):.2f} s")
        print(f"server with {args.sessions} sessions: {busy[0]:.0f} MB, {busy[1]} threads; "
              f"idle {idle[0]:.0f} MB, {idle[1]} threads")
        print(f"after close: {rss:.0f} MB, {threads} threads, {took:.0f} s after the last page closed "
              f"({'within' if took <= args.drain else 'NOT within'} 10 % of idle)", flush=True)
        # a page whose websocket reached another process than its GET was built there again
        split = "/".join(str(n) for n in sorted(builds.values(), reverse=True)) or "0"
        print(f"page builds: {sum(builds.values())} for {opened} pages opened; per process {split}",
              flush=True)
        return (f"sessions={args.sessions} steps_per_s_min={min(rates):.1f} page_load_s_max={max(loads):.1f} "
                f"rss_after_close_mb={rss:.0f} threads_after_close={threads} late_page_load_s={late_s:.1f} "
                f"builds_per_page={sum(builds.values()) / opened:.2f} builds_by_process={split}")
    finally:
        server.stop()


async def build(args: argparse.Namespace) -> str:
    """What a page costs an idle server: ``--build`` pages opened one after another (GET -> document
    pulled), each closed and its session left to end before the next; with ``--baseline-root``, a
    second server from that checkout gets a page between two of ours (same load, side by side)."""
    AsyncHTTPClient.configure(None, max_clients=MAX_SESSIONS)
    roots = {"this": Path(args.app_root).resolve()}
    if args.baseline_root:
        roots["baseline"] = Path(args.baseline_root).resolve()
    log = Path(args.log)
    extra = tuple(args.serve_args.split())
    servers = {name: Server(1, log.with_name(f"{log.stem}-{name}{log.suffix}"), root, extra)
               for name, root in roots.items()}
    loads: dict[str, list[float]] = {name: [] for name in servers}
    cpus: dict[str, list[float]] = {name: [] for name in servers}  # the server's CPU seconds per page
    try:
        for server in servers.values():
            await wait_up(server, 120)
            warm = Page(server.base)  # imports everything: not counted
            await warm.open(120)
            warm.close()
        await asyncio.sleep(10)
        for _ in range(args.build):
            for name, server in servers.items():
                page = Page(server.base)
                before = server.cpu()
                await page.open(args.page_timeout)
                cpus[name].append(server.cpu() - before)  # GET -> pulled (the race has not stepped yet)
                page.close()
                loads[name].append(page.load_s)
                await asyncio.sleep(args.build_gap)  # its worker stops, its session ends: idle again
        for name, values in loads.items():
            print(f"{name} ({roots[name]}): " + " ".join(f"{v:.2f}" for v in values)
                  + f"  median {statistics.median(values):.2f} s; server CPU "
                  + " ".join(f"{v:.2f}" for v in cpus[name])
                  + f"  median {statistics.median(cpus[name]):.2f} s", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    this, this_cpu = statistics.median(loads["this"]), statistics.median(cpus["this"])
    line = f"page_build_s_median={this:.2f} page_build_cpu_s_median={this_cpu:.2f}"
    if "baseline" in loads:  # CPU seconds: what a page costs the server, whatever else the machine runs
        base, base_cpu = statistics.median(loads["baseline"]), statistics.median(cpus["baseline"])
        line += (f" baseline_page_build_s_median={base:.2f} baseline_page_build_cpu_s_median={base_cpu:.2f}"
                 f" ratio={this / base:.2f} cpu_ratio={this_cpu / base_cpu:.2f}")
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=40.0, help="measuring window")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after the pages opened, not measured")
    ap.add_argument("--num-procs", type=int, default=1, help="panel serve --num-procs")
    ap.add_argument("--speed", type=float, default=60.0, help="the default race's asked rate (for the table)")
    ap.add_argument("--page-timeout", type=float, default=120.0)
    ap.add_argument("--drain", type=float, default=60.0, help="seconds to wait for threads and RSS")
    ap.add_argument("--limit", type=float, default=900.0, help="the whole run, seconds")
    ap.add_argument("--one-address", action="store_true",
                    help="every page from 127.0.0.1 (default: each from its own loopback address)")
    ap.add_argument("--arrival", type=float, default=0.0,
                    help="seconds over which the N pages open, evenly (0: all at once)")
    ap.add_argument("--build", type=int, default=0,
                    help="only measure K page loads one after another on an idle server")
    ap.add_argument("--build-gap", type=float, default=4.0, help="seconds between two --build pages")
    ap.add_argument("--baseline-root", default="", help="with --build: a second checkout, side by side")
    ap.add_argument("--app-root", default=str(ROOT), help="the checkout served (compare with main's)")
    ap.add_argument("--serve-args", default="", help="more panel serve options (split on spaces)")
    ap.add_argument("--log", default=str(ROOT / "artifacts" / "load-serve.log"))
    args = ap.parse_args()
    if not 1 <= args.sessions <= MAX_SESSIONS:
        raise SystemExit(f"--sessions must be 1..{MAX_SESSIONS}")
    if not 0 <= args.build <= MAX_SESSIONS:
        raise SystemExit(f"--build must be 0..{MAX_SESSIONS}")
    if not 0 <= args.arrival <= args.limit / 2:
        raise SystemExit("--arrival must be between 0 and half of --limit")
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    line = asyncio.run(asyncio.wait_for(build(args) if args.build else run(args), args.limit))
    print(line)


if __name__ == "__main__":
    main()
