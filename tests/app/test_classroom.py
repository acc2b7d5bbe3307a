"""Classroom mode without a browser: presets, share links with their events, saved sessions,
hostile links and logs (refused as a whole, the running race untouched), the presenter view and
the export, driven through the explorer's widgets and public methods."""

from __future__ import annotations

import io
import itertools
import json
import zipfile
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from app import sharing
from app.explorer import Explorer
from app.presets import PRESETS_FILE, presets
from app.views import LandscapeView, ShareView
from engine.events import Pause, SetHyperparameter
from engine.registry import available
from landscapes import available_landscapes, available_networks
from tests.app.conftest import pump_until, steps, widget


@pytest.fixture
def ex():
    explorer = Explorer(landscape="rosenbrock")
    yield explorer
    explorer.close()


def test_presets_are_data_that_name_real_problems_and_optimizers() -> None:
    table = presets()
    assert PRESETS_FILE.suffix == ".toml" and len(table) >= 8
    for p in table.values():
        assert p.problem in (*available_landscapes(), *available_networks(), sharing.CUSTOM), p.name
        assert (p.expression is not None) == (p.problem == sharing.CUSTOM), p.name
        assert all(name in available() for name, _ in p.lanes), p.name
        assert p.explanation and p.title and p.claim, p.name  # each states what a class will see


@pytest.mark.parametrize("name", list(presets()))
def test_every_preset_loads_from_its_menu_and_runs(ex: Explorer, name: str) -> None:
    preset = presets()[name]
    widget(ex.controls, "Classroom presets").value = name
    assert ex.message == "" and ex.preset_note.visible and preset.title in ex.preset_note.object
    assert [ln.optimizer for ln in ex.session.lanes] == [n for n, _ in preset.lanes]
    for lane, (_, values) in zip(ex.session.lanes, preset.lanes, strict=True):
        assert all(lane.values()[h] == v for h, v in values.items())
    assert ex.session.problem == preset.problem and ex.session.x_axis == preset.x_axis
    assert preset.claim in ex.preset_note.object
    if preset.tab is not None:  # the instrument the claim is about is the one on screen
        assert ex.instruments._names[ex.instruments.active] == preset.tab
    if preset.probe_every is not None:
        assert ex.worker.run.config.probes.every == preset.probe_every
    human = any(v.get("human") for _, v in preset.lanes)
    steps(ex, 2)
    waiting = {lane.id for lane in ex.session.lanes if lane.engine_id in ex.worker.run.awaiting}
    pump_until(ex, lambda: set(ex.session.latest) | waiting == {ln.id for ln in ex.session.lanes})
    assert bool(waiting) == human
    for rec in ex.session.latest.values():
        assert np.isfinite(rec.loss).all()


def test_a_share_link_carries_the_events_and_reopens_the_race_with_them(ex: Explorer) -> None:
    """A race whose learning rate changed at step 6 reopens with the change at step 6."""
    ex.apply_preset("valley")
    ex.session.param.update(n_starts=3, seed=5)
    steps(ex, 6)
    ex.session.lanes[1].hyperparameters.momentum = 0.7
    steps(ex, 4)
    link = ex.view(ShareView).share_link()
    assert link.startswith("?race=") and len(link) < 600  # outside a served page: relative, short
    other = Explorer()
    try:
        assert other.apply_query({k: v[0] for k, v in parse_qs(urlsplit(link).query).items()})
        a, b = ex.worker.run, other.worker.run
        assert b.config == a.config and b.problem.params == a.problem.params
        steps(other, 10)
        other_log = other.worker.call(lambda run: list(run.log)).result(timeout=10)
        # the change at its step, and (the race was shared paused) a pause where it was shared
        assert [(e.tick, e.event) for e in other_log] == [(6, SetHyperparameter(1, "momentum", 0.7)),
                                                          (10, Pause())]
        assert not other.running
        assert other.session.lanes[1].hyperparameters.momentum == 0.7  # the page shows it too
        for k in a.lanes:
            np.testing.assert_array_equal(a.positions(k), b.positions(k))
    finally:
        other.close()


BAD_LINKS = [
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "start": "1"}, "2 coordinates"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "start": "1,2,3"}, "2 coordinates"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "start": "1e400,0"}, "finite"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "seed": "-1"}, "seed"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "seed": "1e12"}, "seed"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "speed": "nan"}, "speed"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "speed": "inf"}, "speed"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "x": "nope"}, "x-axis"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "batch": "-5"}, "batch size"),
    ({"problem": "rosenbrock", "lanes": '[["sgd",{}]]', "batch": "1e9"}, "batch size"),
    ({"problem": "rosenbrock", "lanes": '[["sophia_g",{}]]'}, "Sophia-G"),
    ({"problem": "rosenbrock", "lanes": '[["adam",{"lr":-1}]]'}, "lr"),
    ({"problem": "no_such_problem", "lanes": '[["adam",{}]]'}, "no_such_problem"),
    ({"problem": "quadratic", "options": '{"dim": 1000000000}', "lanes": '[["sgd",{}]]'}, "limit"),
    ({"problem": "rosenbrock", "lanes": json.dumps([["sgd", {}]] * 9)}, "8"),
    ({"problem": "rosenbrock", "lanes": "[[1,2"}, "form"),
    ({"race": "not-a-race"}, "damaged"),
]


