"""Downsampling and retention keep the database bounded for a fleet reporting for a month.

The month is simulated: reports carry generated timestamps and retention runs with an
injected ``now`` every six simulated hours (no sleeping, no wall clock). The tiers are
scaled down (raw 6 h, 1-minute 1 day, 1-hour 10 days) so a month crosses every tier
several times. Checked: every tier stays within its bound, the total stops growing once
the longest retention is reached, and folding loses nothing (reports, frames, errors,
class counts and confidence are conserved exactly until rollups expire).
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from cloud.core.db import make_engine, migrate
from cloud.fleet import crud
from cloud.fleet.tables import Device, TelemetryRecord
from cloud.ops.telemetry_retention import (
    HOUR_S,
    MINUTE_S,
    Aggregate,
    RetentionPolicy,
    bucket_start,
    rollup_raw,
    run_retention,
)
from cloud.workers.leader import Lease
from cloud.workers.tables import TelemetryRollup

pytestmark = pytest.mark.integration

DEVICES = ["ret-a", "ret-b", "ret-c"]
INTERVAL = timedelta(minutes=5)
SLICE = timedelta(hours=6)
POLICY = RetentionPolicy(raw_keep=timedelta(hours=6), minute_keep=timedelta(days=1), hour_keep=timedelta(days=10))
START = datetime(2026, 1, 1, tzinfo=UTC)
LABELS = ("circle", "square", "triangle", "cross")


def _report_rows(start: datetime, end: datetime, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    moment = start
    while moment < end:
        for device_id in DEVICES:
            frames = rng.randint(0, 600)
            counts = Counter(rng.choice(LABELS) for _ in range(min(frames, 20)))
            rows.append({
                "message_id": f"{device_id}-{int(moment.timestamp())}", "device_id": device_id,
                "model_version": "shapes-1" if moment < START + timedelta(days=15) else "shapes-2",
                "package_id": None, "runtime": "onnxruntime", "sent_at": moment, "received_at": moment,
                "window_s": 300.0, "frames": frames, "fps": frames / 300, "p50_latency_ms": 4.0,
                "p95_latency_ms": rng.uniform(5, 9), "mean_confidence": rng.uniform(0.5, 1.0) if frames else None,
                "class_counts": dict(counts), "inference_errors": rng.randint(0, 2), "camera_ok": rng.random() > 0.01,
                "cpu_percent": 20.0, "memory_mb": 150.0,
            })
        moment += INTERVAL
    return rows


def _tier_counts(engine: Engine) -> tuple[int, int, int]:
    with Session(engine) as session:
        raw = session.execute(select(func.count()).select_from(TelemetryRecord)).scalar_one()
        by_resolution = dict(session.execute(select(TelemetryRollup.resolution_s, func.count())
                                              .group_by(col(TelemetryRollup.resolution_s))).all())
    return int(raw), by_resolution.get(MINUTE_S, 0), by_resolution.get(HOUR_S, 0)


def _stored_totals(engine: Engine) -> Aggregate:
    """Everything the database still knows, folded into one aggregate."""
    total = Aggregate()
    with Session(engine) as session:
        for row in session.execute(select(TelemetryRecord)).scalars():
            total.add_report(row)
        for rollup in session.execute(select(TelemetryRollup)).scalars():
            total.merge(rollup)
    return total


@pytest.fixture
def engine(database_url: str) -> Engine:
    migrate(database_url)
    engine = make_engine(database_url)
    with Session(engine) as session:
        session.add_all([Device(id=device_id) for device_id in DEVICES])
        session.commit()
    yield engine
    engine.dispose()


def test_a_simulated_month_stays_bounded_and_conserves_totals(engine: Engine) -> None:
    rng = random.Random(7)
    generated = Aggregate()
    sizes: dict[int, int] = {}
    per_slice = len(DEVICES) * int(SLICE / INTERVAL)
    now = START
    for index in range(int(timedelta(days=30) / SLICE)):
        rows = _report_rows(now, now + SLICE, rng)
        with Session(engine) as session:
            assert len(crud.insert_telemetry_rows(session, rows)) == len(rows)
            session.commit()
        for row in rows:
            generated.add_report(type("Row", (), row))
        now += SLICE
        run_retention(engine, POLICY, now=now)
        raw, minute, hour = _tier_counts(engine)
        sizes[index] = raw + minute + hour
        # Each tier holds at most its window of buckets (plus one partly filled bucket per device).
        assert raw <= per_slice
        assert minute <= len(DEVICES) * (int((POLICY.minute_keep - POLICY.raw_keep) / INTERVAL) + 2)
        assert hour <= len(DEVICES) * 2 * (int(POLICY.hour_keep / timedelta(hours=1)) + 2)  # x2: model change
        if now - START <= POLICY.hour_keep:
            # Nothing has expired yet: the tiers together still hold every report exactly.
            stored = _stored_totals(engine)
            assert (stored.reports, stored.frames, stored.inference_errors, stored.camera_down_reports) == (
                generated.reports, generated.frames, generated.inference_errors, generated.camera_down_reports)
            assert stored.class_counts == generated.class_counts
            assert stored.confidence_sum == pytest.approx(generated.confidence_sum, rel=1e-9)
            assert stored.confidence_frames == generated.confidence_frames
    steady = max(sizes[index] for index in range(len(sizes) // 2, len(sizes)))
    assert steady <= 1.05 * sizes[int(POLICY.hour_keep / SLICE) + 4], "the database kept growing"
    total_generated = len(DEVICES) * int(timedelta(days=30) / INTERVAL)
    assert steady < total_generated / 10, f"{steady} rows kept of {total_generated} reported"


def test_an_hour_rollup_matches_its_raw_reports() -> None:
    rng = random.Random(3)
    rows = [type("Row", (), r) for r in _report_rows(START, START + timedelta(hours=2), rng)]
    hours = rollup_raw(rows, HOUR_S)
    minutes = rollup_raw(rows, MINUTE_S)
    assert sum(a.reports for a in hours.values()) == len(rows)
    folded: dict[tuple[str, str, datetime], Aggregate] = {}
    for (device_id, model, minute_start), aggregate in minutes.items():
        folded.setdefault((device_id, model, bucket_start(minute_start, HOUR_S)), Aggregate()).merge(aggregate)
    for key, direct in hours.items():
        folded_columns, direct_columns = folded[key].columns(), direct.columns()
        assert folded_columns.pop("class_counts") == direct_columns.pop("class_counts")
        assert folded_columns == pytest.approx(direct_columns)
        frames = [r for r in rows if (r.device_id, r.model_version, bucket_start(r.sent_at, HOUR_S)) == key]
        weighted = sum(r.mean_confidence * r.frames for r in frames if r.mean_confidence is not None)
        assert direct.mean_confidence == pytest.approx(weighted / sum(r.frames for r in frames
                                                                      if r.mean_confidence is not None))


def test_two_nodes_folding_at_once_count_every_report_once(engine: Engine) -> None:
    rows = _report_rows(START, START + timedelta(days=2), random.Random(5))
    with Session(engine) as session:
        crud.insert_telemetry_rows(session, rows)
        session.commit()
    policy = RetentionPolicy(raw_keep=POLICY.raw_keep, minute_keep=POLICY.minute_keep, hour_keep=POLICY.hour_keep,
                             chunk_rows=200)  # many small chunks so the two runs interleave
    now = START + timedelta(days=2)
    errors: list[BaseException] = []

    def fold() -> None:
        try:
            run_retention(engine, policy, now=now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fold) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    stored = _stored_totals(engine)
    assert stored.reports == len(rows)
    assert stored.frames == sum(r["frames"] for r in rows)


def test_one_leader_at_a_time_and_takeover_after_expiry(engine: Engine) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    first, second = Lease(engine, "retention", "node-1", ttl_s=60), Lease(engine, "retention", "node-2", ttl_s=60)
    assert first.try_acquire(now) and first.term == 1
    assert not second.try_acquire(now + timedelta(seconds=30))
    assert first.try_acquire(now + timedelta(seconds=50)) and first.term == 1  # renewal keeps the term
    assert not second.try_acquire(now + timedelta(seconds=100))  # renewed until now + 110 s
    assert second.try_acquire(now + timedelta(seconds=111)) and second.term == 2  # expired: taken over
    assert not first.try_acquire(now + timedelta(seconds=112))
    second.release()
    assert first.try_acquire(datetime.now(UTC)) and first.term == 3


def test_concurrent_candidates_elect_exactly_one(engine: Engine) -> None:
    barrier = threading.Barrier(6)
    won: list[str] = []

    def campaign(holder: str) -> None:
        lease = Lease(engine, "election", holder, ttl_s=60)
        barrier.wait()
        if lease.try_acquire():
            won.append(holder)

    threads = [threading.Thread(target=campaign, args=(f"node-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(won) == 1, won
