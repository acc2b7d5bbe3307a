"""Engine -> Bokeh document -> browser: how often the screen shows new steps, how late, and whether
the page's memory stays flat over a long race.

(a) In process: an :class:`app.explorer.Explorer` racing 8 first-order optimizers on Rosenbrock, its
    worker stepping at ``--fast`` steps/s, ``pump()`` called every ``--pump-ms`` (the app's
    cadence is ``app.explorer.PUMP_MS``) for ``--seconds``. Counts records and curve rows moved
    into the ColumnDataSources, the pumps that delivered data per second, and the time one pump
    takes. The figures sit in a Bokeh Document, so each ``stream`` builds its change event as in a
    session.
(b) In Chromium, for ``--minutes``: the same race served in this process (``pn.serve``, threaded)
    at ``--speed`` steps/s (the app's default) with the pump period patched to ``--pump-ms``; the
    run's ``step`` is wrapped to note ``time.time()`` when each step's records are ready. The page
    listens to every loss-curve source: a ``stream`` (or a whole new ``data``) asks for an animation
    frame, and that frame notes its wall clock (``performance.timeOrigin + performance.now()``)
    and the newest step the sources hold. A screen update is a frame that shows new steps; its
    latency is that frame's time minus the server's stamp of its newest step (one machine, one
    clock). The race starts when the page reports it has loaded; the first ``--warmup`` seconds
    (first paints, fonts, the tables) are reported apart. JS heap: Chrome DevTools Protocol
    ``Performance.getMetrics`` ``JSHeapUsedSize`` after ``HeapProfiler.collectGarbage``, at the
    end of the warm-up, every ``--heap-every`` seconds, and at the end; the page's own notes are
    read and emptied every second so that the measurement does not grow the heap.

Last line: ``stream_hz=<(b)'s screen updates per second> latency_ms=<(b)'s median step-to-screen>
heap_growth_mb=<(b)'s JS heap at the end - after the warm-up>`` ((a)'s updates per second and nan
with ``--no-browser``).

    python benchmarks/stream.py [--minutes 1] [--pump-ms N] [--speed 60] [--warmup 5] [--no-browser]

Needs /usr/bin/chromium (Debian's) for (b).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import panel as pn
import torch
from bokeh.document import Document

import app.explorer as explorer_module
from app.explorer import Explorer
from app.views.curves import GradView, LossView
from app.views.landscape import LandscapeView
from engine.registry import Oracle, available

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LANES = tuple((name, {}) for name in available(oracle=Oracle.GRADIENTS)[:8])
MB = 2**20

# JS: every visible loss-curve source asks for a frame when it changes; the frame notes
# [wall-clock ms, newest step shown, rows held by the first source]; messages that change them are counted.
_LISTEN_JS = """() => {
  const doc = Bokeh.documents[0];
  const srcs = [];
  for (const m of doc._all_models.values()) {
    if (m.type !== "GlyphRenderer" || !m.visible) continue;
    const src = m.data_source, cols = Object.keys(src.data);
    if (m.glyph.type === "Line" && cols.includes("loss") && cols.includes("optimizer")) srcs.push(src);
  }
  if (srcs.length === 0) return false;
  window.__frames = []; window.__arrivals = 0;
  let pending = false;
  const newest = () => {
    let best = -1;
    for (const s of srcs) {
      const st = s.data.step, n = st.length;
      if (n && st[n - 1] > best) best = st[n - 1];
    }
    return best;
  };
  let shown = -1;
  const frame = () => {
    pending = false;
    const step = newest();
    if (step > shown) {
      shown = step;
      window.__frames.push([performance.timeOrigin + performance.now(), step, srcs[0].data.step.length]);
    }
  };
  let inTask = false;  // the sources one message changes fire in one task: count it once
  const changed = () => {
    if (!inTask) { inTask = true; window.__arrivals += 1; setTimeout(() => { inTask = false; }, 0); }
    if (!pending) { pending = true; requestAnimationFrame(frame); }
  };
  for (const s of srcs) { s.streaming.connect(changed); s.change.connect(changed); }
  return srcs.length;
}"""
_TAKE_JS = "() => { const f = window.__frames; window.__frames = []; return [f, window.__arrivals]; }"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- (a) in process --------------------------------------------------------------------------------
def in_process(pump_ms: float, seconds: float, fast: float) -> dict[str, float]:
    ex = Explorer(lanes=LANES, speed=fast)
    doc = Document()
    for cls in (LandscapeView, LossView, GradView):
        doc.add_root(ex.view(cls).figure)  # streams now make document change events, as in a session
    sources = ex.view(LossView).slots.sources
    try:
        ex.session.play()
        time.sleep(0.5)  # warm-up: first-step costs
        ex.pump()
        rows0 = sum(len(s.data["step"]) for s in sources)
        tick0 = ex.worker.tick
        records = delivering = pumps = 0
        pump_times: list[float] = []
        period = pump_ms / 1000
        t0 = time.perf_counter()
        next_at = t0
        while time.perf_counter() - t0 < seconds:
            next_at += period
            p0 = time.perf_counter()
            n = ex.pump()
            pump_times.append(time.perf_counter() - p0)
            pumps += 1
            records += n
            delivering += n > 0
            time.sleep(max(0.0, next_at - time.perf_counter()))
        elapsed = time.perf_counter() - t0
        rows = sum(len(s.data["step"]) for s in sources) - rows0
        steps = ex.worker.tick - tick0
    finally:
        ex.close()
    return dict(elapsed=elapsed, pumps=pumps, hz=delivering / elapsed, records_per_s=records / elapsed,
                rows_per_s=rows / elapsed, steps_per_s=steps / elapsed,
                pump_ms_median=1000 * statistics.median(pump_times), pump_ms_p95=1000 * pct(pump_times, 0.95),
                pump_ms_max=1000 * max(pump_times))


# -- (b) in Chromium -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(cdp: Any) -> dict[str, float]:
    return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}


def _heap_mb(cdp: Any) -> float:
    """The page's JS heap in use after a full garbage collection (Chrome DevTools Protocol)."""
    cdp.send("HeapProfiler.collectGarbage")
    return _metrics(cdp)["JSHeapUsedSize"] / MB