@pytest.mark.parametrize(("query", "reason"), BAD_LINKS)
def test_a_bad_link_says_why_and_leaves_the_running_race_untouched(ex: Explorer, query: dict,
                                                                   reason: str) -> None:
    ex.session.play()
    pump_until(ex, lambda: ex.worker.tick > 3)
    before, worker, lanes = ex.session.spec().params, ex.worker, list(ex.session.lanes)
    assert not ex.apply_query(query)
    assert reason in ex.message and ex.message.startswith("this link")
    assert "Error" not in ex.message and "__init__" not in ex.message  # words, not Python
    assert ex.worker is worker and worker.alive and ex.session.lanes == lanes
    assert ex.session.spec().params == before and ex.session.problem == "rosenbrock"
    tick = worker.tick
    pump_until(ex, lambda: worker.tick > tick + 3)  # still running


def test_a_three_d_landscape_link_opens_and_the_page_shows_it(ex: Explorer) -> None:
    assert ex.apply_query({"problem": "rosenbrock", "options": '{"dim": 3}', "lanes": '[["adam",{}]]',
                           "start": "1,2"})
    assert ex.worker.run.problem.dim == 3 and not ex.view(LandscapeView).applies()
    assert not ex.race_area.visible and ex.formula.object.startswith("$")


def test_a_saved_session_replays_live_to_the_same_state(ex: Explorer) -> None:
    steps(ex, 3)
    ex.session.lanes[2].hyperparameters.lr = 0.05
    steps(ex, 4)
    ex.session.switch_optimizer(ex.session.lanes[0], "nesterov")
    steps(ex, 3)
    data = ex.view(ShareView)._log_file().getvalue().encode()  # what "Save event log" downloads
    other = Explorer(landscape="quadratic", optimizers=["sgd"])
    try:
        assert other.view(ShareView).open_log(data)
        steps(other, 10)
        a, b = ex.worker.run, other.worker.run
        assert [e.event for e in b.log] == [e.event for e in a.log if type(e.event).__name__ not in
                                           ("Pause", "Resume")]
        for k in a.lanes:
            np.testing.assert_array_equal(a.positions(k), b.positions(k))
        lanes = other.session.lanes
        assert lanes[0].optimizer == "nesterov" and lanes[2].hyperparameters.lr == 0.05
    finally:
        other.close()


def test_a_bad_log_is_refused_in_the_terms_of_a_log_and_the_race_goes_on(ex: Explorer) -> None:
    steps(ex, 2)
    share, worker = ex.view(ShareView), ex.worker
    log = json.loads(share._log_file().getvalue())
    log["events"] = [{"tick": 0, "kind": "set_hyperparameter", "lane": 99, "name": "lr", "value": 0.1}]
    assert not share.open_log(json.dumps(log).encode())
    assert "lane 99" in ex.message and "link" not in ex.message and ex.worker is worker
    assert not share.open_log(b"x" * (sharing.UPLOAD_LIMIT_BYTES + 1))
    assert f"at most {sharing.UPLOAD_LIMIT}" in ex.message  # the limit the page states
    assert not share.open_log(b"{not json")
    assert "JSON" in ex.message and ex.worker is worker and worker.alive


def test_presenter_view_steps_one_at_a_time_and_draws_each_update(ex: Explorer) -> None:
    ex.session.play()
    widget(ex.controls, "presenter view (big type, update rules, one step per click)").value = True
    assert not ex.running and ex.rules.visible and len(ex.rules.objects) == len(ex.session.lanes)
    view = ex.view(LandscapeView)
    assert view.figure.title.text_font_size == "22px"
    # at 22 px the title's parts (the problem; what each mark means) take a line each: one line ran
    # past the figure's edge at 1024 px
    lines = view.figure.title.text.split("\n")
    assert lines == [ex.session.problem_obj.title, "☆ global minimum", "⊕ start"]
    steps(ex, 1)
    steps(ex, 1)
    arrows = view.updates.data
    assert len(arrows["x0"]) == len(ex.session.lanes)
    assert (arrows["x1"][0], arrows["y1"][0]) == tuple(ex.session.latest[ex.session.lanes[0].id].position[0])
    ex.presenter = False
    assert not ex.rules.visible and view.updates.data["x0"] == []
    assert view.figure.title.text == lines[0]  # the marks' meaning and the click hint: under the picture
    assert view.hint.visible and view.hint.object.startswith(" · ".join(lines[1:]) + ": click the picture")


