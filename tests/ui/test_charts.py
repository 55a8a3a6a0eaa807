"""Every dashboard chart says what it shows: a legend, the y axis's unit, the time range covered."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from cloud.dashboard.charts import Series, line_chart
from cloud.timefmt import DISPLAY_PATTERN

T0 = datetime(2026, 12, 5, 18, 10, tzinfo=UTC)


def _points(n: int, step_s: float = 30.0, value: float = 3.0) -> list[tuple[datetime, float | None]]:
    return [(T0 + timedelta(seconds=i * step_s), value + i) for i in range(n)]


def test_a_chart_has_a_legend_entry_per_series_with_its_colour() -> None:
    svg = str(line_chart("Inference latency (ms)", [Series("p50", _points(5)), Series("p95", _points(5, value=6))],
                         unit=" ms", axis_label="latency (ms)", chart_id="lat"))
    legend = re.search(r'<g class="legend" data-legend="">(.*?)</g>', svg)
    assert legend is not None
    labels = re.findall(r'<text class="legend-label"[^>]*>([^<]*)</text>', legend.group(1))
    swatches = re.findall(r'<rect [^>]*fill="(#[0-9a-f]{6})"', legend.group(1))
    assert labels == ["p50", "p95"] and len(set(swatches)) == 2
    # Each swatch's colour is its line's colour.
    assert [m for m in re.findall(r'<polyline fill="none" stroke="(#[0-9a-f]{6})"', svg)] == swatches


def test_a_chart_names_its_y_quantity_with_the_unit_and_the_time_range_it_covers() -> None:
    svg = str(line_chart("Inference latency (ms)", [Series("p95", _points(21))], unit=" ms",
                         axis_label="latency (ms)", chart_id="lat"))
    y_axis = re.search(r'<text class="axis-label" data-axis="y"[^>]*>([^<]*)</text>', svg)
    assert y_axis is not None and y_axis.group(1) == "latency (ms)"
    assert re.search(r'<text class="tick"[^>]*>23\.0 ms</text>', svg)  # tick values carry the unit too
    stamps = DISPLAY_PATTERN.findall(re.sub(r"<desc.*?</desc>", "", svg))
    assert "2026-12-05 18:10:00 UTC" in stamps and "2026-12-05 18:20:00 UTC" in stamps
    x_axis = re.search(r'<text class="axis-label range" data-axis="x"[^>]*>([^<]*)</text>', svg)
    assert x_axis is not None and x_axis.group(1) == "time (UTC), 10 min covered"
    assert 'data-from="2026-12-05 18:10:00 UTC" data-to="2026-12-05 18:20:00 UTC"' in svg
    assert "2026-12-05 18:10:00 UTC to 2026-12-05 18:20:00 UTC" in svg  # in the text summary as well


def test_a_chart_without_a_unit_still_labels_its_axis_and_an_empty_chart_keeps_its_legend() -> None:
    svg = str(line_chart("Drift", [Series("score", _points(3))], chart_id="d"))
    assert re.search(r'data-axis="y"[^>]*>value</text>', svg)
    empty = str(line_chart("Frames per second", [Series("fps", [])], unit=" fps", axis_label="throughput (frames/s)",
                           chart_id="e"))
    assert "no data yet" in empty and 'class="legend-label"' in empty and "throughput (frames/s)" in empty
