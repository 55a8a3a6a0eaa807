"""One way to show a moment to people: ``2026-12-05 18:20:03 UTC``, everywhere.

The dashboard, its charts and the CLI's tables all format through here, so an operator
never has to guess a zone or compare "3 min ago" with a 12-hour local clock. Naive
datetimes (SQLite hands them back without a zone) are UTC: the control plane stores
nothing else.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

__all__ = ["DISPLAY_PATTERN", "format_utc", "looks_like_timestamp", "parse_utc", "relative"]

DISPLAY_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
# What every shown timestamp looks like (tests check pages against it).
DISPLAY_PATTERN = re.compile(r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC\b")
# An ISO 8601 timestamp as the API serves it, with or without a zone.
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$")


def parse_utc(value: Any) -> datetime | None:
    """``value`` (a datetime, an ISO string, or epoch seconds) as an aware UTC datetime, else None."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        if not _ISO.match(value.strip()):
            return None
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def looks_like_timestamp(value: Any) -> bool:
    return isinstance(value, datetime) or (isinstance(value, str) and bool(_ISO.match(value.strip())))


def format_utc(value: Any, missing: str = "\u2013") -> str:
    """``2026-12-05 18:20:03 UTC``; ``missing`` (an en dash) when there is no moment."""
    moment = parse_utc(value)
    return moment.strftime(DISPLAY_FORMAT) if moment is not None else missing


def relative(value: Any, now: datetime | None = None) -> str:
    """"3 min ago" (or "in 3 min" for a moment ahead): a companion to :func:`format_utc`, never instead of it."""
    moment = parse_utc(value)
    if moment is None:
        return ""
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    ahead, seconds = seconds < 0, abs(seconds)
    if seconds < 90:
        amount = f"{int(seconds)} s"
    elif seconds < 5400:
        amount = f"{int(seconds // 60)} min"
    elif seconds < 172800:
        amount = f"{int(seconds // 3600)} h"
    else:
        amount = f"{int(seconds // 86400)} d"
    return f"in {amount}" if ahead else f"{amount} ago"