def in_browser(pump_ms: float, speed: float, minutes: float, warmup: float,
               heap_every: float, served_app: bool = False) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    explorer_module.PUMP_MS = pump_ms  # read by Explorer._begin_streaming
    stamps: dict[int, float] = {}  # race step -> time.time() when its records were ready to drain
    lock = threading.Lock()
    explorers: list[Explorer] = []

    def stamp(ex: Explorer) -> None:
        explorers.append(ex)
        run = ex.worker.run
        step = run.step

        def stamped_step() -> Any:
            out = step()
            now = time.time()
            with lock:
                for r in out:
                    stamps.setdefault(r.tick - ex.session.origin, now)
            return out

        run.step = stamped_step  # the worker looks it up on every step

    def page() -> Any:
        ex = Explorer(lanes=LANES, speed=speed)
        stamp(ex)
        ex.session.play()
        return ex

    query = ""
    if served_app:  # app/main.py's page: its template, the link's race, the load module's pump
        start = Explorer.start_streaming

        def start_streaming(self: Explorer) -> None:  # main.py calls it once the link's race is loaded
            if self not in explorers:
                stamp(self)
            start(self)
        Explorer.start_streaming = start_streaming  # type: ignore[method-assign]
        app: Any = str(Path(explorer_module.__file__).with_name("main.py"))
        query = "?" + urlencode({"problem": "rosenbrock", "lanes": json.dumps([[n, {}] for n, _ in LANES]),
                                 "speed": int(speed)})
    else:
        pn.extension("katex", "tabulator", notifications=True)
        app = page
    port = _free_port()
    server = pn.serve({"app": app}, port=port, address="127.0.0.1", websocket_origin=[f"127.0.0.1:{port}"],
                      threaded=True, show=False, start=True)
    frames: list[list[float]] = []
    heap: list[tuple[float, float]] = []  # (seconds into the race, MB)
    try:
        time.sleep(1.0)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                cdp = tab.context.new_cdp_session(tab)
                cdp.send("Performance.enable")
                tab.goto(f"http://127.0.0.1:{port}/app{query}")
                tab.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
                tab.wait_for_function(_LISTEN_JS, timeout=60_000)  # retried until the curve sources exist
                time.sleep(warmup)
                warm, _ = tab.evaluate(_TAKE_JS)
                heap.append((0.0, _heap_mb(cdp)))
                tab.evaluate(_TAKE_JS)  # frames during the collection are not the race's
                _, arrivals0 = tab.evaluate(_TAKE_JS)
                busy0 = _metrics(cdp)
                t0 = next_heap = time.time()
                next_heap += heap_every
                while (now := time.time()) - t0 < 60 * minutes:
                    time.sleep(min(1.0, max(0.0, t0 + 60 * minutes - now)))
                    got, arrivals = tab.evaluate(_TAKE_JS)
                    frames += got
                    if time.time() >= next_heap and time.time() - t0 < 60 * minutes - heap_every / 2:
                        heap.append((time.time() - t0, _heap_mb(cdp)))
                        next_heap += heap_every
                elapsed = time.time() - t0
                busy = {k: (v - busy0[k]) / elapsed for k, v in _metrics(cdp).items()
                        if k.endswith("Duration") and k in busy0}
                heap.append((elapsed, _heap_mb(cdp)))
                rows = tab.evaluate("() => Bokeh.documents[0]._all_models.size")
                with lock:
                    known = dict(stamps)
            finally:
                for ex in explorers:  # workers stopped before the interpreter exits (torch aborts otherwise)
                    ex.close()
                browser.close()
    finally:
        server.stop()
    lat = [t_ms - 1000 * known[step] for t_ms, step, _ in frames if step in known]
    warm_lat = [t_ms - 1000 * known[step] for t_ms, step, _ in warm if step in known]
    steps_shown = frames[-1][1] - frames[0][1] if len(frames) > 1 else 0
    return dict(updates=len(frames), arrivals=arrivals - arrivals0, elapsed=elapsed, hz=len(frames) / elapsed,
                latency=lat, warm_latency=warm_lat, steps_per_s=steps_shown / elapsed, heap=heap,
                rows_end=frames[-1][2] if frames else 0, models=rows, busy=busy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pump-ms", type=int, default=explorer_module.PUMP_MS,
                    help=f"pump period (the app's: {explorer_module.PUMP_MS} ms)")
    ap.add_argument("--seconds", type=float, default=5.0, help="(a): how long to pump")
    ap.add_argument("--fast", type=float, default=1000.0, help="(a): worker steps/s (the speed slider's max)")
    ap.add_argument("--speed", type=float, default=60.0, help="(b): steps/s (the app's default)")
    ap.add_argument("--minutes", type=float, default=1.0, help="(b): how long the race runs (the goal: 10)")
    ap.add_argument("--warmup", type=float, default=5.0,
                    help="(b): seconds after the page has loaded that are reported apart")
    ap.add_argument("--heap-every", type=float, default=60.0, help="(b): seconds between heap samples")
    ap.add_argument("--no-browser", action="store_true", help="skip (b)")
    ap.add_argument("--served-app", action="store_true",
                    help="(b): serve app/main.py (template, share link, load throttle), not a bare Explorer")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the served app
    print(f"{len(LANES)} lanes: {', '.join(n for n, _ in LANES)}; rosenbrock, 1 start; pump every "
          f"{args.pump_ms:g} ms (ceiling {1000 / args.pump_ms:.1f} Hz); {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")

    a = in_process(args.pump_ms, args.seconds, args.fast)
    print(f"(a) in process, worker at {args.fast:g} steps/s, {a['elapsed']:.1f} s, {a['pumps']} pumps:")
    print(f"    steps {a['steps_per_s']:,.0f}/s  records {a['records_per_s']:,.0f}/s  "
          f"curve rows {a['rows_per_s']:,.0f}/s  updates {a['hz']:.1f} Hz")
    print(f"    one pump: median {a['pump_ms_median']:.1f} ms  p95 {a['pump_ms_p95']:.1f} ms  "
          f"max {a['pump_ms_max']:.1f} ms")
    if args.no_browser:
        print(f"stream_hz={a['hz']:.1f} latency_ms=nan heap_growth_mb=nan")
        return
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium), or pass --no-browser")
    b = in_browser(args.pump_ms, args.speed, args.minutes, args.warmup, args.heap_every, args.served_app)
    lat = b["latency"]
    if len(lat) < 20:
        raise SystemExit(f"(b) only {len(lat)} timed screen updates in {b['elapsed']:.0f} s")
    latency_ms = statistics.median(lat)
    warm = b["warm_latency"]
    print(f"(b) Chromium, asked {args.speed:g} steps/s, shown {b['steps_per_s']:.1f}/s; "
          f"{b['elapsed']:.0f} s: "
          f"{b['updates']} screen updates ({b['hz']:.1f} Hz) from {b['arrivals']} messages "
          f"({b['arrivals'] / b['elapsed']:.1f}/s); "
          f"first source holds {b['rows_end']} rows, {b['models']} models")
    if warm:
        print(f"    first {args.warmup:g} s after the page loaded: {len(warm)} updates, "
              f"step -> screen median {statistics.median(warm):.0f} ms  max {max(warm):.0f} ms")
    print(f"    then, step -> screen: median {latency_ms:.0f} ms  p10 {pct(lat, 0.1):.0f}  "
          f"p90 {pct(lat, 0.9):.0f}  max {max(lat):.0f} ms")
    busy = b["busy"]
    print("    page main thread, share of the race's wall time: " + "  ".join(
        f"{k.removesuffix('Duration')} {v:.0%}" for k, v in busy.items() if v >= 0.005))
    heap = b["heap"]
    print("    JS heap after GC: " + "  ".join(f"{t:.0f} s {mb:.1f} MB" for t, mb in heap))
    growth = heap[-1][1] - heap[0][1]
    print(f"stream_hz={b['hz']:.1f} latency_ms={latency_ms:.0f} heap_growth_mb={growth:.1f}")


if __name__ == "__main__":
    main()
