"""Every control shows its effect within 300 ms (the product brief): how long each takes with an
8-lane race streaming, in the served app, in Chromium.

A ``panel serve app`` subprocess of ``--app-root`` (and, with ``--baseline-root``, a second one of
another checkout, e.g. main's: the two are measured in alternating rounds on the same machine, so that
the load both see is alike). Each round opens one page on the 8-lane Rosenbrock race at ``--speed``
steps/s (the default), waits until it has run ``--settle`` seconds, then drives each control as a
user would and times it from the input to the page holding the effect (a condition on the page's
DOM or Bokeh models, checked at every animation frame, i.e. when the page could paint it):

- run / pause: the ▶ Run / Pause button -> the step counter says "running" / "paused";
- step: Step (paused) -> the counter shows a later step;
- slider: the Adam card's lr slider, one key press -> a new change marker on the loss curve, or
  new text on the last one (changes of one value within 90 ticks share a marker);
- switch: the Adam card's "switch this lane to" -> Lion (then back) -> the legend says so;
- open: a closed lane card's header (Adagrad's) -> its widgets are on the page (built when first
  opened);
- remove / add: Adagrad's "✕ remove" (its card open, its widgets in) -> gone from the legend; "add
  an optimizer" -> back;
- reset: Reset -> the counter shows an earlier step;
- preset: a classroom preset -> its title on the page (the race follows on the next tick).

Clicks are mouse events at the button's centre (its box read before the clock starts): Playwright's
own ``click`` first waits for the element to be stable over animation frames, which on a busy page
adds its own delay. Each figure is the median over ``--rounds`` rounds of the control's tries.

    python benchmarks/controls.py [--rounds 3] [--baseline-root /work/main] [--speed 60] [--trace]

``--trace`` prints, per input, where its time went as the page saw it: the input waiting for the
page's main thread, the event sent, the server's reply (and the frames of streamed updates that came
before it), and applying and painting the reply.

Last line: ``controls_median_s=<median over controls> controls_max_s=<slowest control's median>
over_300ms=<controls whose median is over 0.3 s>`` (this checkout's; the baseline's beside it).
Needs /usr/bin/chromium (Debian's) and the ``playwright`` package (never ``playwright install``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.load import Server, wait_up  # noqa: E402  (the served app, as the load benchmark serves it)
from tests.browser.test_app_browser import CHROMIUM, CHROMIUM_ARGS, EIGHT, Session, link  # noqa: E402

SHOWN = 0.3
"""The brief's bound: every control shows its effect within 300 ms."""
TIMEOUT_S = 30.0

# JS predicates (argument: what to compare with), polled at every animation frame by the page
_COUNTER = """(() => {  // the step counter's text (a Markdown pane: its model's HTML)
  for (const m of Bokeh.documents[0]._all_models.values())
    if (Array.isArray(m.css_classes) && m.css_classes.includes("step-counter")) return m.text ?? "";
  return "";
})()"""
_STEP = f"(() => {{ const m = /step (\\d+)/.exec({_COUNTER}); return m ? +m[1] : -1; }})()"
_SAYS = f"(text) => ({_COUNTER}).includes(text)"
_AFTER = f"(n) => {_STEP} > n"
_BEFORE = f"(n) => {_STEP} >= 0 && {_STEP} < n"
_MARKS = """() => {  // the change markers' texts (of the curve with most of them), as one string
  let out = [];
  for (const m of Bokeh.documents[0]._all_models.values())
    if (m.data != null && "label" in m.data && "wall_time" in m.data && m.data.label.length >= out.length)
      out = Array.from(m.data.label);
  return out.join("\\n");
}"""
_NEW_MARKS = "(before) => (" + _MARKS + ")() !== before"
_LEGEND = """() => {
  for (const m of Bokeh.documents[0]._all_models.values()) {
    const t = m.text;
    if (typeof t === "string" && t.includes("white-space:nowrap;margin-right:10px"))
      return new DOMParser().parseFromString(t, "text/html").documentElement.textContent;
  }
  return "";
}"""
_SCHEDULES = """() => {  // lr schedule selects on the page: one per lane card whose widgets are built
  let n = 0;
  for (const m of Bokeh.documents[0]._all_models.values()) if (m.title === "lr schedule") n++;
  return n;
}"""
_MORE_SCHEDULES = "(n) => (" + _SCHEDULES + ")() > n"
_IN_LEGEND = "(label) => (" + _LEGEND + ")().includes(label)"
_NOT_IN_LEGEND = "(label) => !(" + _LEGEND + ")().includes(label)"
_TITLE = """(title) => {  // the preset's claim (an Alert pane: its model's HTML)
  for (const m of Bokeh.documents[0]._all_models.values())
    if (Array.isArray(m.css_classes) && m.css_classes.includes("preset-claim") && m.visible
        && (m.text ?? "").includes(title)) return true;
  return false;
}"""


