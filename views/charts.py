"""Server-side SVG line chart geometry: no JavaScript, no CDN, nothing for the CSP to block."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime


@dataclass
class Line:
    """One series, as an SVG ``points`` string plus its dots with hover titles."""

    name: str
    points: str
    dots: list[tuple[float, float, str]]


@dataclass
class Chart:
    """Everything the template needs to draw the chart."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    lines: list[Line] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.lines


def _y_steps(values: list[float]) -> tuple[int, int, int]:
    """Zoom on the data (accuracies differ by percents) in 5 % steps, at least 10 % tall.

    Returns the bottom and top in whole 5 % steps (0..20) and how many steps lie between two
    labels; the range is widened to a whole number of labelled intervals, so its top and bottom
    always get a label and a gridline.
    """
    low = max(0, math.floor(round((min(values) - 0.02) * 20, 6)))
    high = min(20, math.ceil(round((max(values) + 0.02) * 20, 6)))
    if high - low < 2:
        low, high = max(0, high - 2), max(high, min(20, low + 2))
    every = 1 if high - low <= 6 else 2 if high - low <= 12 else 4
    missing = -(high - low) % every  # 20 steps (0-100 %) divide by every: always room
    grown = min(20, high + missing)
    return low - (missing - (grown - high)), grown, every


def line_chart(
    series: dict[str, list[tuple[datetime, float, int]]], width: int = 720, height: int = 260
) -> Chart:
    """Lay out accuracy-over-time series (time on x, accuracy on y) in SVG coordinates."""
    chart = Chart(width=width, height=height, left=52, top=14, right=width - 16, bottom=height - 30)
    points = [p for values in series.values() for p in values]
    if not points:
        return chart
    t0 = min(p[0] for p in points).timestamp()
    t1 = max(p[0] for p in points).timestamp()
    low_step, high_step, every = _y_steps([p[1] for p in points])
    low, high = low_step / 20, high_step / 20

    def x(t: datetime) -> float:
        if t1 == t0:
            return (chart.left + chart.right) / 2
        return chart.left + (t.timestamp() - t0) / (t1 - t0) * (chart.right - chart.left)

    def y(v: float) -> float:
        return chart.bottom - (v - low) / (high - low) * (chart.bottom - chart.top)

    for name, values in sorted(series.items()):
        coords = [
            (round(x(t), 1), round(y(v), 1), f"{v:.1%} after {n} label{'s' * (n != 1)}")
            for t, v, n in values
        ]
        chart.lines.append(
            Line(name=name, points=" ".join(f"{a},{b}" for a, b, _ in coords), dots=coords)
        )
    chart.y_ticks = [
        (round(y(i / 20), 1), f"{i / 20:.0%}") for i in range(low_step, high_step + 1, every)
    ]
    fmt = "%H:%M:%S" if t1 - t0 < 86400 else "%Y-%m-%d %H:%M"
    first, last = min(p[0] for p in points), max(p[0] for p in points)
    chart.x_ticks = [(chart.left, first.strftime(fmt) + " UTC")]
    if t1 > t0:
        chart.x_ticks.append((chart.right, last.strftime(fmt) + " UTC"))
    return chart
