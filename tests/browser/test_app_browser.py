"""The served app in headless Chromium: what a user sees and does, end to end.

A module-scoped ``panel serve app`` subprocess on a free loopback port, driven by Debian's
chromium through Playwright (never ``playwright install``). The server is another process, so
every check reads the page: the step counter (``.step-counter``) and the Bokeh document's
``ColumnDataSource`` objects through ``window.Bokeh``. Screenshots of key moments go to
``$OPTISCOPE_ARTIFACTS`` (default ``artifacts/``).

Load: at the app's default 60 steps/s a page keeps up (one message per pump, ~110 ms from step
to page: ``benchmarks/stream.py``), but its software-canvas repaints still take much of a core,
and on a 2-core CI machine shared with the server, its workers and other tests a click can take
seconds to land. After the first test has watched the default race, the tests therefore slow
each page's race to ``TEST_SPEED`` steps/s (the speed slider's model, set from the page), run one
race at a time, restart races rather than let a page accumulate minutes of points, and give the
server ``REACT`` seconds to react to an action.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("OPTISCOPE_ARTIFACTS") or ROOT / "artifacts")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CUSTOM = "custom: type f(x, y)"  # app.explorer.CUSTOM (not imported: the app is another process)
SESSION_END = 7.0  # seconds from closing a page to its session's end (the server's options: 6 s + 1 s)
REACT = 20.0
TEST_SPEED = 10
"""Seconds the server gets to react to a click or a key. Typically well under one; generous because
CI machines have two cores shared by the server, its workers and Chromium."""

BENIGN_CONSOLE_ERRORS: tuple[tuple[str, str], ...] = ()
"""(substring, reason) of console errors known to be harmless. None so far: the page logs no
error at all (Choices.js prints an ``allowHTML`` deprecation *warning*, which is not collected)."""

# JS run in the page: the Bokeh document's sources, told apart by their columns.
_SLOW_JS = """(speed) => {
  for (const m of Bokeh.documents[0]._all_models.values()) {
    if (m.title === "speed (steps/s)" && "value" in m) { m.value = speed; return true; }
  }
  return false;
}"""
_SOURCES_JS = """() => {
  const doc = Bokeh.documents[0];
  const curves = [], spans = [], events = [], segments = [];
  for (const m of doc._all_models.values()) {
    if (m.data === undefined || typeof m.get_length !== "function") continue;
    const cols = Object.keys(m.data);
    if (cols.includes("loss") && cols.includes("grad_norm")) {
      const n = m.get_length() ?? 0;
      curves.push(n);
      spans.push(n ? [m.data.step[0], m.data.step[n - 1]] : null);
    }
    else if (cols.includes("label") && cols.includes("wall_time")) events.push(...Array.from(m.data.label));
    else if (cols.includes("x0") && cols.includes("optimizer")) segments.push(m.get_length() ?? 0);
  }
  return {curves, spans, events, segments};
}"""


# -- fixtures ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The ``panel serve app`` subprocess: its URL and pid."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid

    def python_threads(self) -> set[int]:
        """Ids of the server's Python threads (Linux). They carry the process's name; native
        helper threads (jemalloc's, ...) have their own. Each session's run worker is one."""
        name = Path(f"/proc/{self.pid}/comm").read_text()
        tids = set()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                if Path(f"/proc/{self.pid}/task/{tid}/comm").read_text() == name:
                    tids.add(int(tid))
            except FileNotFoundError:  # ended while listing
                pass
        return tids


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """``panel serve app`` on a free loopback port, until the module's tests are done."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log_path = ARTIFACTS / "panel-serve.log"
    cmd = [sys.executable, "-m", "panel", "serve", "app", "--port", str(port), "--address", "127.0.0.1",
           f"--allow-websocket-origin=127.0.0.1:{port}",
           # A closed page's session, and with it its run worker, goes within ~7 s instead of ~32 s
           # (each live session costs the server ~1/4 of a core). Not much shorter: the lifetime
           # also covers the gap between serving the HTML and the page's websocket connecting
           # (~2.5 s here), and a session discarded in that gap is re-created on connect without
           # its HTTP request -- whose stylesheets then point at cdn.holoviz.org (unreachable offline).
           "--check-unused-sessions", "1000", "--unused-session-lifetime", "6000"]
    url = f"http://127.0.0.1:{port}/app"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"panel serve exited with {proc.returncode}:\n{log_path.read_text()}")
                try:
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"no HTTP 200 from {url} within 60 s:\n{log_path.read_text()}")
                time.sleep(0.25)
            yield Server(url, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the browser tests drive Debian's chromium "
                    "(sudo apt-get install chromium; ./dev test installs it when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Session:
    """One browser page on the app (its own Bokeh session, hence its own Explorer and worker)."""

    def __init__(self, browser: object, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1500})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"requestfailed: {r.url} ({r.failure})"))
        self.page.goto(url)
        self.page.locator(".step-counter p").wait_for(timeout=45_000)
        self.page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0",
                                    timeout=REACT * 1000)

    def counter(self) -> str:
        return self.page.locator(".step-counter p").inner_text()

    def step(self) -> int:
        m = re.search(r"step (\d+)", self.counter())
        assert m, f"unreadable step counter: {self.counter()!r}"
        return int(m.group(1))

    def sources(self) -> dict:
        return self.page.evaluate(_SOURCES_JS)

    def click(self, label: str) -> None:
        """Click a button (no navigation to wait for: Playwright's post-click check needs the
        renderer's main thread, which a busy page may not give it for many seconds)."""
        self.page.get_by_role("button", name=label, exact=True).click(no_wait_after=True)

    def slow_down(self, speed: int = TEST_SPEED) -> None:
        """Set the race's speed as the speed slider would (its model, from the page)."""
        label = self.page.get_by_text(re.compile(r"^speed \(steps/s\): "))
        if label.inner_text() != f"speed (steps/s): {speed}":
            assert self.page.evaluate(_SLOW_JS, speed), "no speed slider on the page"
            wait_until(lambda: label.inner_text() == f"speed (steps/s): {speed}", REACT, "the new speed")

    def screenshot(self, name: str) -> None:
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def unexpected_errors(self) -> list[str]:
        """The page's errors so far, less the known benign ones, each once, in order of first
        occurrence, with its count when repeated."""
        errors = [e for e in self.errors if not any(s in e for s, _ in BENIGN_CONSOLE_ERRORS)]
        return [f"{e} (x{errors.count(e)})" if errors.count(e) > 1 else e for e in dict.fromkeys(errors)]

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def page(browser: object, server: Server) -> Iterator[Session]:
    """The page most tests share, in file order (a page load costs ~4 s): each test works from
    whatever state the previous one left, and leaves the race running or paused, never broken."""
    s = Session(browser, server.url)
    yield s
    s.close()