# --trace: the page notes its inputs (when created, when its listener ran), every websocket frame sent
# and received (when the page's main thread took it, its size), and when the effect showed
_TRACE_JS = """() => {
  window.__t = {inputs: [], ws: [], shown: null};
  const note = (e) => window.__t.inputs.push([e.type, e.timeStamp, performance.now()]);
  for (const type of ["pointerdown", "keydown", "change"]) document.addEventListener(type, note, true);
  const size = (d) => typeof d === "string" ? d.length : (d.byteLength ?? d.size ?? 0);
  const Orig = window.WebSocket;
  window.WebSocket = class extends Orig {
    constructor(...a) {
      super(...a);
      this.addEventListener("message", (e) => window.__t.ws.push(["recv", performance.now(), size(e.data)]));
    }
    send(d) { window.__t.ws.push(["send", performance.now(), size(d)]); return super.send(d); }
  };
}"""
_TAKE_TRACE_JS = "() => { const t = window.__t; window.__t = {inputs: [], ws: [], shown: null}; return t; }"
_SHOWN_JS = """(f) => (arg) => {
  if (!f(arg)) return false;
  if (window.__t) window.__t.shown = performance.now();
  return true;
}"""


def breakdown(t: dict) -> str:
    """Where a control's time went, from the page's notes: input -> its listener ran (the main thread
    was busy), -> the event sent, -> the last frame received before the effect showed (the server and
    the frames queued before it: count, kB), -> shown (applying and painting)."""
    if t["shown"] is None or not (t["inputs"] or t.get("start")):
        return "no trace"
    # a select's change happens in its shadow root (never seen by the page): from the act's start
    created, ran = (t["inputs"][0][1], t["inputs"][0][2]) if t["inputs"] else (t["start"], t["start"])
    sent = next((w[1] for w in t["ws"] if w[0] == "send" and w[1] >= ran), None)
    if sent is None:
        return f"input delay {ran - created:.0f} ms, nothing sent"
    recv = [w for w in t["ws"] if w[0] == "recv" and sent <= w[1] <= t["shown"]]
    last = recv[-1][1] if recv else sent
    return (f"input {ran - created:.0f} ms, to send {sent - ran:.0f}, to reply {last - sent:.0f} "
            f"({len(recv)} frames {sum(w[2] for w in recv) / 1e3:.0f} kB), to shown {t['shown'] - last:.0f}")


