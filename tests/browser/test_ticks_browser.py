"""The log-axis ticks and labels the app's figures compute in the browser (app.figures), run in
Chromium on the ranges that showed the trouble, against tick sets written out by hand."""

from __future__ import annotations

import pytest

from app.figures import _TICK_LABEL, LOG_MINOR_TICKS_JS, LOG_TICKS_JS

CASES = [
    ((0.04, 0.9), [0.05, 0.1, 0.2, 0.5]),  # BokehJS's own ticker: 0.2 0.4 0.6 0.8, bottom half blank
    ((0.5, 30.0), [0.5, 1, 2, 5, 10, 20]),  # 1 x 10^k alone would label two
    ((3.2, 9.0), [4, 5, 6, 7, 8, 9]),  # within a decade: every mantissa
    ((1e-9, 10.0), [1e-8, 1e-6, 1e-4, 1e-2, 1]),  # ten decades: every second
    ((1e-4, 2.0), [1e-4, 1e-3, 1e-2, 0.1, 1]),
    ((30.0, 1.0), [1, 2, 5, 10, 20]),  # a flipped range
    ((0.0, 5.0), []), ((-1.0, 5.0), []), ((2.0, 2.0), []),  # nothing a log axis can show
]


def _call(browser: object, code: str, arg: object) -> object:
    page = browser.new_page()
    try:
        return page.evaluate(f"(cb_data) => {{ {code} }}", arg)
    finally:
        page.close()


@pytest.mark.parametrize(("span", "ticks"), CASES)
def test_log_axis_major_ticks(browser: object, span: tuple[float, float], ticks: list[float]) -> None:
    got = _call(browser, LOG_TICKS_JS, {"start": span[0], "end": span[1]})
    assert got == pytest.approx(ticks, rel=1e-12)


def test_log_axis_minor_ticks_are_every_mantissa_inside_the_range(browser: object) -> None:
    got = _call(browser, LOG_MINOR_TICKS_JS, {"start": 0.04, "end": 0.9})
    assert got == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                 0.8, 0.9], rel=1e-12)


@pytest.mark.parametrize(("tick", "label"), [(0.05, "0.05"), (0.25, "0.25"), (300, "300"),
                                             (1e-9, "1e-9"), (2e5, "2e5"), (0.1 + 0.2, "0.3")])
def test_tick_labels(browser: object, tick: float, label: str) -> None:
    page = browser.new_page()
    try:
        assert page.evaluate(f"(tick) => {{ {_TICK_LABEL} }}", tick) == label
    finally:
        page.close()


def test_log_axis_minor_ticks_thin_to_decades_over_more_than_three(browser: object) -> None:
    """1e-3 .. 100 (5 decades) on a 260-px figure: 8 minor ticks a decade were 2 px apart, a black
    comb; over 3 decades the minor ticks are the decades."""
    got = _call(browser, LOG_MINOR_TICKS_JS, {"start": 1e-3, "end": 100.0})
    assert got == pytest.approx([1e-3, 1e-2, 0.1, 1, 10, 100], rel=1e-12)