def wait_until(cond: Callable[[], bool], timeout: float = REACT, what: str = "condition",
               state: Callable[[], object] | None = None) -> None:
    """Poll ``cond`` every 0.1 s; on timeout, fail saying what was awaited and ``state()``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            now = f"; now: {state()!r}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{now}")
        time.sleep(0.1)


def restart(s: Session) -> None:
    """Reset: a fresh run of the same race (running if it was). Each test that needs a running race
    starts one: a page's rendering cost grows with the points it holds, and on a 2-core machine
    a long-lived page falls behind the stream (see the module docstring)."""
    s.slow_down()
    before = s.step()
    s.click("Reset")
    wait_until(lambda: s.step() < before, REACT, "the reset", s.counter)


def frozen(s: Session) -> tuple[int, int]:
    """The step counter read twice, 1 s apart, once the page says paused."""
    wait_until(lambda: "paused" in s.counter(), REACT, "the counter to say paused")
    time.sleep(1.0)  # a step already under way when Pause arrived reaches the counter at the next pump
    first = s.step()
    time.sleep(1.0)
    return first, s.step()


# -- tests -------------------------------------------------------------------------------------
def test_page_loads_and_streams_without_console_errors(page: Session) -> None:
    page.screenshot("01-loaded")
    assert "running" in page.counter()  # the page autostarts a race
    src = page.sources()
    assert len(src["curves"]) == 3 and len(src["segments"]) == 1  # SGD, momentum, Adam; one path source
    time.sleep(3)  # a few seconds of streaming: errors in stream handling would surface here
    page.screenshot("02-running")
    assert page.unexpected_errors() == []
    page.slow_down()  # for the tests after this one (see the module docstring)


def test_starting_a_race_grows_the_trajectory_data(page: Session) -> None:
    page.slow_down()
    page.click("Pause")
    wait_until(lambda: "paused" in page.counter(), REACT, "paused")
    page.click("Reset")  # a fresh run, still paused: the plots empty
    wait_until(lambda: page.step() == 0 and max(page.sources()["curves"]) == 0, REACT, "an empty run",
               page.sources)
    page.click("▶ Run")
    wait_until(lambda: min(page.sources()["curves"]) > 0, REACT, "the first records", page.sources)
    first, step0 = page.sources(), page.step()
    time.sleep(1.5)
    wait_until(lambda: all(b > a for a, b in zip(first["curves"], page.sources()["curves"], strict=True))
               and page.step() > step0 + 10, REACT, "every lane's curve and the counter to grow",
               lambda: (first, page.sources(), step0, page.step()))
    assert page.sources()["segments"][0] > 0  # Adam's first steps on Rosenbrock move visibly
    assert page.unexpected_errors() == []


def test_slider_change_mid_run_reaches_the_run(page: Session) -> None:
    """Keyboard on the first card's lr slider (a log-grid DiscreteSlider). Each key press ends a
    "drag": noUiSlider fires ``change``, Bokeh sets ``value_throttled``; the server validates the
    value, queues it to the run worker and marks the event on the curves. That marker (a row of
    the events source, labelled by the server right after queueing) is the page-visible proof
    that the change reached the run. Panel coalesces property changes that arrive while the
    server is busy (the latest value wins), so quick presses may mark fewer intermediate values;
    the last marker is always the final value."""
    restart(page)
    assert "running" in page.counter()
    assert page.sources()["events"] == []
    card = page.page.locator(".card").filter(has_text="switch this lane to").first  # SGD's card
    label = card.get_by_text(re.compile(r"^lr: "))
    assert label.inner_text() == "lr: 0.001"  # DEFAULT_RACE: SGD at 1e-3
    handle = card.locator(".noUi-handle").first
    handle.focus()
    for _ in range(3):  # the log grid: 0.001 -> 0.0015 -> 0.002 -> 0.003
        handle.press("ArrowRight", no_wait_after=True)
    wait_until(lambda: page.sources()["events"][-1:] == ["SGD: lr = 0.003"], REACT, "the final event marker",
               lambda: (page.sources()["events"], label.inner_text(), handle.get_attribute("aria-valuenow")))
    marks = page.sources()["events"]
    assert marks == [m for m in ("SGD: lr = 0.0015", "SGD: lr = 0.002", "SGD: lr = 0.003") if m in marks]
    wait_until(lambda: label.inner_text() == "lr: 0.003", REACT, "the slider label")
    step = page.step()
    wait_until(lambda: page.step() > step + 10, REACT, "the race to go on")
    assert "running" in page.counter()
    assert page.unexpected_errors() == []


def test_pause_freezes_the_counter_and_run_resumes_it(page: Session) -> None:
    restart(page)
    wait_until(lambda: "running" in page.counter() and page.step() > 5, REACT, "a running race")
    page.click("Pause")
    first, second = frozen(page)
    assert first == second, "the step counter moved while paused"
    src = page.sources()
    time.sleep(0.5)
    assert page.sources()["curves"] == src["curves"]
    # every step reached the browser: each curve holds steps 0..last, one row each
    assert all(span is not None and n == span[1] - span[0] + 1 and span[0] == 0
               for n, span in zip(src["curves"], src["spans"], strict=True)), \
        f"curve rows lost on the way to the browser: rows {src['curves']}, first/last steps {src['spans']}"
    page.click("▶ Run")
    wait_until(lambda: "running" in page.counter() and page.step() > first + 10, REACT, "the run to resume")
    assert page.unexpected_errors() == []


def test_a_bad_function_shows_its_error_and_the_race_goes_on(page: Session) -> None:
    page.slow_down()
    alert = page.page.locator(".alert-danger")
    assert not alert.is_visible()
    # the problem select, found by its custom entry (its label and grouping are the app's to change)
    page.page.locator(f"select:has(option[value='{CUSTOM}'])").select_option(CUSTOM)
    field = page.page.get_by_label(re.compile(r"^f\(x, y\)"))
    field.wait_for(state="visible", timeout=REACT * 1000)
    field.fill("sin(x")
    field.press("Enter", no_wait_after=True)
    alert.get_by_text(re.compile(r"column \d+")).wait_for(state="visible", timeout=REACT * 1000)
    step = page.step()
    wait_until(lambda: page.step() > step + 10, REACT, "the race to go on under the error")
    assert "running" in page.counter()
    page.screenshot("03-error-shown")
    assert page.unexpected_errors() == []


def test_two_pages_are_independent_and_closing_one_ends_its_worker(
        page: Session, browser: object, server: Server) -> None:
    """One page paused while a second page's race runs: neither session follows the other.
    (One race runs at a time: two would oversubscribe a 2-core machine.)"""
    page.slow_down()
    page.click("Pause")
    first, second = frozen(page)
    assert first == second
    before = server.python_threads()
    other = Session(browser, server.url)
    try:
        other.slow_down()
        born = server.python_threads() - before  # the new session started its run worker
        assert born, "no new server thread for the second page's session"
        step = other.step()
        wait_until(lambda: other.step() > step + 10, REACT, "the second page's race to run")
        assert "running" in other.counter()
        assert "paused" in page.counter() and page.step() == second  # the first page did not follow
        assert other.unexpected_errors() == []
    finally:
        other.close()
    # Closing the page ends its session after the server's unused-session lifetime, and the
    # session's end (Explorer.close) stops its worker: every thread born with it is gone.
    wait_until(lambda: not born & server.python_threads(), SESSION_END + REACT,
               "the closed page's worker thread to end", lambda: born & server.python_threads())
    assert "paused" in page.counter() and page.step() == second  # the first page lives on, untouched
    page.click("▶ Run")
    wait_until(lambda: page.step() > second, REACT, "the first page to run again")
    assert page.unexpected_errors() == []


_CANDIDATES_JS = """() => {
  // the candidates a ranking optimizer waits on, and where each is drawn on the page
  const doc = Bokeh.documents[0];
  let src = null, plot = null;
  for (const m of doc._all_models.values())
    if (m.data != null && typeof m.get_length === "function" && "text" in m.data && "fill" in m.data)
      src = m;
  if (src === null || src.get_length() === 0) return null;
  for (const m of doc._all_models.values())
    if (m.x_range !== undefined && Array.isArray(m.renderers) && m.renderers.some(r => r.data_source === src))
      plot = m;  // the figure (legend items list renderers too)
  const view = Bokeh.index.find_one(plot);
  const rect = view.canvas_view.el.getBoundingClientRect();
  const xs = Array.from(src.data.x), ys = Array.from(src.data.y);
  return {text: Array.from(src.data.text),
          at: xs.map((x, i) => [rect.left + view.frame.x_scale.compute(x),
                                rect.top + view.frame.y_scale.compute(ys[i])])};
}"""


def test_a_person_ranks_the_candidates_by_clicking_them(browser: object, server: Server) -> None:
    """The "be the ranking oracle" preset: ZO-RankSGD waits with candidates drawn on the landscape;
    clicking them best first sends the ranking, which the run takes (an event marker says so) and
    the next candidates appear."""
    s = Session(browser, server.url + "?preset=ranking_oracle")
    try:
        state: dict = {}

        def shown() -> bool:
            state["c"] = s.page.evaluate(_CANDIDATES_JS)
            return state["c"] is not None and all(t == "?" for t in state["c"]["text"])

        wait_until(shown, REACT, "candidates to rank")
        first = state["c"]
        assert len(first["at"]) == 4
        s.page.locator(".alert-warning").get_by_text(re.compile("is waiting for you")).wait_for(
            state="visible", timeout=REACT * 1000)
        s.screenshot("04-candidates")
        order = [2, 0, 3, 1]
        for k, i in enumerate(order[:-1]):
            # positions read just before each click: the page's layout may have moved since
            # (a full-page screenshot, a table or card filling in above the plot)
            x, y = s.page.evaluate(_CANDIDATES_JS)["at"][i]
            s.page.mouse.click(x, y)
            wait_until(lambda k=k, i=i: (c := s.page.evaluate(_CANDIDATES_JS)) is not None
                       and c["text"][i] == str(k + 1), REACT, f"candidate {i} to show rank {k + 1}",
                       lambda x=x, y=y: (time.time(), (x, y), s.page.evaluate(_CANDIDATES_JS)))
        x, y = s.page.evaluate(_CANDIDATES_JS)["at"][order[-1]]
        s.page.mouse.click(x, y)
        wait_until(lambda: any(f"ranked {order}" in e for e in s.sources()["events"]), REACT,
                   "the ranking to reach the run",
                   lambda: (s.sources()["events"], s.page.evaluate(_CANDIDATES_JS), s.counter()))
        wait_until(lambda: shown() and state["c"]["at"] != first["at"], REACT, "the next candidates")
        s.screenshot("05-ranked")
        assert s.unexpected_errors() == []
    finally:
        s.close()
