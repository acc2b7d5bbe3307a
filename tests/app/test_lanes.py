"""A lane's lr schedule, gradient clipping and batch size: widgets on the lane, one engine event per
change, carried by the lane's LaneConfig into links and logs, and mirrored back on replay."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import panel as pn
import pytest
from bokeh.document import Document
from bokeh.document.events import ModelChangedEvent
from panel.io.state import set_curdoc

from app import sharing
from app.controls import widget_specs
from app.lanes import Lane
from app.model import RaceSession
from engine.clipping import Clip
from engine.events import SetClip, SetSchedule, SwitchOptimizer
from engine.run import LaneConfig
from engine.schedules import Schedule
from tests.app.conftest import wait_for


def drain_until(s: RaceSession, cond, timeout: float = 20.0) -> None:
    def check() -> bool:
        s.drain()
        return cond()
    wait_for(check, timeout)


def logged(s: RaceSession) -> list:
    return s.worker.call(lambda run: [e.event for e in run.log]).result(timeout=10)


def run_steps(s: RaceSession, n: int) -> None:
    for _ in range(n):
        tick = s.worker.tick
        s.step()
        wait_for(lambda tick=tick: s.worker.tick == tick + 1)
    s.drain()


def test_a_lanes_widgets_build_its_config() -> None:
    lane = Lane("sgd", {"lr": 0.1}, slot=0)
    plain = lane.config()  # constant lr, no clip: nothing added
    assert (dict(plain.schedules), plain.clip, plain.batch_size) == ({}, None, None)
    lane.wrap.param.update(schedule="linear", steps=50, warmup=5)
    lane.wrap.param.update(clip="coordinate", fraction=0.25)
    config = lane.config()
    assert config.schedules["lr"] == Schedule("linear", steps=50, warmup=5)
    assert config.clip == Clip("coordinate", 1.0, 0.25)
    assert Lane.from_config(config, slot=1).config() == config  # the widgets show what a link holds


def test_a_refined_schedule_from_a_link_is_kept() -> None:
    refined = Schedule("refined", values=(1.0, 0.5, 0.0))
    lane = Lane.from_config(LaneConfig("sgd", {"lr": 0.1}, schedules={"lr": refined}), slot=0)
    assert lane.wrap.schedule == "refined" and lane.config().schedules["lr"] == refined


@pytest.fixture
def sgd() -> Iterator[RaceSession]:
    s = RaceSession(problem="quadratic", optimizers=["sgd"], speed=500)
    yield s
    s.close()


def test_a_schedule_picked_on_a_lane_reaches_the_engine_and_may_anneal_to_zero(sgd: RaceSession) -> None:
    """Linear decay to 0 over 4 steps: the live lr goes 0.01 * (1, 3/4, 1/2, 1/4, 0, 0) — values below
    the lr's typed range are what a schedule reaches, and the app does not refuse them."""
    lane = sgd.lanes[0]
    lane.hyperparameters.lr = 0.01
    lane.wrap.param.update(schedule="linear", steps=4)
    marks = [m.label for m in sgd.drain().marks]
    assert marks[-1] == "SGD: constant lr → lr linear decay over 4 steps to 0"
    events = logged(sgd)
    assert isinstance(events[-1], SetSchedule) and events[-1].schedule == {"kind": "linear", "steps": 4}

    lrs = []
    for _ in range(6):
        run_steps(sgd, 1)
        lrs.append(sgd.latest[lane.id].hyperparameters["lr"])
    assert lrs == pytest.approx([0.01, 0.0075, 0.005, 0.0025, 0.0, 0.0])
    assert sgd.message == ""


def test_clipping_is_one_event_and_shows_in_the_diagnostics(sgd: RaceSession) -> None:
    lane = sgd.lanes[0]
    lane.wrap.param.update(clip="norm", threshold=1e-9)
    assert logged(sgd)[-1] == SetClip(0, {"kind": "norm", "threshold": 1e-9, "fraction": 0.1})
    run_steps(sgd, 2)
    assert sgd.latest[lane.id].diagnostics["clipped_fraction"].tolist() == [1.0]


def test_a_switch_keeps_the_lanes_schedule_and_clip(sgd: RaceSession) -> None:
    lane = sgd.lanes[0]
    lane.wrap.param.update(schedule="cosine", steps=100, clip="value", threshold=0.5)
    sgd.switch_optimizer(lane, "adam")
    event = logged(sgd)[-1]
    assert isinstance(event, SwitchOptimizer) and event.optimizer == "adam"
    assert event.schedules == {"lr": {"kind": "cosine", "steps": 100}}
    assert event.clip == {"kind": "value", "threshold": 0.5, "fraction": 0.1}


