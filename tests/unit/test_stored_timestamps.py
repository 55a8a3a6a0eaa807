"""Every stored moment reads back as an aware UTC datetime, on SQLite as on PostgreSQL.

SQLite keeps timestamps as text without a zone; before the shared column type, rows read
back naive there, and comparing them with ``utc_now()`` raised ``TypeError`` (token expiry,
API schemas) on SQLite only, while PostgreSQL passed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from cloud.core.db import make_engine, migrate
from cloud.core.timestamps import as_utc
from cloud.security.tables import ApiToken

BERLIN_WINTER = timezone(timedelta(hours=1))


def _store_and_read(url: str) -> tuple[ApiToken, list[str]]:
    migrate(url)
    engine = make_engine(url)
    written = datetime(2026, 12, 6, 9, 30, tzinfo=BERLIN_WINTER)  # 08:30 UTC
    with Session(engine) as session:
        session.add(ApiToken(id="t1", name="ops", role="operator", token_sha256="a" * 64, expires_at=written))
        session.add(ApiToken(id="t2", name="later", role="operator", token_sha256="b" * 64,
                             expires_at=written + timedelta(hours=2)))
        session.commit()
    with Session(engine) as session:
        row = session.get(ApiToken, "t1")
        assert row is not None
        # A bound aware value of another zone compares as the same instant.
        expiring_by_09_utc = session.exec(select(ApiToken.id).where(
            col(ApiToken.expires_at) <= datetime(2026, 12, 6, 10, 0, tzinfo=BERLIN_WINTER))).all()
    engine.dispose()
    return row, list(expiring_by_09_utc)


def _check(row: ApiToken, expiring: list[str]) -> None:
    assert row.expires_at is not None and row.created_at is not None
    assert row.expires_at.tzinfo is not None and row.expires_at.utcoffset() == timedelta(0)
    assert row.expires_at == datetime(2026, 12, 6, 8, 30, tzinfo=UTC)
    assert row.created_at.utcoffset() == timedelta(0)
    assert datetime.now(UTC) - row.created_at < timedelta(days=1)  # aware arithmetic, no TypeError
    assert expiring == ["t1"]


def test_a_moment_stored_in_sqlite_reads_back_as_the_same_instant_in_utc(tmp_path: Path) -> None:
    _check(*_store_and_read(f"sqlite:///{tmp_path / 'ts.db'}"))


def test_a_moment_stored_in_the_test_database_reads_back_as_the_same_instant_in_utc(database_url: str) -> None:
    _check(*_store_and_read(database_url))


@pytest.mark.parametrize("moment", [datetime(2026, 1, 1, 12), datetime(2026, 1, 1, 13, tzinfo=BERLIN_WINTER)])
def test_as_utc_takes_naive_moments_as_utc_and_converts_aware_ones(moment: datetime) -> None:
    assert as_utc(moment) == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert as_utc(moment).tzinfo is UTC