def test_the_export_runs_off_the_loop_with_progress_and_holds_every_record(ex: Explorer) -> None:
    steps(ex, 6)
    ex.session.lanes[1].hyperparameters.lr = 2e-3
    steps(ex, 4)
    share = ex.view(ShareView)
    job = share.start_export(wait=True)
    assert not job.error and job.fraction == 1.0
    share.refresh()
    assert share.download.visible and "optiscope-race.zip" in share.download.label
    with zipfile.ZipFile(share.download.file) as bundle:
        names = set(bundle.namelist())
        assert {"records.parquet", "loss.png", "race.png", "race.gif"} <= names
        table = pq.read_table(io.BytesIO(bundle.read("records.parquet")))
    run = ex.worker.run
    frame = table.to_pandas()
    assert len(frame) == 10 * len(run.lanes)  # every step of every lane, not the thinned plot data
    last = frame[frame.step == 9].sort_values("lane")
    for lane in ex.session.lanes:  # the exported step 9 is the page's last record, to the bit
        np.testing.assert_array_equal(last[last.lane == lane.engine_id][["x0", "x1"]].to_numpy()[0],
                                      ex.session.latest[lane.id].position[0])


def test_an_export_can_be_cancelled(ex: Explorer) -> None:
    steps(ex, 2)
    share = ex.view(ShareView)
    problem = ex.worker.run.problem
    log = {"problem": problem.name, "config": ex.worker.run.config.to_dict(), "events": [], "ticks": 200_000}
    from app.bundle import build_bundle
    from app.jobs import Job

    job = share.jobs.start(Job("export", lambda job: build_bundle(job, problem, log, drawn=False,
                                                                   x_axis="step", f_star=None)))
    pump_until(ex, lambda: job.fraction > 0, 30)
    widget(share.panel, "Cancel").clicks += 1
    assert job.wait(10) and job.error == "export cancelled"  # the replay stopped at a checkpoint


def _run_preset(name: str, steps: int) -> tuple[dict[int, list], object]:
    """The preset's race, stepped synchronously (what the page shows, without the page)."""
    from engine.run import Run

    spec = presets()[name].spec()
    problem = spec.params.make_problem()
    run = Run(problem, spec.config())
    by_lane: dict[int, list] = {}
    for r in run.run(steps):
        by_lane.setdefault(r.lane, []).append(r)
    return by_lane, problem


def test_the_edge_of_stability_preset_reaches_2_over_eta_within_its_claim() -> None:
    """Claim: each lane's sharpness climbs from ~3.7 to its 2/eta (5 by step ~150 for eta = 0.4, 6.7
    by step ~400 for eta = 0.3) and then hovers there."""
    lanes, _ = _run_preset("edge_of_stability", 601)
    for lane, (eta, by) in enumerate(((0.4, 250), (0.3, 450))):
        probes = [(r.step, r.curvature.sharpness) for r in lanes[lane] if r.curvature is not None]
        assert probes[0][1] < 0.8 * 2 / eta  # it starts well below the threshold
        reached = next(step for step, s in probes if s >= 2 / eta)
        assert reached <= by, (eta, reached)
        late = [s for step, s in probes if step >= reached + 150]
        assert late and all(0.8 * 2 / eta < s < 1.5 * 2 / eta for s in late), (eta, late)  # hovers


def test_the_saddle_preset_newton_stays_on_the_saddle_sgd_stalls_then_escapes_sophia_never_stalls() -> None:
    lanes, problem = _run_preset("saddle_escape", 601)
    saddle = float(problem.loss(torch.zeros(1, 2, dtype=torch.float64))[0])
    assert saddle == pytest.approx(1.62)
    sgd, newton, sophia = ([float(r.loss[0]) for r in lanes[i]] for i in range(3))
    assert all(v == pytest.approx(saddle, abs=1e-9) for v in newton[1:])  # one step, and stays
    assert all(abs(v - saddle) < 0.05 for v in sgd[150:220]) and sgd[-1] < 1e-6  # stalls, escapes
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(sophia[:300]))  # never stalls
    assert sophia[250] < saddle - 0.3 and sophia[-1] < 1e-3


def test_the_adam_vs_sgd_preset_shows_a_real_difference() -> None:
    lanes, _ = _run_preset("adam_vs_sgd", 1001)
    sgd, adam = ([float(r.loss[0]) for r in lanes[i]] for i in range(2))
    assert adam[300] < 1e-10 and 0.05 < sgd[1000] < 0.5  # the claim's numbers


def test_the_rastrigin_preset_traps_gradient_methods_and_cbo_finds_the_global_minimum() -> None:
    lanes, _ = _run_preset("rastrigin_trap", 101)
    at_global = [int((np.hypot(*lanes[i][-1].position.T) < 0.05).sum()) for i in range(3)]
    assert at_global == [0, 0, 8]  # SGD, Adam, CBO (of 8 starts each)