def test_a_link_and_a_replayed_log_carry_the_wrappers(sgd: RaceSession) -> None:
    lane = sgd.lanes[0]
    run_steps(sgd, 2)
    lane.wrap.param.update(schedule="step", every=3, gamma=0.5)
    lane.wrap.param.update(clip="norm", threshold=2.0)
    run_steps(sgd, 3)
    spec = sgd.spec()
    back = sharing.decode(sharing.encode(spec))
    assert back.events == spec.events and back.lanes == spec.lanes
    other = RaceSession(problem="quadratic", optimizers=["sgd"], speed=500)
    try:
        assert other.load(back, "the link")
        run_steps(other, 5)
        drain_until(other, lambda: other.lanes[0].wrap.clip == "norm")
        w = other.lanes[0].wrap
        assert (w.schedule, w.every, w.gamma, w.threshold) == ("step", 3, 0.5, 2.0)
        assert other.latest[other.lanes[0].id].hyperparameters["lr"] == \
            sgd.latest[lane.id].hyperparameters["lr"]
        assert not any(isinstance(e, (SetSchedule, SetClip)) for e in logged(other)[len(back.events):])
    finally:
        other.close()


def test_the_card_draws_the_schedule_and_writes_the_live_lr(explorer) -> None:
    """Cosine over 20 steps from lr 1e-3: at step 4 the card says 1e-3 * (1 + cos(pi/5)) / 2."""
    from tests.app.conftest import steps
    lane = explorer.session.lanes[0]
    card = explorer.sidebar.cards[lane.id]
    card.card.collapsed = False
    lane.hyperparameters.lr = 1e-3
    lane.wrap.param.update(schedule="cosine", steps=20, clip="norm")
    steps(explorer, 5)
    explorer._refresh()
    controls = card.wrappers
    assert controls.live.object == "lr now <b>0.0009045</b> at step 4"
    assert "<polyline" in controls.curve.object and "<circle" in controls.curve.object
    assert controls.shown == {"warmup", "steps", "final", "threshold"}  # cosine's fields and the norm clip's
    assert set(controls.fields) == controls.shown  # the others are not built before they are needed


def probes_sent(s: RaceSession) -> list[dict]:
    from engine.events import SetProbes
    return [dict(e.config) for e in logged(s) if isinstance(e, SetProbes)]


def test_a_probe_preset_sends_the_whole_preset_and_widgets_change_only_their_fields(sgd) -> None:
    """Business = economy + top-3 at tol 1e-4, a trace, gradient noise, float32 products: choosing it
    sends all of that, and a later widget change keeps tol, dtype, noise and the estimate cosine."""
    from engine.instruments import ProbeConfig
    sgd.probe_preset = "business"
    assert probes_sent(sgd)[-1] == ProbeConfig.business(seed=sgd.seed).to_dict()
    assert (sgd.probe_top_k, sgd.probe_trace, sgd.probe_every) == (3, True, 50)
    sgd.probe_every = 7
    assert probes_sent(sgd)[-1] == ProbeConfig.business(every=7, seed=sgd.seed).to_dict()


def test_a_links_probes_survive_a_widget_change(sgd) -> None:
    """A link carrying noise probes and float32 products keeps them when a probe widget changes."""
    from engine.instruments import ProbeConfig
    spec = replace_probes(sgd.spec(), ProbeConfig.full(every=9))
    assert sgd.load(spec, "the link")
    sgd.probe_top_k = 2
    assert probes_sent(sgd)[-1] == ProbeConfig.full(every=9, top_k=2, seed=sgd.seed).to_dict()


def test_the_page_shows_the_probe_preset_of_the_race_it_opened(sgd) -> None:
    """A link's (or a classroom preset's) probes are named by the page's preset selector, and
    showing the name changes nothing: the link's interval and fields reach the run as they were (the
    selector's own watcher, which sends a preset's defaults, stays quiet); probes that are no preset
    leave the selector as it was."""
    from engine.instruments import ProbeConfig
    for name, probes in [("sharpness", ProbeConfig.sharpness(every=10, seed=sgd.seed)),
                         ("business", ProbeConfig.business(every=9, top_k=4, seed=sgd.seed))]:
        assert sgd.load(replace_probes(sgd.spec(), probes), "the link")
        assert sgd.probe_preset == name and sgd.probe_every == probes.every
        assert sgd.worker.call(lambda run: run.probes).result(timeout=10) == probes
    assert sgd.load(replace_probes(sgd.spec(), ProbeConfig.sharpness(tol=1e-5)), "the link")
    assert sgd.probe_preset == "business"  # tol 1e-5 is no preset's: the page's choice stays
    assert sgd.worker.call(lambda run: run.probes.tol).result(timeout=10) == 1e-5


