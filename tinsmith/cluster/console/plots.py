"""Metric plots as inline SVG: one line per metric over steps, a dot per point.

A run may hold 10,000 points per metric; a plot draws at most ``MAX_POINTS`` (the mean of each
run of neighbouring steps beyond that), so a page stays small and fast at any length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tinsmith.cluster.console.html import esc

MAX_POINTS = 400
WIDTH, HEIGHT = 460, 220
LEFT, RIGHT, TOP, BOTTOM = 58, 12, 24, 30


def downsample(points: Sequence[tuple[float, float]], limit: int) -> list[tuple[float, float]]:
    """At most ``limit`` points: the mean of each of ``limit`` equal runs of consecutive points."""
    if len(points) <= limit:
        return list(points)
    out = []
    for i in range(limit):
        chunk = points[i * len(points) // limit : (i + 1) * len(points) // limit]
        out.append((sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)))
    return out


def _ticks(low: float, high: float, whole: bool = False) -> list[float]:
    """Round values between ``low`` and ``high``, at most ~6 (whole numbers only: steps)."""
    if high == low:
        return [low]
    span = high - low
    step = 10 ** math.floor(math.log10(span / 4))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 5:
            step *= factor
            break
    if whole:
        step = max(1.0, float(round(step)))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_plot(name: str, points: Sequence[tuple[float, float]]) -> str:
    """An SVG plot of ``points`` (step, value), titled ``name``; non-finite values skipped."""
    finite = [(x, y) for x, y in points if math.isfinite(y)]
    shown = downsample(finite, MAX_POINTS)
    title = f'<text x="{LEFT}" y="15" font-weight="bold">{esc(name)}</text>'
    if not shown:
        return (
            f'<svg class="plot" data-metric="{esc(name)}" width="{WIDTH}" height="{HEIGHT}">'
            f'{title}<text x="{LEFT}" y="{HEIGHT // 2}">no points</text></svg>'
        )
    xs, ys = [p[0] for p in shown], [p[1] for p in shown]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:  # a constant: a band around it, in its own scale
        pad = abs(y0) * 0.5 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (inner_w * (x - x0) / (x1 - x0) if x1 > x0 else inner_w / 2)

    def sy(y: float) -> float:
        return TOP + inner_h * (1 - (y - y0) / (y1 - y0))

    parts = [title]
    for tick in _ticks(y0, y1):
        y = sy(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>'
        )
    for tick in _ticks(x0, x1, whole=True) if x1 > x0 else [x0]:
        parts.append(
            f'<text x="{sx(tick):.1f}" y="{HEIGHT - 10}" text-anchor="middle">{_label(tick)}</text>'
        )
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in shown)
    parts.append(f'<polyline class="line" points="{path}"/>')
    parts.extend(
        f'<circle class="point" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5">'
        f"<title>step {_label(x)}: {_label(y)}</title></circle>"
        for x, y in shown
    )
    return (
        f'<svg class="plot" data-metric="{esc(name)}" data-points="{len(shown)}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img">{"".join(parts)}</svg>'
    )
