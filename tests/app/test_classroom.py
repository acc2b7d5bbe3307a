"""Classroom mode without a browser: presets, share links, saved sessions and the presenter view,
driven through the Explorer's methods and parameters."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from app.explorer import Explorer
from app.presets import PRESETS_FILE, presets
from engine.events import SetHyperparameter
from engine.registry import available
from engine.run import Run
from landscapes import available_landscapes, available_networks
from tests.app.test_explorer import pump_until


def steps(ex: Explorer, n: int) -> None:
    """``n`` single steps, each awaited (a paused explorer, as a presenter drives it)."""
    for _ in range(n):
        tick = ex.worker.tick
        ex.step()
        pump_until(ex, lambda tick=tick: ex.worker.tick == tick + 1)


@pytest.fixture
def ex():
    explorer = Explorer(landscape="rosenbrock")
    yield explorer
    explorer.close()


def test_presets_are_data_that_name_real_problems_and_optimizers() -> None:
    table = presets()
    assert PRESETS_FILE.suffix == ".toml" and len(table) >= 8
    for p in table.values():
        assert p.problem in (*available_landscapes(), *available_networks()), p.name
        assert all(name in available() for name, _ in p.lanes), p.name
        assert p.explanation and p.title


@pytest.mark.parametrize("name", list(presets()))
def test_every_preset_loads_and_runs(ex: Explorer, name: str) -> None:
    ex.apply_preset(name)
    preset = presets()[name]
    assert ex.message == "" and ex.preset_note.visible and preset.title in ex.preset_note.object
    assert [ex.lane_names[k] for k in sorted(ex.lane_names)] == [n for n, _ in preset.lanes]
    for k, (_, values) in enumerate(preset.lanes):
        assert all(ex.values[k][h] == v for h, v in values.items())
    assert ex.landscape == preset.problem and ex.x_axis == preset.x_axis
    human = any(v.get("human") for _, v in preset.lanes)
    steps(ex, 2)
    waiting = set(ex.worker.run.awaiting)
    pump_until(ex, lambda: set(ex.streams.latest) | waiting == set(ex.lane_names))
    assert waiting == ({0} if human else set())
    for rec in ex.streams.latest.values():
        assert np.isfinite(rec.loss).all()


def test_a_share_link_reproduces_the_race(ex: Explorer) -> None:
    ex.apply_preset("valley")
    ex.set_hyperparameter(1, "momentum", 0.7)
    ex.param.update(n_starts=3, seed=5)
    link = ex.share_link()
    assert link.startswith("?") and "kappa" in link
    other = Explorer()
    try:
        assert other.apply_query(ex.to_query())
        a, b = ex.worker.run, other.worker.run
        assert b.config == a.config and b.problem.params == a.problem.params
        ra, rb = Run(a.problem, a.config).run(20), Run(b.problem, b.config).run(20)
        assert len(ra) == 40 and all(x.same_values(y) for x, y in zip(ra, rb, strict=True))
    finally:
        other.close()


def test_a_bad_link_says_why_and_changes_nothing(ex: Explorer) -> None:
    before = ex.to_query()
    assert not ex.apply_query({"problem": "rosenbrock", "lanes": '[["adam", {"lr": -1}]]'})
    assert "lr" in ex.message and ex.to_query() == before
    assert not ex.apply_query({"problem": "no_such_problem", "lanes": '[["adam", {}]]'})
    assert "no_such_problem" in ex.message and ex.to_query() == before


def test_a_saved_session_replays_live_to_the_same_state(ex: Explorer) -> None:
    steps(ex, 3)
    ex.set_hyperparameter(2, "lr", 0.05)
    steps(ex, 4)
    ex.switch_optimizer(0, "nesterov")
    steps(ex, 3)
    log = json.loads(json.dumps(ex.event_log()))  # what the download holds
    assert log["ticks"] == 10 and [e["kind"] for e in log["events"]] == ["set_hyperparameter",
                                                                          "switch_optimizer"]
    other = Explorer(landscape="quadratic", optimizers=["sgd"])
    try:
        assert other.replay_log(log)
        steps(other, 10)
        a, b = ex.worker.run, other.worker.run
        assert [e.event for e in b.log] == [e.event for e in a.log]
        for k in a.lanes:
            assert np.array_equal(a.positions(k), b.positions(k))
        assert b.lanes[2].values["lr"] == 0.05 and b.lanes[0].spec.name == "nesterov"
    finally:
        other.close()
    assert not ex.replay_log({"events": []}) and "event log" in ex.message


def test_presenter_view_steps_one_at_a_time_and_draws_each_update(ex: Explorer) -> None:
    ex.play()
    ex.presenter = True
    assert not ex.running and ex.rules.visible and len(ex.rules.objects) == len(ex.lane_names)
    assert ex.landscape_view.figure.title.text_font_size == "24px"
    steps(ex, 1)
    steps(ex, 1)
    pump_until(ex, lambda: all(r.step == 1 for r in ex.streams.latest.values()))
    arrows = ex.landscape_view.updates.data
    run = ex.worker.run
    assert len(arrows["x0"]) == len(run.lanes)
    for i, k in enumerate(sorted(run.lanes)):
        prev, now = ex.streams.previous[k].position[0], ex.streams.latest[k].position[0]
        assert (arrows["x0"][i], arrows["y0"][i]) == tuple(prev)
        assert (arrows["x1"][i], arrows["y1"][i]) == tuple(now)
    ex.set_hyperparameter(0, "lr", 2e-3)  # a live change while presenting is logged as usual
    assert any(isinstance(e.event, SetHyperparameter) for e in ex.worker.call(lambda r: r.log).result())
    ex.presenter = False
    assert not ex.rules.visible and ex.landscape_view.updates.data["x0"] == []


def test_the_export_bundle_holds_every_record_with_its_config_and_the_images(ex: Explorer) -> None:
    steps(ex, 6)
    ex.set_hyperparameter(1, "lr", 2e-3)
    steps(ex, 4)
    with zipfile.ZipFile(io.BytesIO(ex.export_bundle())) as bundle:
        names = set(bundle.namelist())
        assert names == {"records.parquet", "records.json", "loss.png", "race.png", "race.gif"}
        table = pq.read_table(io.BytesIO(bundle.read("records.parquet")))
    meta = json.loads(table.schema.metadata[b"optiscope"])
    run = ex.worker.run
    assert meta["config"] == json.loads(json.dumps(run.config.to_dict()))
    assert [e["kind"] for e in meta["event_log"]["events"]] == ["set_hyperparameter"]
    frame = table.to_pandas()
    assert len(frame) == 10 * len(run.lanes)  # every step of every lane, not the decimated plot data
    last = frame[frame.step == 9].sort_values("lane")
    for k in sorted(run.lanes):
        np.testing.assert_array_equal(last[last.lane == k][["x0", "x1"]].to_numpy()[0],
                                      ex.streams.latest[k].position[0])
