"""Server-side SVG geometry: line charts with interval bands over labelled outcomes, and
GrowthBook-style interval bars around zero. No JavaScript, no CDN, nothing for the CSP to block."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

MINUS = "\u2212"


@dataclass(frozen=True)
class Point:
    """One point of a series: x (labelled outcomes), y, its interval, and a hover title."""

    x: float
    y: float
    low: float | None = None
    high: float | None = None
    title: str = ""


@dataclass
class Line:
    """One series, as an SVG ``points`` string, its interval band polygon and its dots."""

    name: str
    points: str
    dots: list[tuple[float, float, str]]
    band: str = ""
    #: The arm's colour (``s0`` … ``s5`` in the stylesheet): the same arm, the same colour.
    colour: int = 0


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
    #: The y of the zero line on a difference chart (None on an accuracy chart).
    zero: float | None = None

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


def _accuracy_ticks(values: list[float]) -> list[tuple[float, str]]:
    """(value, label) of the accuracy axis in 5 % steps."""
    low, high, every = _y_steps(values)
    return [(i / 20, f"{i / 20:.0%}") for i in range(low, high + 1, every)]


#: Steps of a difference axis, in accuracy units (0.01 = one point).
_DIFFERENCE_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def points_text(value: float, digits: int = 1) -> str:
    """0.008 -> "+0.8", -0.012 -> "−1.2", in points, with a real minus sign."""
    text = f"{abs(value) * 100:.{digits}f}"
    if not text.strip("0."):
        return text
    return ("+" if value > 0 else MINUS) + text


def _difference_ticks(values: list[float]) -> list[tuple[float, str]]:
    """(value, label) of a difference axis that always shows zero: 2 to 6 steps of a round size."""
    low, high = min(0.0, *values), max(0.0, *values)
    span = max(high - low, 0.002)
    step = next((s for s in _DIFFERENCE_STEPS if span / s <= 6), 0.5)
    first = math.floor(round(low / step, 6))
    last = math.ceil(round(high / step, 6))
    if last - first < 2:
        last = first + 2 if last > 0 or first == 0 else last
        first = min(first, last - 2)
    digits = 1 if step < 0.01 else 0
    return [(i * step, points_text(i * step, digits)) for i in range(first, last + 1)]


def _count(value: float) -> str:
    return f"{int(round(value)):,}"


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    kind: str = "accuracy",
    colours: Sequence[str] = (),
    width: int = 720,
    height: int = 260,
) -> Chart:
    """Lay out series over labelled outcomes (x) in SVG coordinates, with their interval bands.

    ``kind`` "accuracy" zooms a percent axis in 5 % steps; "difference" draws a points axis
    around a zero line. Early intervals can be very wide, so the y range covers every value but
    the bands of only the later half of each series; bands are clipped to the plot. A series'
    colour is its name's place in ``colours`` (else in ``series``).
    """
    if kind not in ("accuracy", "difference"):
        raise ValueError(f"kind must be 'accuracy' or 'difference', got {kind!r}")
    chart = Chart(width=width, height=height, left=52, top=14, right=width - 16, bottom=height - 30)
    points = [p for values in series.values() for p in values]
    if not points:
        return chart
    values = [p.y for p in points]
    for values_of in series.values():
        for p in values_of[len(values_of) // 2 :]:
            values += [v for v in (p.low, p.high) if v is not None]
    ticks = _accuracy_ticks(values) if kind == "accuracy" else _difference_ticks(values)
    low, high = ticks[0][0], ticks[-1][0]
    x0, x1 = 0.0, max(p.x for p in points)

    def x(value: float) -> float:
        if x1 == x0:
            return (chart.left + chart.right) / 2
        return chart.left + (value - x0) / (x1 - x0) * (chart.right - chart.left)

    def y(value: float) -> float:
        clipped = min(high, max(low, value))
        return chart.bottom - (clipped - low) / (high - low) * (chart.bottom - chart.top)

    order = list(dict.fromkeys([*colours, *series]))
    for name, values_of in series.items():
        coords = [(round(x(p.x), 1), round(y(p.y), 1), p.title) for p in values_of]
        banded = [
            (p.x, p.low, p.high) for p in values_of if p.low is not None and p.high is not None
        ]
        upper = [f"{round(x(px), 1)},{round(y(hi), 1)}" for px, _, hi in banded]
        lower = [f"{round(x(px), 1)},{round(y(lo), 1)}" for px, lo, _ in reversed(banded)]
        chart.lines.append(
            Line(
                name=name,
                points=" ".join(f"{a},{b}" for a, b, _ in coords),
                dots=coords,
                band=" ".join(upper + lower) if len(banded) > 1 else "",
                colour=order.index(name) % 6,
            )
        )
    chart.y_ticks = [(round(y(v), 1), label) for v, label in ticks]
    if kind == "difference":
        chart.zero = round(y(0.0), 1)
    chart.x_ticks = [(chart.left, "0")]
    if x1 > x0:
        chart.x_ticks.append((chart.right, f"{_count(x1)} labelled outcomes"))
    return chart


@dataclass
class Bar:
    """One comparison's interval around zero, GrowthBook-style, in a small SVG."""

    width: int
    height: int
    zero: float
    #: The always-valid (sequential) interval, drawn as the bar.
    low: float | None
    high: float | None
    #: The fixed-horizon 95% interval, drawn as a thin line.
    ci_low: float | None
    ci_high: float | None
    estimate: float
    #: ``win`` (interval above zero), ``loss`` (below) or ``flat`` (it contains zero).
    outcome: str
    label: str
    ticks: list[tuple[float, str]]


