"""Inline SVG line charts, rendered on the server: no chart library, no network, no JS.

Pure functions over data, so they are tested without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

__all__ = ["Series", "line_chart"]

_PALETTE = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df")


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[tuple[datetime, float | None]]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.1f}"
    return f"{value:.3f}"


def line_chart(title: str, series: Sequence[Series], *, unit: str = "", width: int = 520, height: int = 150,
               chart_id: str = "chart", y_min: float | None = None, y_max: float | None = None) -> Markup:
    """An accessible SVG line chart (``role="img"`` with a title and a text summary).

    Points with a ``None`` value break the line (a gap, not a drop to zero).
    """
    pad_left, pad_right, pad_top, pad_bottom = 48, 10, 22, 22
    values = [v for s in series for _, v in s.points if v is not None and math.isfinite(v)]
    times = [t.timestamp() for s in series for t, v in s.points if v is not None]
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    head = (f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-labelledby="{title_id} {desc_id}" data-chart="{escape(chart_id)}">'
            f'<title id="{title_id}">{escape(title)}</title>')
    if not values:
        return Markup(f'{head}<desc id="{desc_id}">No data yet.</desc>'
                      f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="chart-empty">'
                      f'no data yet</text></svg>')
    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-9)
    plot_w, plot_h = width - pad_left - pad_right, height - pad_top - pad_bottom

    def x(ts: float) -> float:
        return pad_left + (ts - t0) / span * plot_w if t1 > t0 else pad_left + plot_w

    def y(value: float) -> float:
        return pad_top + (1 - (value - low) / (high - low)) * plot_h

    parts = [head]
    summaries = []
    for one in series:
        latest = next((v for _, v in reversed(one.points) if v is not None), None)
        summaries.append(f"{one.label}: latest {_fmt(latest)}{unit}" if latest is not None else f"{one.label}: no data")
    parts.append(f'<desc id="{desc_id}">{escape("; ".join(summaries))}; range {_fmt(low)} to {_fmt(high)}{escape(unit)}'
                 f' over {len(values)} points.</desc>')
    parts.append(f'<line class="axis" x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{pad_top + plot_h}"/>'
                 f'<line class="axis" x1="{pad_left}" y1="{pad_top + plot_h}" x2="{pad_left + plot_w}" '
                 f'y2="{pad_top + plot_h}"/>')
    parts.append(f'<text class="tick" x="{pad_left - 4}" y="{pad_top + 4}" text-anchor="end">{_fmt(high)}</text>'
                 f'<text class="tick" x="{pad_left - 4}" y="{pad_top + plot_h}" text-anchor="end">{_fmt(low)}</text>')
    # Time axis: first and last sample, in UTC like every timestamp the API serves.
    first, last = (datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S") for t in (t0, t1))
    parts.append(f'<text class="tick" x="{pad_left}" y="{height - 6}">{first} UTC</text>'
                 f'<text class="tick" x="{pad_left + plot_w}" y="{height - 6}" text-anchor="end">{last}</text>')
    for index, one in enumerate(series):
        color = _PALETTE[index % len(_PALETTE)]
        segments: list[list[str]] = [[]]
        for when, value in sorted(one.points, key=lambda p: p[0]):
            if value is None or not math.isfinite(value):
                segments.append([])
                continue
            segments[-1].append(f"{x(when.timestamp()):.1f},{y(min(max(value, low), high)):.1f}")
        for points in segments:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            elif points:
                parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{" ".join(points)}"/>')
        parts.append(f'<text class="legend" x="{pad_left + 6 + index * 140}" y="14" fill="{color}">'
                     f'{escape(one.label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
