"""The one column type and clock for moments the control plane stores: aware UTC, on every database.

PostgreSQL's ``timestamptz`` hands back aware datetimes; SQLite stores text without a zone
and hands back naive ones, so code that subtracts a stored moment from ``utc_now()`` worked
on one database and raised ``TypeError`` on the other, and API responses lost their zone.
Every table declares its moments with :class:`UtcDateTime`: written as UTC, read back aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field

__all__ = ["UtcDateTime", "as_utc", "timestamp_field", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always binds UTC and always reads back an aware UTC datetime."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        # SQLite keeps the wall-clock digits and drops the offset, so anything but UTC would shift.
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def timestamp_field(**kwargs: Any) -> Any:
    """A column holding a moment, defaulting to now (pass ``default=None`` for one set later)."""
    if "default" not in kwargs and "default_factory" not in kwargs:
        kwargs["default_factory"] = utc_now
    return Field(sa_type=UtcDateTime, **kwargs)
