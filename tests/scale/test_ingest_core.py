"""The ingest pipeline without a broker: acknowledgements follow commits, in order; failures are grouped.

SQLite (a real database) stands in for PostgreSQL; database outages are injected at
the one place ingest writes telemetry.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, func, select

from agent.contract import DeviceState, StatusReport, TelemetryReport, Topics
from cloud.core.db import make_engine, migrate
from cloud.fleet import crud
from cloud.fleet.tables import Device, TelemetryRecord
from cloud.messaging.ingest import Rejection, ReportIngest, classify, plan_batch

TOPICS = Topics("t/ef/v1")


@pytest.fixture
def ingest(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        session.add_all([Device(id="cam-1"), Device(id="cam-2")])
        session.commit()
    ingest = ReportIngest(engine, TOPICS, max_report_bytes=64 * 1024, batch_max_rows=50, batch_wait_s=0.01)
    ingest.start()
    yield ingest
    ingest.stop()
    engine.dispose()


def _telemetry(device_id: str = "cam-1") -> TelemetryReport:
    return TelemetryReport(device_id=device_id, window_s=1, frames=5, fps=5, mean_confidence=0.8)


def _rows(ingest: ReportIngest) -> int:
    with Session(ingest.engine) as session:
        return int(session.exec(select(func.count()).select_from(TelemetryRecord)).one())


def test_classify_names_the_reason_and_never_raises() -> None:
    assert isinstance(classify(TOPICS, TOPICS.telemetry("cam-1"), _telemetry().to_bytes(), 65536), TelemetryReport)
    cases = {
        ("t/ef/v1/cam-1/nope", b"{}"): "topic",
        (TOPICS.telemetry("cam-1"), b"\xff"): "malformed",
        (TOPICS.telemetry("cam-1"), b"[" * 5000 + b"]" * 5000): "malformed",
        (TOPICS.telemetry("cam-1"), b"{}"): "schema",
        (TOPICS.telemetry("cam-2"), _telemetry().to_bytes()): "device_mismatch",
        (TOPICS.telemetry("cam-1"), b" " * 70_000): "oversized",
    }
    for (topic, payload), reason in cases.items():
        result = classify(TOPICS, topic, payload, 65536)
        assert isinstance(result, Rejection) and result.reason == reason, (topic, result)


def test_plan_batch_writes_a_message_id_once_and_touches_devices_when_due() -> None:
    first = _telemetry()
    twin = TelemetryReport.model_validate_json(first.to_bytes())  # a redelivery racing its original
    status = StatusReport(device_id="cam-2", state=DeviceState.ONLINE)
    plan = plan_batch([first, twin, status, _telemetry("cam-2")], datetime.now(UTC),
                      touch=lambda device_id: device_id == "cam-2")
    assert len(plan.telemetry_rows) == 2 and plan.duplicates_in_batch == 1
    assert plan.touch_device_ids == {"cam-2"} and plan.ordered == [status]


def test_acks_come_after_the_commit_in_arrival_order(ingest: ReportIngest) -> None:
    acked: list[int] = []
    rows_when_acked: list[int] = []
    lock = threading.Lock()

    def ack_for(index: int):
        def ack() -> None:
            with lock:
                acked.append(index)
                rows_when_acked.append(_rows(ingest))
        return ack

    reports = [_telemetry() for _ in range(120)]
    payloads = [(TOPICS.telemetry("cam-1"), r.to_bytes()) for r in reports]
    payloads.insert(7, (TOPICS.telemetry("cam-1"), b"not json"))  # rejected, still acknowledged in order
    for index, (topic, payload) in enumerate(payloads):
        ingest.submit(topic, payload, ack_for(index))
    assert ingest.wait_idle(30)
    assert acked == list(range(len(payloads)))
    # Every acknowledgement saw its own report already committed.
    stored_before_ack = [rows_when_acked[i] for i in range(len(payloads)) if i != 7]
    assert all(rows >= position + 1 for position, rows in enumerate(stored_before_ack))
    assert _rows(ingest) == 120
    assert ingest.counters.as_dict()["rejected"] == {"malformed": 1}


def test_a_database_outage_holds_acks_until_the_batch_is_stored(ingest: ReportIngest,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_insert = crud.insert_telemetry_rows
    failures = {"left": 3}
    released = threading.Event()

    def flaky(session, rows):
        if failures["left"]:
            failures["left"] -= 1
            if failures["left"] == 0:
                released.set()
            raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
        return real_insert(session, rows)

    monkeypatch.setattr(crud, "insert_telemetry_rows", flaky)
    acked = threading.Event()
    ingest.submit(TOPICS.telemetry("cam-1"), _telemetry().to_bytes(), acked.set)
    assert released.wait(10)
    assert ingest.wait_idle(30)
    assert acked.is_set() and _rows(ingest) == 1
    assert ingest.counters.storage_errors == 3  # each failed attempt counted, none acknowledged


def test_a_report_the_database_refuses_is_isolated_and_acknowledged(ingest: ReportIngest,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_insert = crud.insert_telemetry_rows
    poison = _telemetry()

    def refuse_poison(session, rows):
        if any(row["message_id"] == poison.message_id for row in rows):
            raise ValueError("simulated content the database refuses")
        return real_insert(session, rows)

    monkeypatch.setattr(crud, "insert_telemetry_rows", refuse_poison)
    acks: list[str] = []
    good = [_telemetry() for _ in range(5)]
    for report in [*good[:2], poison, *good[2:]]:
        ingest.submit(TOPICS.telemetry("cam-1"), report.to_bytes(), lambda m=report.message_id: acks.append(m))
    assert ingest.wait_idle(30)
    assert len(acks) == 6 and _rows(ingest) == 5  # the poison is dropped and counted, the rest stored
    assert ingest.counters.as_dict()["rejected"] == {"unstorable": 1}


def test_unknown_devices_are_rejected_without_failing_the_batch(ingest: ReportIngest) -> None:
    acks = []
    ingest.submit(TOPICS.telemetry("ghost"), _telemetry("ghost").to_bytes(), lambda: acks.append("ghost"))
    ingest.submit(TOPICS.telemetry("cam-2"), _telemetry("cam-2").to_bytes(), lambda: acks.append("cam-2"))
    assert ingest.wait_idle(30)
    assert acks == ["ghost", "cam-2"] and _rows(ingest) == 1
    assert ingest.counters.as_dict()["rejected"] == {"unknown_device": 1}
