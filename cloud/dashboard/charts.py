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

from cloud.timefmt import format_utc

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


def _span_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def line_chart(title: str, series: Sequence[Series], *, unit: str = "", axis_label: str = "", width: int = 520,
               height: int = 170, chart_id: str = "chart", y_min: float | None = None,
               y_max: float | None = None) -> Markup:
    """An accessible SVG line chart (``role="img"`` with a title and a text summary).

    Every chart carries a legend (a colour swatch and a name per series), the y axis's
    quantity and unit (``axis_label``, else ``unit``), and the time range it covers, in
    the dashboard's one timestamp style. Points with a ``None`` value break the line
    (a gap, not a drop to zero).
    """
    pad_left, pad_right, pad_top, pad_bottom = 62, 10, 26, 36
    y_title = axis_label or unit.strip() or "value"
    values = [v for s in series for _, v in s.points if v is not None and math.isfinite(v)]
    times = [t.timestamp() for s in series for t, v in s.points if v is not None]
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    plot_w, plot_h = width - pad_left - pad_right, height - pad_top - pad_bottom
    head = (f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
            f'aria-labelledby="{title_id} {desc_id}" data-chart="{escape(chart_id)}">'
            f'<title id="{title_id}">{escape(title)}</title>')
    legend = ['<g class="legend" data-legend="">']
    for index, one in enumerate(series):
        color = _PALETTE[index % len(_PALETTE)]
        x0 = pad_left + index * 150
        legend.append(f'<rect x="{x0}" y="6" width="10" height="10" fill="{color}"/>'
                      f'<text class="legend-label" x="{x0 + 14}" y="15">{escape(one.label)}</text>')
    legend.append("</g>")
    y_axis_title = (f'<text class="axis-label" data-axis="y" transform="rotate(-90)" x="{-(pad_top + plot_h / 2):.0f}" '
                    f'y="12" text-anchor="middle">{escape(y_title)}</text>')
    if not values:
        return Markup(f'{head}<desc id="{desc_id}">No data yet.</desc>{"".join(legend)}{y_axis_title}'
                      f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="chart-empty">'
                      f'no data yet</text></svg>')
    low = min(values) if y_min is None else y_min
    high = max(values) if y_max is None else y_max
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-9)
    first, last = (format_utc(datetime.fromtimestamp(t, UTC)) for t in (t0, t1))

    def x(ts: float) -> float:
        return pad_left + (ts - t0) / span * plot_w if t1 > t0 else pad_left + plot_w

    def y(value: float) -> float:
        return pad_top + (1 - (value - low) / (high - low)) * plot_h

    parts = [head.replace('data-chart=', f'data-from="{first}" data-to="{last}" data-chart=', 1)]
    summaries = []
    for one in series:
        latest = next((v for _, v in reversed(one.points) if v is not None), None)
        summaries.append(f"{one.label}: latest {_fmt(latest)}{unit}" if latest is not None else f"{one.label}: no data")
    parts.append(f'<desc id="{desc_id}">{escape("; ".join(summaries))}; {escape(y_title)} from {_fmt(low)} to '
                 f'{_fmt(high)}{escape(unit)} over {len(values)} points, {first} to {last}.</desc>')
    parts.extend(legend)
    parts.append(y_axis_title)
    parts.append(f'<line class="axis" x1="{pad_left}" y1="{pad_top}" x2="{pad_left}" y2="{pad_top + plot_h}"/>'
                 f'<line class="axis" x1="{pad_left}" y1="{pad_top + plot_h}" x2="{pad_left + plot_w}" '
                 f'y2="{pad_top + plot_h}"/>')
    parts.append(f'<text class="tick" x="{pad_left - 4}" y="{pad_top + 4}" text-anchor="end">{_fmt(high)}{escape(unit)}</text>'
                 f'<text class="tick" x="{pad_left - 4}" y="{pad_top + plot_h}" text-anchor="end">{_fmt(low)}{escape(unit)}</text>')
    # Time axis: the covered range, first and last sample, in the dashboard's one timestamp style.
    parts.append(f'<text class="tick" x="{pad_left}" y="{pad_top + plot_h + 14}">{first}</text>'
                 f'<text class="tick" x="{pad_left + plot_w}" y="{pad_top + plot_h + 14}" text-anchor="end">{last}</text>'
                 f'<text class="axis-label range" data-axis="x" x="{pad_left + plot_w / 2:.0f}" y="{height - 4}" '
                 f'text-anchor="middle">time (UTC), {_span_text(t1 - t0)} covered</text>')
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
    parts.append("</svg>")
    return Markup("".join(parts))