def replace_probes(spec, probes):
    from dataclasses import replace
    return replace(spec, probes=probes.to_dict())


class _Page:
    """A served lane card as the Bokeh server sees it, with the page's messages applied in an order
    the test chooses: a patch from the page is applied at once (as the server does on receipt) and
    Panel's debounced processing of it runs only at ``process()`` (a timer on the server's loop)."""

    PAGE = object()  # the setter of the page's own patches (the server does not send them back)

    def __init__(self) -> None:
        lane = Lane("sgd", {"lr": 0.001}, slot=0, on_change=lambda *_: None)
        self.lane = lane
        view = pn.Param(lane.hyperparameters, widgets=widget_specs(lane), show_name=False)
        self.doc = doc = Document()
        with set_curdoc(doc):
            root = view.get_root(doc)
        doc.add_root(root)
        self.pending: list = []
        doc._session_context = lambda: object()  # served: Panel defers its processing to a timer
        doc.add_timeout_callback = lambda cb, _ms: self.pending.append(cb)
        doc.add_next_tick_callback = self.pending.append
        self.widget = view._widgets["lr"]
        ref = root.ref["id"]
        self.slider = self.widget._slider._models[ref][0]
        self.text = self.widget._text._models[ref][0]
        self.sent: list[tuple[str, object]] = []  # what the server sends the page, in order
        doc.on_change(lambda e: isinstance(e, ModelChangedEvent) and e.setter is not self.PAGE and
                      self.sent.append(("text" if e.model is self.text else e.attr, e.new)))

    def send(self, model, attr: str, new) -> None:
        self.doc.apply_json_patch({"events": [{"kind": "ModelChanged", "model": {"id": model.id},
                                               "attr": attr, "new": new}]}, setter=self.PAGE)

    def press(self, index: int, processed_between: bool) -> None:
        """A key press on the page: the slider moves, the page's link writes the label, the press
        ends (``value_throttled``). ``processed_between``: the server's timer for the slider's value
        fires before the label's message is read (a loaded server)."""
        self.send(self.slider, "value", index)
        if processed_between:
            self.process()
        self.send(self.text, "text", self.widget.labels[index])
        self.send(self.slider, "value_throttled", index)

    def process(self) -> None:
        while self.pending:
            with set_curdoc(self.doc):
                done = self.pending.pop(0)()
                if asyncio.iscoroutine(done):
                    asyncio.run(done)


def test_the_newest_key_press_on_an_lr_slider_keeps_its_label_on_a_loaded_server() -> None:
    """Three quick presses; the server reads the first two between their value and their label.
    Whatever it sends arrives after the third press: the page's label must end at the third
    press's value, as the run does (Panel's DiscreteSlider sent the second press's label, which
    then stayed: the page showed lr 0.002 while the run had 0.003)."""
    page = _Page()
    start = page.slider.value
    assert page.widget.labels[start] == "lr: <b>0.001</b>"
    page.press(start + 1, processed_between=True)
    page.press(start + 2, processed_between=True)
    page.press(start + 3, processed_between=False)
    page.process()
    assert page.lane.hyperparameters.lr == 0.003
    texts = [new for what, new in page.sent if what == "text"]
    shown = texts[-1] if texts else page.widget.labels[start + 3]  # the page's own link wrote this
    assert shown == "lr: <b>0.003</b>"
    assert [new for what, new in page.sent if what in ("value", "value_throttled")] == []
    assert page.widget._text.value == "lr: <b>0.003</b>"  # a page built later shows the newest


def test_a_value_the_server_sets_moves_the_lr_slider_and_its_label() -> None:
    """A replayed event (``lane.mirror``) moves the page's slider; the page's link then rewrites
    its label (the server keeps the label's text for a page built later)."""
    page = _Page()
    page.lane.mirror("lr", 0.05)
    page.process()
    index = page.widget.values.index(0.05)
    assert ("value", index) in page.sent
    assert page.widget._text.value == "lr: <b>0.05</b>" == page.widget.labels[index]
