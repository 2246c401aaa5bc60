"""The experiment chart's SVG."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from experiments.chart import Point, ctr_chart_svg

pytestmark = pytest.mark.unit
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_one_line_and_band_per_variant_with_escaped_names() -> None:
    series = {
        "a": [Point(T0, 0.1, 0.08, 0.12), Point(T0 + timedelta(minutes=1), 0.11, 0.1, 0.12)],
        "<b>": [Point(T0, 0.2, 0.15, 0.25), Point(T0 + timedelta(minutes=1), 0.21, 0.19, 0.23)],
    }
    svg = ctr_chart_svg(series)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<polyline") == 2 and svg.count("<polygon") == 2
    assert "&lt;b&gt; 21.00%" in svg and "<b>" not in svg


def test_higher_ctr_is_drawn_higher() -> None:
    series = {
        "low": [Point(T0, 0.1, 0.1, 0.1), Point(T0 + timedelta(seconds=60), 0.1, 0.1, 0.1)],
        "high": [Point(T0, 0.3, 0.3, 0.3), Point(T0 + timedelta(seconds=60), 0.3, 0.3, 0.3)],
    }
    svg = ctr_chart_svg(series)
    y_of = {
        name: float(svg.split(f'data-variant="{name}"')[0].rsplit('points="', 1)[1].split(",")[1].split()[0])
        for name in series
    }
    assert y_of["high"] < y_of["low"]  # SVG's y grows downwards


def test_no_chart_before_two_computations() -> None:
    assert ctr_chart_svg({"a": [Point(T0, 0.1, 0.0, 0.2)]}) == ""
