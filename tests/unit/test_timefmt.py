"""One timestamp style for people: ``2026-12-05 18:20:03 UTC``; naive values are UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from cloud.cli.client import cell
from cloud.timefmt import DISPLAY_PATTERN, format_utc, parse_utc, relative


def test_every_input_shape_formats_to_the_one_style_in_utc() -> None:
    expected = "2026-12-05 18:20:03 UTC"
    plus_two = timezone(timedelta(hours=2))
    for value in ("2026-12-05T18:20:03", "2026-12-05T18:20:03.123456", "2026-12-05T18:20:03Z",
                  "2026-12-05T20:20:03+02:00", "2026-12-05 18:20:03", datetime(2026, 12, 5, 18, 20, 3),
                  datetime(2026, 12, 5, 20, 20, 3, tzinfo=plus_two), datetime(2026, 12, 5, 18, 20, 3, tzinfo=UTC)):
        assert format_utc(value) == expected, value
    assert DISPLAY_PATTERN.fullmatch(expected)
    assert parse_utc("2026-12-05T18:20:03") == datetime(2026, 12, 5, 18, 20, 3, tzinfo=UTC)  # naive = UTC
    assert format_utc(None) == "\u2013" and format_utc("not a time") == "\u2013"


def test_relative_time_reads_both_ways() -> None:
    now = datetime(2026, 12, 5, 18, 20, 3, tzinfo=UTC)
    assert relative("2026-12-05T18:17:03", now) == "3 min ago"
    assert relative("2026-12-05T18:20:00", now) == "3 s ago"
    assert relative(now + timedelta(hours=3), now) == "in 3 h"


def test_cli_table_cells_show_timestamps_in_the_same_style_and_leave_other_text_alone() -> None:
    assert cell("2026-12-05T18:20:03.5+00:00") == "2026-12-05 18:20:03 UTC"
    assert cell(datetime(2026, 12, 5, 18, 20, 3)) == "2026-12-05 18:20:03 UTC"
    assert cell("shapes-2") == "shapes-2" and cell("2026-12-05") == "2026-12-05" and cell(None) == "-"
