"""Engine -> Bokeh document -> browser: how often the plots update, and how late.

(a) In process: an :class:`app.explorer.Explorer` racing 8 first-order optimizers on Rosenbrock, its
    worker stepping at ``--fast`` steps/s, ``pump()`` called every ``--pump-ms`` (the app's
    cadence is ``app.explorer.PUMP_MS``) for ``--seconds``. Counts records and curve rows moved
    into the ColumnDataSources, the pumps that delivered data per second (the update rate), and
    the time one pump takes. The sources sit in a Bokeh Document, so each ``stream`` builds its
    change event as in a session.
(b) In Chromium: the same race served in this process (``pn.serve``, threaded) at ``--speed``
    steps/s with the pump period patched to ``--pump-ms``; the run's ``step`` is wrapped to note
    ``time.time()`` when each step's records are ready, and the page notes its wall clock
    (``performance.timeOrigin + performance.now()``) each time a curve source receives a
    ``stream``, with the newest step it holds. Latency = browser arrival - server stamp of that
    newest step (one machine, one clock). The race starts when the page reports it has loaded;
    the first ``--warmup`` seconds of updates after that (the page's first paints, fonts, the
    table) are reported apart, then >= ``--updates`` updates of the running page.

Last line: ``stream_hz=<(a)'s updates per second> latency_ms=<(b)'s median after the warm-up>``.

    python benchmarks/stream.py [--pump-ms 50] [--seconds 5] [--speed 60] [--updates 100] [--warmup 3]

Needs /usr/bin/chromium (Debian's) for (b); ``--no-browser`` runs (a) only.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import statistics
import threading
import time
from typing import Any

import panel as pn
import torch
from bokeh.document import Document

import app.explorer as explorer_module
from app.explorer import Explorer
from engine.registry import Oracle, available

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LANES = tuple((name, {}) for name in available(oracle=Oracle.GRADIENTS)[:8])

# JS: note each stream into the first curve source (wall-clock ms, newest step, rows).
_LISTEN_JS = """() => {
  const doc = Bokeh.documents[0];
  let src = null;
  for (const m of doc._all_models.values()) {
    if (m.data != null && typeof m.get_length === "function" && "loss" in m.data && "grad_norm" in m.data) {
      src = m; break;
    }
  }
  if (src === null) return false;
  window.__arrivals = [];
  src.streaming.connect(() => {
    const steps = src.data.step;
    const now = performance.timeOrigin + performance.now();
    window.__arrivals.push([now, steps[steps.length - 1], steps.length]);
  });
  return true;
}"""


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- (a) in process --------------------------------------------------------------------------------
def in_process(pump_ms: float, seconds: float, fast: float) -> dict[str, float]:
    ex = Explorer(lanes=LANES, speed=fast)
    doc = Document()
    for model in (ex.landscape_view.figure, ex.loss_view.figure, ex.grad_view.figure):
        doc.add_root(model)  # streams now make document change events, as in a session
    try:
        ex.play()
        time.sleep(0.5)  # warm-up: first-step costs
        ex.pump()
        rows0 = sum(len(s.data["step"]) for s in ex.streams.curves.values())
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
        rows = sum(len(s.data["step"]) for s in ex.streams.curves.values()) - rows0
        steps = ex.worker.tick - tick0
    finally:
        ex.close()
    return dict(elapsed=elapsed, pumps=pumps, hz=delivering / elapsed, records_per_s=records / elapsed,
                rows_per_s=rows / elapsed, steps_per_s=steps / elapsed,
                pump_ms_mean=1000 * statistics.fmean(pump_times), pump_ms_p95=1000 * pct(pump_times, 0.95),
                pump_ms_max=1000 * max(pump_times))


# -- (b) in Chromium -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_browser(pump_ms: float, speed: float, updates: int, warmup: float, timeout: float) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    explorer_module.PUMP_MS = pump_ms  # read by Explorer.start_streaming
    stamps: dict[int, float] = {}  # step -> time.time() when its records were ready to drain
    lock = threading.Lock()
    explorers: list[Explorer] = []

    def page() -> Any:
        ex = Explorer(lanes=LANES, speed=speed)
        explorers.append(ex)
        run = ex.worker.run
        step = run.step

        def stamped_step() -> Any:
            out = step()
            now = time.time()
            with lock:
                for r in out:
                    stamps.setdefault(r.step, now)
            return out

        run.step = stamped_step  # the worker looks it up on every step
        ex.play()
        return ex

    pn.extension("katex", "tabulator", notifications=True)
    port = _free_port()
    server = pn.serve({"app": page}, port=port, address="127.0.0.1", websocket_origin=[f"127.0.0.1:{port}"],
                      threaded=True, show=False, start=True)
    try:
        time.sleep(1.0)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                tab = browser.new_page(viewport={"width": 1400, "height": 1000})
                tab.goto(f"http://127.0.0.1:{port}/app")
                tab.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
                tab.wait_for_function(_LISTEN_JS, timeout=60_000)  # retried until the curve sources exist
                t_load = time.time()
                time.sleep(warmup)
                n_warm = tab.evaluate("() => window.__arrivals.length")
                t0 = time.time()
                while time.time() - t0 < timeout:
                    time.sleep(0.5)
                    if tab.evaluate("() => window.__arrivals.length") >= n_warm + updates:
                        break
                arrivals = tab.evaluate("() => window.__arrivals")
                elapsed = time.time() - t0
                arrivals, warm = arrivals[n_warm:], arrivals[:n_warm]
                with lock:
                    known = dict(stamps)
            finally:
                for ex in explorers:  # workers stopped before the interpreter exits (torch aborts otherwise)
                    ex.close()
                browser.close()
    finally:
        server.stop()
    recent = [t for t in known.values() if t >= t0]
    lat = [t_ms - 1000 * known[step] for t_ms, step, _ in arrivals if step in known]
    warm_lat = [t_ms - 1000 * known[step] for t_ms, step, _ in warm if step in known]
    batch = [b - a for (_, _, a), (_, _, b) in itertools.pairwise(arrivals)]
    return dict(updates=len(arrivals), matched=len(lat), elapsed=elapsed, hz=len(arrivals) / elapsed,
                warm_latency=warm_lat, warm_seconds=t0 - t_load,
                latency=lat, rows_per_update=statistics.fmean(batch) if batch else float("nan"),
                steps_per_s=len(recent) / elapsed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pump-ms", type=int, default=explorer_module.PUMP_MS,
                    help=f"pump period (the app's: {explorer_module.PUMP_MS} ms)")
    ap.add_argument("--seconds", type=float, default=5.0, help="(a): how long to pump")
    ap.add_argument("--fast", type=float, default=1000.0, help="(a): worker steps/s (the speed slider's max)")
    ap.add_argument("--speed", type=float, default=60.0, help="(b): steps/s (the app's default)")
    ap.add_argument("--updates", type=int, default=100, help="(b): browser updates to collect (>= 50)")
    ap.add_argument("--warmup", type=float, default=3.0,
                    help="(b): seconds after the page has loaded that are reported apart")
    ap.add_argument("--timeout", type=float, default=60.0, help="(b): give up collecting after this")
    ap.add_argument("--no-browser", action="store_true", help="skip (b)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as the served app
    print(f"{len(LANES)} lanes: {', '.join(n for n, _ in LANES)}; rosenbrock, 1 start; pump every "
          f"{args.pump_ms:g} ms (ceiling {1000 / args.pump_ms:.1f} Hz); {os.cpu_count()} CPUs")

    a = in_process(args.pump_ms, args.seconds, args.fast)
    print(f"(a) in process, worker at {args.fast:g} steps/s, {a['elapsed']:.1f} s, {a['pumps']} pumps:")
    print(f"    steps {a['steps_per_s']:,.0f}/s  records {a['records_per_s']:,.0f}/s  "
          f"curve rows {a['rows_per_s']:,.0f}/s  updates {a['hz']:.1f} Hz")
    print(f"    one pump: mean {a['pump_ms_mean']:.1f} ms  p95 {a['pump_ms_p95']:.1f} ms  "
          f"max {a['pump_ms_max']:.1f} ms")

    latency_ms = float("nan")
    if not args.no_browser:
        if not os.access(CHROMIUM, os.X_OK):
            raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium), or pass --no-browser")
        b = in_browser(args.pump_ms, args.speed, args.updates, args.warmup, args.timeout)
        lat = b["latency"]
        if len(lat) < 50:
            raise SystemExit(f"(b) only {len(lat)} timed updates reached the browser in {b['elapsed']:.0f} s")
        latency_ms = statistics.median(lat)
        print(f"(b) Chromium, asked {args.speed:g} steps/s, ran {b['steps_per_s']:.0f}; "
              f"{b['updates']} updates in {b['elapsed']:.1f} s ({b['hz']:.1f} Hz, "
              f"{b['rows_per_update']:.1f} rows each):")
        warm = b["warm_latency"]
        if warm:
            print(f"    first {b['warm_seconds']:.1f} s after the page loaded: {len(warm)} updates, "
                  f"step -> browser median {statistics.median(warm):.0f} ms  max {max(warm):.0f} ms")
        print(f"    then, step -> browser source: median {latency_ms:.0f} ms  p10 {pct(lat, 0.1):.0f}  "
              f"p90 {pct(lat, 0.9):.0f}  max {max(lat):.0f} ms")
    print(f"stream_hz={a['hz']:.1f} latency_ms={latency_ms:.0f}")


if __name__ == "__main__":
    main()