def _domain(comparisons: Mapping[str, Mapping[str, Any]]) -> float:
    """Half the width of the shared axis: the largest bound, rounded up to a round size."""
    bounds = [0.005]
    for c in comparisons.values():
        for section in ("absolute", "sequential"):
            for key in ("ci_low", "ci_high"):
                value = (c.get(section) or {}).get(key)
                if value is not None:
                    bounds.append(abs(value))
    widest = max(bounds)
    return next((s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5) if widest <= s), 1.0)


def interval_bars(
    comparisons: Mapping[str, Mapping[str, Any]], width: int = 320, height: int = 40
) -> dict[str, Bar | None]:
    """A bar per comparison on one shared axis, so arms compare at a glance; None for an arm
    without a difference yet."""
    half = _domain(comparisons)
    margin = 12

    def x(value: float) -> float:
        clipped = min(half, max(-half, value))
        return round(margin + (clipped + half) / (2 * half) * (width - 2 * margin), 1)

    ticks = [(x(-half), points_text(-half, 0)), (x(0.0), "0"), (x(half), points_text(half, 0))]
    bars: dict[str, Bar | None] = {}
    for arm, c in comparisons.items():
        absolute, sequential = c.get("absolute") or {}, c.get("sequential") or {}
        estimate = absolute.get("difference")
        if estimate is None:
            bars[arm] = None
            continue
        low, high = sequential.get("ci_low"), sequential.get("ci_high")
        outcome = "flat"
        if low is not None and low > 0:
            outcome = "win"
        elif high is not None and high < 0:
            outcome = "loss"
        interval = (
            f"always-valid 95% interval {points_text(low)} to {points_text(high)} points"
            if low is not None and high is not None
            else "no interval yet"
        )
        bars[arm] = Bar(
            width=width,
            height=height,
            zero=x(0.0),
            low=None if low is None else x(low),
            high=None if high is None else x(high),
            ci_low=None if absolute.get("ci_low") is None else x(absolute["ci_low"]),
            ci_high=None if absolute.get("ci_high") is None else x(absolute["ci_high"]),
            estimate=x(estimate),
            outcome=outcome,
            label=f"{arm} minus control: {points_text(estimate)} points, {interval}",
            ticks=ticks,
        )
    return bars


