"""Telemetry downsampling and retention: the database stays bounded however long a fleet reports.

Three tiers (limits are settings, see :class:`RetentionPolicy`):

=========  =========================  =======================================
tier       kept for (default)          becomes
=========  =========================  =======================================
raw        48 h (``received_at``)      1-minute rollups, in the same transaction
1-minute   14 days (bucket start)      1-hour rollups, in the same transaction
1-hour     400 days                    deleted
=========  =========================  =======================================

Rows are folded into the next tier and deleted in one transaction, so every report
is counted in exactly one tier: totals (reports, frames, errors, class counts) are
preserved exactly; only resolution is lost. Buckets use the device's ``sent_at`` (when
it measured); age uses ``received_at`` (a device with a wrong clock cannot dodge
retention).

Safe on several nodes: rows to fold are read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so two concurrent runs take disjoint rows, and :class:`RetentionWorker` runs only on
the node holding the ``retention`` lease (:mod:`cloud.workers.leader`).

The aggregation itself (:func:`rollup_raw`, :func:`rollup_rollups`) is pure.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from cloud.core.timestamps import utc_now
from cloud.fleet.tables import TelemetryRecord
from cloud.workers.counters import RetentionCounters
from cloud.workers.leader import Lease
from cloud.workers.tables import LeaderLease, TelemetryRollup

__all__ = [
    "Aggregate",
    "RetentionPolicy",
    "RetentionResult",
    "RetentionWorker",
    "bucket_start",
    "rollup_raw",
    "rollup_rollups",
    "run_retention",
]

log = logging.getLogger(__name__)

MINUTE_S = 60
HOUR_S = 3600
RollupKey = tuple[str, str, datetime]  # device_id, model_version ("" for none), bucket start


@dataclass(frozen=True)
class RetentionPolicy:
    raw_keep: timedelta = timedelta(hours=48)
    minute_keep: timedelta = timedelta(days=14)
    hour_keep: timedelta = timedelta(days=400)
    chunk_rows: int = 20_000

    @classmethod
    def from_settings(cls, settings: Any) -> RetentionPolicy:
        return cls(
            raw_keep=timedelta(hours=settings.telemetry_raw_retention_h),
            minute_keep=timedelta(days=settings.telemetry_minute_retention_d),
            hour_keep=timedelta(days=settings.telemetry_hour_retention_d),
        )


def bucket_start(moment: datetime, resolution_s: int) -> datetime:
    """The UTC start of the ``resolution_s`` bucket holding ``moment`` (naive times are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    epoch_s = int(moment.timestamp())
    return datetime.fromtimestamp(epoch_s - epoch_s % resolution_s, UTC)


@dataclass
class Aggregate:
    """Additive telemetry figures for one rollup key (mirrors :class:`TelemetryRollup`)."""

    reports: int = 0
    frames: int = 0
    window_s: float = 0.0
    inference_errors: int = 0
    camera_down_reports: int = 0
    confidence_sum: float = 0.0
    confidence_frames: int = 0
    p95_latency_sum: float = 0.0
    p95_latency_reports: int = 0
    p95_latency_max: float | None = None
    fps_sum: float = 0.0
    cpu_percent_sum: float = 0.0
    memory_mb_max: float = 0.0
    class_counts: Counter[str] = field(default_factory=Counter)

    def add_report(self, row: Any) -> None:
        """Fold in one raw telemetry row (anything with the telemetry columns as attributes)."""
        self.reports += 1
        self.frames += row.frames
        self.window_s += row.window_s
        self.inference_errors += row.inference_errors
        self.camera_down_reports += 0 if row.camera_ok else 1
        if row.mean_confidence is not None and row.frames:
            self.confidence_sum += row.mean_confidence * row.frames
            self.confidence_frames += row.frames
        if row.p95_latency_ms is not None:
            self.p95_latency_sum += row.p95_latency_ms
            self.p95_latency_reports += 1
            self.p95_latency_max = max(self.p95_latency_max or 0.0, row.p95_latency_ms)
        self.fps_sum += row.fps
        self.cpu_percent_sum += row.cpu_percent
        self.memory_mb_max = max(self.memory_mb_max, row.memory_mb)
        self.class_counts.update(row.class_counts or {})

    def merge(self, other: Any) -> None:
        """Fold in another aggregate or a stored rollup row."""
        for name in ("reports", "frames", "window_s", "inference_errors", "camera_down_reports", "confidence_sum",
                     "confidence_frames", "p95_latency_sum", "p95_latency_reports", "fps_sum", "cpu_percent_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.p95_latency_max is not None:
            self.p95_latency_max = max(self.p95_latency_max or 0.0, other.p95_latency_max)
        self.memory_mb_max = max(self.memory_mb_max, other.memory_mb_max)
        self.class_counts.update(other.class_counts or {})

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.confidence_frames if self.confidence_frames else None

    def columns(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["class_counts"] = dict(self.class_counts)
        return values


def rollup_raw(rows: Iterable[Any], resolution_s: int) -> dict[RollupKey, Aggregate]:
    """Aggregate raw telemetry rows into ``resolution_s`` buckets keyed by device and model."""
    aggregates: dict[RollupKey, Aggregate] = {}
    for row in rows:
        key = (row.device_id, row.model_version or "", bucket_start(row.sent_at, resolution_s))
        aggregates.setdefault(key, Aggregate()).add_report(row)
    return aggregates


def rollup_rollups(rows: Iterable[Any], resolution_s: int) -> dict[RollupKey, Aggregate]:
    """Aggregate finer rollup rows into coarser ``resolution_s`` buckets."""
    aggregates: dict[RollupKey, Aggregate] = {}
    for row in rows:
        key = (row.device_id, row.model_version, bucket_start(row.bucket_start, resolution_s))
        aggregates.setdefault(key, Aggregate()).merge(row)
    return aggregates


@dataclass(frozen=True)
class RetentionResult:
    raw_rolled_up: int = 0
    minute_rolled_up: int = 0
    hour_expired: int = 0


# --- I/O --------------------------------------------------------------------------
def _merge_into(session: Session, resolution_s: int, aggregates: dict[RollupKey, Aggregate]) -> None:
    if not aggregates:
        return
    devices = sorted({key[0] for key in aggregates})
    starts = sorted({key[2] for key in aggregates})
    existing_rows = session.execute(
        select(TelemetryRollup)
        .where(col(TelemetryRollup.resolution_s) == resolution_s)
        .where(col(TelemetryRollup.device_id).in_(devices))
        .where(col(TelemetryRollup.bucket_start).in_(starts))
        .with_for_update()
    ).scalars()
    existing = {(r.device_id, r.model_version, bucket_start(r.bucket_start, resolution_s)): r for r in existing_rows}
    for key, aggregate in aggregates.items():
        row = existing.get(key)
        if row is None:
            session.add(TelemetryRollup(resolution_s=resolution_s, device_id=key[0], model_version=key[1],
                                        bucket_start=key[2], **aggregate.columns()))
            continue
        merged = Aggregate()
        merged.merge(row)
        merged.merge(aggregate)
        for name, value in merged.columns().items():
            setattr(row, name, value)
        session.add(row)


def _lock_for_fold(session: Session) -> None:
    # SQLite has no row locks (FOR UPDATE is dropped) and pysqlite runs a SELECT outside any
    # transaction: take the database write lock first, so a concurrent fold cannot read the
    # same rows before this one deletes them.
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(LeaderLease).where(col(LeaderLease.name) == "").values(term=LeaderLease.term))


def _fold_raw(session: Session, cutoff: datetime, chunk_rows: int) -> int:
    _lock_for_fold(session)
    table = TelemetryRecord.__table__  # type: ignore[attr-defined]
    rows = session.execute(
        select(table.c.id, table.c.device_id, table.c.model_version, table.c.sent_at, table.c.frames,
               table.c.window_s, table.c.inference_errors, table.c.camera_ok, table.c.mean_confidence,
               table.c.p95_latency_ms, table.c.fps, table.c.cpu_percent, table.c.memory_mb, table.c.class_counts)
        .where(table.c.received_at < cutoff)
        .order_by(table.c.id)
        .limit(chunk_rows)
        .with_for_update(skip_locked=True)
    ).all()
    if not rows:
        return 0
    _merge_into(session, MINUTE_S, rollup_raw(rows, MINUTE_S))
    session.execute(delete(table).where(table.c.id.in_([row.id for row in rows])))
    return len(rows)


def _fold_minutes(session: Session, cutoff: datetime, chunk_rows: int) -> int:
    _lock_for_fold(session)
    rows = list(session.execute(
        select(TelemetryRollup)
        .where(col(TelemetryRollup.resolution_s) == MINUTE_S, col(TelemetryRollup.bucket_start) < cutoff)
        .order_by(col(TelemetryRollup.id))
        .limit(chunk_rows)
        .with_for_update(skip_locked=True)
    ).scalars())
    if not rows:
        return 0
    aggregates = rollup_rollups(rows, HOUR_S)
    ids = [row.id for row in rows]
    for row in rows:
        session.expunge(row)
    session.execute(delete(TelemetryRollup).where(col(TelemetryRollup.id).in_(ids)))
    _merge_into(session, HOUR_S, aggregates)
    return len(rows)


def run_retention(engine: Engine, policy: RetentionPolicy, now: datetime | None = None) -> RetentionResult:
    """Fold expired tiers into the next one and drop what outlived the last. ``now`` is injectable."""
    now = now or utc_now()
    totals = {"raw": 0, "minute": 0}
    for tier, fold, cutoff in (("raw", _fold_raw, now - policy.raw_keep),
                               ("minute", _fold_minutes, now - policy.minute_keep)):
        while True:
            with Session(engine) as session:
                try:
                    folded = fold(session, cutoff, policy.chunk_rows)
                    session.commit()
                except IntegrityError:
                    # Another node created the same rollup bucket at the same moment: redo the chunk.
                    session.rollback()
                    continue
            totals[tier] += folded
            if folded < policy.chunk_rows:
                break
    with Session(engine) as session:
        result = session.execute(
            delete(TelemetryRollup).where(col(TelemetryRollup.resolution_s) == HOUR_S,
                                          col(TelemetryRollup.bucket_start) < now - policy.hour_keep)
        )
        session.commit()
        expired = int(result.rowcount or 0)  # type: ignore[attr-defined]
    return RetentionResult(raw_rolled_up=totals["raw"], minute_rolled_up=totals["minute"], hour_expired=expired)


class RetentionWorker:
    """Runs :func:`run_retention` every ``interval_s`` on whichever node holds the lease."""

    def __init__(self, engine: Engine, policy: RetentionPolicy, *, holder: str, interval_s: float,
                 counters: RetentionCounters | None = None) -> None:
        self.engine = engine
        self.policy = policy
        self.interval_s = interval_s
        self.counters = counters or RetentionCounters()
        self.lease = Lease(engine, "retention", holder, ttl_s=max(60.0, 3 * interval_s))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            if self.lease.term is not None:
                self.lease.release()
        except Exception:  # the database may be gone at shutdown; the lease then simply expires
            log.debug("could not release the retention lease", exc_info=True)

    def run_once(self, now: datetime | None = None) -> RetentionResult | None:
        """One round: None when another node leads."""
        if not self.lease.try_acquire():
            return None
        result = run_retention(self.engine, self.policy, now)
        self.counters.add(raw=result.raw_rolled_up, minute=result.minute_rolled_up, hour=result.hour_expired)
        return result

    def _loop(self) -> None:
        # The first round waits one interval: a node that just started has nothing urgent to fold.
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # the database may be restarting; try again next round
                log.exception("retention round failed")