class Page:
    """One browser page on the race, with the controls a user touches."""

    def __init__(self, browser: Any, url: str, trace: bool = False) -> None:
        self.trace = trace
        self.notes: list[tuple[str, str]] = []
        if trace:  # before the page's scripts: a context-wide init script
            orig = browser.new_context

            def new_context(**kw: Any) -> Any:
                ctx = orig(**kw)
                ctx.add_init_script(f"({_TRACE_JS})()")
                return ctx
            browser.new_context = new_context
            try:
                self.s = Session(browser, url)
            finally:
                del browser.new_context
        else:
            self.s = Session(browser, url)
        self.page = self.s.page

    def step(self) -> int:
        return self.s.step()

    def timed(self, act: Callable[[], Any], cond: str, arg: Any) -> float:
        """Seconds from ``act`` (the input) to the page holding ``cond(arg)`` at an animation frame."""
        if self.trace:
            self.page.evaluate(_TAKE_TRACE_JS)
            self.page.evaluate("() => { window.__t.start = performance.now(); }")
            cond = f"({_SHOWN_JS})({cond})"
        t0 = time.perf_counter()
        self._t0 = time.time()
        self.waiting = f"{cond[:60]}... ({arg!r})"
        act()
        self.page.wait_for_function(cond, arg=arg, polling="raf", timeout=TIMEOUT_S * 1000)
        took = time.perf_counter() - t0
        if self.trace:
            self.notes.append((f"{took:.2f} s", breakdown(self.page.evaluate(_TAKE_TRACE_JS))))
        return took

    def wait(self, cond: str, arg: Any = None) -> None:
        self.waiting = f"{cond[:60]}... ({arg!r})"
        self.page.wait_for_function(cond, arg=arg, polling=100, timeout=TIMEOUT_S * 1000)

    def clicker(self, locator: Any) -> Callable[[], None]:
        """A click at the element's centre, its box read now (before the clock starts)."""
        locator.scroll_into_view_if_needed()
        box = locator.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        return lambda: self.page.mouse.click(x, y)

    def button(self, label: str) -> Callable[[], None]:
        return self.clicker(self.page.get_by_role("button", name=label, exact=True))


def one_round(browser: Any, base: str, speed: float, settle: float,
              trace: bool = False) -> dict[str, list[float]]:
    """One page, every control once or a few times: seconds each took."""
    p = Page(browser, link(f"{base}/app", EIGHT, speed=int(speed)), trace)
    took: dict[str, list[float]] = {k: [] for k in ("pause", "run", "step", "slider", "switch", "open",
                                                   "remove", "add", "reset", "preset")}
    try:
        p.wait(_AFTER, 20)
        time.sleep(settle)
        pause, run = p.button("Pause"), p.button("▶ Run")
        for _ in range(2):
            took["pause"].append(p.timed(pause, _SAYS, "paused"))
            time.sleep(0.5)
            took["run"].append(p.timed(run, _SAYS, "running"))
            time.sleep(1.0)
        took["pause"].append(p.timed(pause, _SAYS, "paused"))
        step = p.button("Step")
        for _ in range(3):
            time.sleep(0.3)
            took["step"].append(p.timed(step, _AFTER, p.step()))
        run()
        p.wait(_SAYS, "running")
        time.sleep(1.0)
        card = p.s.open_card("Adam")
        handle = card.locator(".noUi-handle").first
        handle.scroll_into_view_if_needed()
        handle.focus()
        for key in ("ArrowRight", "ArrowLeft", "ArrowRight"):
            before = p.page.evaluate(_MARKS)
            took["slider"].append(p.timed(lambda key=key: p.page.keyboard.press(key), _NEW_MARKS, before))
            time.sleep(0.5)
        select = card.locator("select:has(option[value='lion'])").first
        took["switch"].append(p.timed(lambda: select.select_option("lion"), _IN_LEGEND, "Lion"))
        time.sleep(1.0)
        # the card is Lion's now
        select = p.s.open_card("Lion").locator("select:has(option[value='adam'])").first
        took["switch"].append(p.timed(lambda: select.select_option("adam"), _IN_LEGEND, "Adam"))
        time.sleep(1.0)
        card = p.page.locator(".card").filter(has=p.page.get_by_text("Adagrad", exact=True)).filter(
            has_text="switch this lane to").first
        n = p.page.evaluate(_SCHEDULES)
        took["open"].append(p.timed(p.clicker(card.locator(".card-header")), _MORE_SCHEDULES, n))
        card.locator(".noUi-handle").first.wait_for(state="visible", timeout=TIMEOUT_S * 1000)
        time.sleep(1.0)  # the card's widgets are in: the remove button stays where it is
        remove = p.clicker(card.get_by_role("button", name="✕ remove"))
        took["remove"].append(p.timed(remove, _NOT_IN_LEGEND, "Adagrad"))
        time.sleep(1.0)
        add = p.page.locator("select").filter(has=p.page.locator("option", has_text="choose…")).first
        took["add"].append(p.timed(lambda: add.select_option("adagrad"), _IN_LEGEND, "Adagrad"))
        reset = p.button("Reset")
        for _ in range(2):
            time.sleep(2.0)
            took["reset"].append(p.timed(reset, _BEFORE, p.step()))
        presets = p.page.locator("select").filter(has=p.page.locator("option", has_text="choose a preset"))
        for title in ("Ill-conditioned valley", "Adam vs SGD"):
            time.sleep(2.0)
            value = presets.locator("option", has_text=title).get_attribute("value")
            took["preset"].append(p.timed(lambda value=value: presets.select_option(value), _TITLE, title))
        for took_s, note in p.notes:
            print(f"    {took_s}: {note}")
        errors = p.s.unexpected_errors()
        if errors:
            print("    page errors:", errors, flush=True)
    except Exception:
        print(f"    waiting for {getattr(p, 'waiting', '?')}; page errors: {p.s.unexpected_errors()}",
              flush=True)
        raise
    finally:
        p.s.close()
    return took