def _seq_text(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "no interval yet"
    return f"always-valid 95% interval {points_text(low)} to {points_text(high)}"


def _arms(series: Mapping[str, Any]) -> list[str]:
    """Every arm in the experiment's order (the control first), so colours match across charts."""
    return list(series["accuracy"])


def lift_chart(series: Mapping[str, Any]) -> Chart:
    """The difference of each arm from the control over labelled outcomes, with its
    always-valid interval as a band (``Reports.lift_series``' ``lift``)."""
    lines = {
        arm: [
            Point(
                p["labelled"],
                p["difference"],
                p["ci_low"],
                p["ci_high"],
                f"{points_text(p['difference'])} points after {_count(p['labelled'])} labelled "
                f"outcomes ({_seq_text(p['ci_low'], p['ci_high'])})",
            )
            for p in points
        ]
        for arm, points in series["lift"].items()
        if points
    }
    return line_chart(lines, kind="difference", colours=_arms(series))


def accuracy_chart(series: Mapping[str, Any]) -> Chart:
    """Each arm's cumulative accuracy over labelled outcomes with its 95% interval as a band
    (``Reports.lift_series``' ``accuracy``)."""
    lines = {
        arm: [
            Point(
                p["labelled"],
                p["accuracy"],
                p["ci_low"],
                p["ci_high"],
                f"{p['accuracy']:.1%} after {p['arm_labelled']} label"
                + ("s" if p["arm_labelled"] != 1 else ""),
            )
            for p in points
        ]
        for arm, points in series["accuracy"].items()
        if points
    }
    return line_chart(lines, kind="accuracy", colours=_arms(series))


@dataclass
class Reliability:
    """A reliability diagram: per confidence bin, a bar at its accuracy, and the diagonal a
    perfectly calibrated model would follow."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    #: (x, y, width, height, title) of each non-empty bin's bar.
    bars: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    #: (x, y, width, title) of each non-empty bin's mean-confidence marker.
    gaps: list[tuple[float, float, float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    #: The diagonal from (0, 0) to (1, 1), as an SVG ``points`` string.
    diagonal: str = ""

    @property
    def empty(self) -> bool:
        return not self.bars


def reliability_diagram(
    bins: Sequence[Mapping[str, Any]], *, width: int = 320, height: int = 240
) -> Reliability:
    """Lay out ``serving.monitoring.calibration``' bins: bar height = accuracy of the bin, a
    marker at its mean confidence (the gap between them is the miscalibration)."""
    chart = Reliability(width, height, left=40, top=10, right=width - 10, bottom=height - 28)
    span_x, span_y = chart.right - chart.left, chart.bottom - chart.top

    def x(value: float) -> float:
        return round(chart.left + value * span_x, 1)

    def y(value: float) -> float:
        return round(chart.bottom - value * span_y, 1)

    for b in bins:
        if not b["count"]:
            continue
        left, right = x(b["low"]), x(b["high"])
        top = y(b["accuracy"])
        title = (
            f"confidence {b['low']:.0%}–{b['high']:.0%}: {b['count']} labelled, accuracy "
            f"{b['accuracy']:.1%}, mean confidence {b['confidence']:.1%}"
        )
        chart.bars.append(
            (left + 1, top, round(right - left - 2, 1), round(chart.bottom - top, 1), title)
        )
        chart.gaps.append((left + 1, y(b["confidence"]), round(right - left - 2, 1), title))
    steps = (0.0, 0.25, 0.5, 0.75, 1.0)
    chart.x_ticks = [(x(v), f"{v:.0%}") for v in steps]
    chart.y_ticks = [(y(v), f"{v:.0%}") for v in steps]
    chart.diagonal = f"{x(0)},{y(0)} {x(1)},{y(1)}"
    return chart
