"""The experiment page's chart: CTR over time per variant with its interval, as inline SVG markup."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from html import escape

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 110, 16, 28
COLOURS = ("#417690", "#e0823d", "#2e7d32", "#8e44ad", "#ba2121", "#7f8c8d", "#16a085", "#c0392b", "#2c3e50", "#d35400")


@dataclass(frozen=True)
class Point:
    at: datetime
    ctr: float
    low: float
    high: float


def ctr_chart_svg(series: dict[str, list[Point]]) -> str:
    """An SVG of each variant's CTR (line) and interval (band) against time; "" with fewer than two
    computations, when there is no line to draw. Markup only: no script, nothing fetched."""
    points = [p for values in series.values() for p in values]
    times = sorted({p.at for p in points})
    if len(times) < 2:
        return ""
    start, span = times[0], (times[-1] - times[0]).total_seconds() or 1.0
    top = max(max(p.high for p in points), 1e-6) * 1.05

    def x(at: datetime) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (at - start).total_seconds() / span

    def y(value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - min(max(value, 0.0), top) / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" class="recsys-svg-chart" '
        'aria-label="CTR per variant over time">',
        *_axes(top, y, start, times[-1]),
    ]
    for n, (name, values) in enumerate(series.items()):
        if not values:
            continue
        colour = COLOURS[n % len(COLOURS)]
        band = [f"{x(p.at):.1f},{y(p.high):.1f}" for p in values] + [
            f"{x(p.at):.1f},{y(p.low):.1f}" for p in reversed(values)
        ]
        line = " ".join(f"{x(p.at):.1f},{y(p.ctr):.1f}" for p in values)
        parts += [
            f'<polygon points="{" ".join(band)}" fill="{colour}" fill-opacity="0.15" stroke="none"/>',
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2" data-variant="{escape(name)}"/>',
            f'<text x="{WIDTH - RIGHT + 6}" y="{y(values[-1].ctr) + 4:.1f}" fill="{colour}" font-size="12">'
            f"{escape(name)} {values[-1].ctr:.2%}</text>",
        ]
    parts.append("</svg>")
    return "".join(parts)


LABEL = 'font-size="11" fill="#666"'


def _axes(top: float, y: Callable[[float], float], start: datetime, end: datetime) -> list[str]:
    out = [
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#999"/>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#999"/>',
    ]
    for k in range(5):
        value = top * k / 4
        out.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" {LABEL}>{value:.1%}</text>')
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 8}" {LABEL}>{start:%Y-%m-%d %H:%M}</text>')
    out.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end" {LABEL}>{end:%Y-%m-%d %H:%M}</text>')
    return out