def summary(took: dict[str, list[float]]) -> tuple[dict[str, float], str]:
    med = {k: statistics.median(v) for k, v in took.items() if v}
    values = list(med.values())
    over = sum(v > SHOWN for v in values)
    return med, (f"controls_median_s={statistics.median(values):.3f} controls_max_s={max(values):.3f} "
                 f"over_300ms={over}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="pages per checkout (each drives every control)")
    ap.add_argument("--speed", type=float, default=60.0, help="the race's steps/s (the app's default)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of racing before the first control")
    ap.add_argument("--app-root", default=str(ROOT), help="the checkout served")
    ap.add_argument("--baseline-root", default="", help="a second checkout, measured in alternate rounds")
    ap.add_argument("--trace", action="store_true", help="print where each control's time went")
    ap.add_argument("--log", default=str(ROOT / "artifacts" / "controls-serve.log"))
    args = ap.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    roots = {"this": Path(args.app_root).resolve()}
    if args.baseline_root:
        roots["baseline"] = Path(args.baseline_root).resolve()
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"8 lanes at {args.speed:g} steps/s; {args.rounds} rounds; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f} at the start", flush=True)
    servers = {name: Server(1, log.with_name(f"{log.stem}-{name}{log.suffix}"), root)
               for name, root in roots.items()}
    took: dict[str, dict[str, list[float]]] = {name: {} for name in servers}
    try:
        for server in servers.values():
            asyncio.run(wait_up(server, 120))
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                for r in range(args.rounds):
                    for name, server in servers.items():
                        try:
                            got = one_round(browser, server.base, args.speed, args.settle, args.trace)
                        except PlaywrightError as exc:  # a click that never landed (a saturated machine)
                            print(f"round {r + 1} {name} (load {os.getloadavg()[0]:.1f}) failed: "
                                  f"{str(exc).splitlines()[0]}", flush=True)
                            continue
                        print(f"round {r + 1} {name} (load {os.getloadavg()[0]:.1f}): " + "  ".join(
                            f"{k} {' '.join(f'{t:.2f}' for t in v)}" for k, v in got.items()), flush=True)
                        for k, v in got.items():
                            took[name].setdefault(k, []).extend(v)
                        time.sleep(3.0)  # the closed page's worker stops, its session ends
            finally:
                browser.close()
    finally:
        for server in servers.values():
            server.stop()
    lines = {}
    for name in [n for n in servers if took[n]]:
        med, lines[name] = summary(took[name])
        print(f"{name} ({roots[name]}), seconds to show, median per control: "
              + "  ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    if "baseline" in lines:
        print("baseline: " + lines["baseline"])
    print(lines.get("this", "controls_median_s=nan controls_max_s=nan over_300ms=nan"))


if __name__ == "__main__":
    main()
