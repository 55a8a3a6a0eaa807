"""Leader election through the database: one lease row per singleton job.

Several control-plane nodes share one PostgreSQL; work that must run once per fleet
(retention, downsampling) runs on the node holding the lease. Acquiring or renewing
is one conditional ``UPDATE`` (the row lock makes concurrent attempts serialise: the
second one re-evaluates the condition and finds the lease taken), falling back to an
``INSERT`` for the first ever holder. A node that dies stops renewing; another takes
over when ``expires_at`` passes. ``term`` increases with every change of holder so
work can be fenced. Works on SQLite too (writes are serialised there anyway).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, case, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from cloud.core.timestamps import utc_now
from cloud.workers.tables import LeaderLease

__all__ = ["Lease"]


class Lease:
    def __init__(self, engine: Engine, name: str, holder: str, *, ttl_s: float = 60.0) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder
        self.ttl_s = ttl_s
        self.term: int | None = None

    def try_acquire(self, now: datetime | None = None) -> bool:
        """Take or renew the lease. Returns True while this holder leads."""
        now = now or utc_now()
        expires_at = now + timedelta(seconds=self.ttl_s)
        with Session(self.engine) as session:
            result = session.execute(
                update(LeaderLease)
                .where(col(LeaderLease.name) == self.name)
                .where((col(LeaderLease.holder) == self.holder) | (col(LeaderLease.expires_at) < now))
                .values(
                    term=case((col(LeaderLease.holder) == self.holder, LeaderLease.term), else_=LeaderLease.term + 1),
                    holder=self.holder,
                    expires_at=expires_at,
                )
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                session.commit()
                self.term = session.get(LeaderLease, self.name).term  # type: ignore[union-attr]
                return True
            session.rollback()
            if session.get(LeaderLease, self.name) is not None:
                self.term = None
                return False
            session.add(LeaderLease(name=self.name, holder=self.holder, expires_at=expires_at, term=1))
            try:
                session.commit()
            except IntegrityError:  # another node inserted it first
                session.rollback()
                self.term = None
                return False
            self.term = 1
            return True

    def release(self) -> None:
        """Give the lease up now (on a clean shutdown) so another node need not wait for expiry."""
        with Session(self.engine) as session:
            session.execute(
                update(LeaderLease)
                .where(col(LeaderLease.name) == self.name, col(LeaderLease.holder) == self.holder)
                .values(expires_at=utc_now() - timedelta(seconds=1))
            )
            session.commit()
        self.term = None
