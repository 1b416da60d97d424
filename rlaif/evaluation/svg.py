"""Tiny inline-SVG charts for the HTML report: line charts, a 2-D plane with error bars, grouped bars.

No JavaScript, no external files, no plotting library: each function returns one `<svg class="plot">` element
with explicit width/height (so it has a size before any CSS) and a `data-plot` name the page test looks for.
All text is escaped. A chart with no data says so inside the same box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import NamedTuple

WIDTH, HEIGHT = 520, 300
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 34, 46
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")


class PlanePoint(NamedTuple):
    """A labelled point with optional 95 % intervals on both axes."""

    label: str
    x: float
    y: float
    x_interval: tuple[float, float] | None = None
    y_interval: tuple[float, float] | None = None
    colour: str = PALETTE[0]


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high <= low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 0.5:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


class _Frame:
    """Data-to-pixel mapping of the plotting area."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float]):
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return HEIGHT - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)


def _open(name: str, title: str) -> list[str]:
    return [
        f'<svg class="plot" data-plot="{escape(name)}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]


def _axes(frame: _Frame, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str) -> list[str]:
    parts = []
    bottom, top = HEIGHT - BOTTOM, TOP
    for y in y_ticks:
        if frame.y0 - 1e-9 <= y <= frame.y1 + 1e-9:
            py = frame.py(y)
            parts.append(f'<line x1="{LEFT}" y1="{py:.1f}" x2="{WIDTH - RIGHT}" y2="{py:.1f}" stroke="#e5e5e5"/>')
            parts.append(f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end" font-size="11">{_fmt(y)}</text>')
    for x in x_ticks:
        if frame.x0 - 1e-9 <= x <= frame.x1 + 1e-9:
            px = frame.px(x)
            parts.append(f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 4}" stroke="#333"/>')
            parts.append(f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11">{_fmt(x)}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="#333"/>')
    parts.append(f'<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#333"/>')
    parts.append(
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="12">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>'
    )
    return parts


def _legend(labels: Sequence[tuple[str, str]]) -> list[str]:
    parts = []
    for index, (label, colour) in enumerate(labels):
        y = TOP + 6 + index * 16
        parts.append(f'<rect x="{WIDTH - RIGHT - 150}" y="{y - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT - 136}" y="{y + 1}" font-size="11">{escape(label)}</text>')
    return parts


def empty_chart(name: str, title: str, message: str) -> str:
    """A framed box with a message instead of data."""
    parts = _open(name, title)
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{HEIGHT - TOP - BOTTOM}" fill="#fafafa" stroke="#ccc"/>'
    )
    parts.append(
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" font-size="13" fill="#666">{escape(message)}</text>'
    )
    return "\n".join([*parts, "</svg>"])


def line_chart(
    name: str,
    title: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]],
    x_label: str,
    y_label: str,
) -> str:
    """Lines of (label, xs, ys); a None y breaks the line. Points are drawn too, so one-point series show."""
    points = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys, strict=True) if y is not None and math.isfinite(y)]
    if not points:
        return empty_chart(name, title, "no data")
    xs_all = [p[0] for p in points]
    ys_all = [p[1] for p in points]
    x_ticks = nice_ticks(min(xs_all), max(xs_all))
    y_ticks = nice_ticks(min(ys_all), max(ys_all))
    frame = _Frame((x_ticks[0], x_ticks[-1]), (y_ticks[0], y_ticks[-1]))
    parts = _open(name, title) + _axes(frame, x_ticks, y_ticks, x_label, y_label)
    legend = []
    for index, (label, xs, ys) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        legend.append((label, colour))
        segment: list[str] = []
        segments: list[list[str]] = []
        for x, y in zip(xs, ys, strict=True):
            if y is None or not math.isfinite(y):
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{frame.px(x):.1f},{frame.py(y):.1f}")
            parts.append(f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.5" fill="{colour}"/>')
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" stroke-width="2"/>')
    parts += _legend(legend)
    return "\n".join([*parts, "</svg>"])


def plane(name: str, title: str, points: Sequence[PlanePoint], x_label: str, y_label: str) -> str:
    """Points on [0, 1] x [0, 1] with dashed lines at 1/2 and whiskers for the intervals."""
    if not points:
        return empty_chart(name, title, "no data")
    frame = _Frame((0.0, 1.0), (0.0, 1.0))
    ticks = [0.0, 0.25, 0.5, 0.75, 1.0]
    parts = _open(name, title) + _axes(frame, ticks, ticks, x_label, y_label)
    half_x, half_y = frame.px(0.5), frame.py(0.5)
    parts.append(
        f'<line x1="{half_x:.1f}" y1="{TOP}" x2="{half_x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#999" stroke-dasharray="4 3"/>'
    )
    parts.append(
        f'<line x1="{LEFT}" y1="{half_y:.1f}" x2="{WIDTH - RIGHT}" y2="{half_y:.1f}" stroke="#999" stroke-dasharray="4 3"/>'
    )
    for point in points:
        cx, cy = frame.px(point.x), frame.py(point.y)
        if point.x_interval:
            lo, hi = point.x_interval
            parts.append(
                f'<line x1="{frame.px(lo):.1f}" y1="{cy:.1f}" x2="{frame.px(hi):.1f}" y2="{cy:.1f}" stroke="{point.colour}"/>'
            )
        if point.y_interval:
            lo, hi = point.y_interval
            parts.append(
                f'<line x1="{cx:.1f}" y1="{frame.py(lo):.1f}" x2="{cx:.1f}" y2="{frame.py(hi):.1f}" stroke="{point.colour}"/>'
            )
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{point.colour}" stroke="#000"/>')
        parts.append(f'<text x="{cx + 9:.1f}" y="{cy - 8:.1f}" font-size="12">{escape(point.label)}</text>')
    return "\n".join([*parts, "</svg>"])


def bar_chart(
    name: str,
    title: str,
    categories: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float | None]]],
    y_label: str,
    y_max: float | None = None,
    colours: Sequence[str] | None = None,
) -> str:
    """Grouped vertical bars: one cluster per category, one bar per group (None = no bar), `colours` per group."""
    values = [v for _, vs in groups for v in vs if v is not None and math.isfinite(v)]
    if not categories or not values:
        return empty_chart(name, title, "no data")
    top = y_max if y_max is not None else max(max(values), 1e-9)
    y_ticks = nice_ticks(min(0.0, min(values)), top)
    frame = _Frame((0.0, float(len(categories))), (y_ticks[0], y_ticks[-1]))
    parts = _open(name, title) + _axes(frame, [], y_ticks, "", y_label)
    palette = list(colours) if colours else [PALETTE[g % len(PALETTE)] for g in range(len(groups))]
    slot = (WIDTH - LEFT - RIGHT) / len(categories)
    bar = slot * 0.8 / max(len(groups), 1)
    zero = frame.py(max(0.0, frame.y0))
    for c, category in enumerate(categories):
        for g, (_, vs) in enumerate(groups):
            value = vs[c]
            if value is None or not math.isfinite(value):
                continue
            x = LEFT + c * slot + slot * 0.1 + g * bar
            y = frame.py(value)
            height = max(abs(zero - y), 1.0)  # a zero still shows as a hairline
            parts.append(
                f'<rect x="{x:.1f}" y="{min(y, zero):.1f}" width="{max(bar - 2, 1):.1f}" height="{height:.1f}" '
                f'fill="{palette[g]}"><title>{escape(category)}: {_fmt(value)}</title></rect>'
            )
        label = category if len(category) <= 16 else category[:15] + "…"
        parts.append(
            f'<text x="{LEFT + (c + 0.5) * slot:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11">{escape(label)}</text>'
        )
    if len(groups) > 1:
        parts += _legend([(label, palette[g]) for g, (label, _) in enumerate(groups)])
    return "\n".join([*parts, "</svg>"])
