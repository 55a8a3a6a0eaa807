"""Validate device reports and store them. Knows nothing of MQTT: it gets (topic, payload).

Every rejection is counted by reason and logged; nothing a device sends can raise
out of :meth:`ReportIngest.handle`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from agent.contract import (
    ContractError,
    JobStatusReport,
    StatusReport,
    TelemetryReport,
    TopicError,
    Topics,
    parse_report,
)
from cloud import crud

log = logging.getLogger(__name__)


@dataclass
class IngestCounters:
    accepted: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    storage_errors: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": dict(self.accepted),
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "duplicates": self.duplicates,
            "storage_errors": self.storage_errors,
        }


class ReportIngest:
    def __init__(self, engine: Engine, topics: Topics, *, max_report_bytes: int) -> None:
        self.engine = engine
        self.topics = topics
        self.max_report_bytes = max_report_bytes
        self.counters = IngestCounters()
        self._lock = threading.Lock()
        # Called with (session, report) after a report is stored; the rollout engine keeps
        # shadow results and invalid-output counts this way (issue 6). A failing listener
        # is logged and never loses the report.
        self.listeners: list[Callable[[Session, object], None]] = []

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        with self._lock:
            self.counters.rejected[reason] += 1
        log.warning("rejected report on %s (%s): %s", topic[:200], reason, detail[:300])

    def handle(self, topic: str, payload: bytes) -> bool:
        """Validate and store one report. Returns True when it was accepted."""
        try:
            device_id, kind = self.topics.parse_report(topic)
            report = parse_report(kind, payload, device_id, max_bytes=self.max_report_bytes)
        except TopicError as exc:
            self._reject("topic", topic, str(exc))
            return False
        except ContractError as exc:
            self._reject(exc.reason, topic, str(exc))
            return False
        try:
            with Session(self.engine) as session:
                if not crud.device_exists(session, report.device_id):
                    self._reject("unknown_device", topic, f"device {report.device_id!r} is not registered")
                    return False
                stored = self._store(session, report)
                if stored:
                    self._notify(session, report)
        except SQLAlchemyError:
            with self._lock:
                self.counters.storage_errors += 1
            log.exception("could not store report from %s", topic)
            return False
        with self._lock:
            if stored:
                self.counters.accepted[report.kind] += 1
            else:
                self.counters.duplicates += 1
        return stored

    def _notify(self, session: Session, report: object) -> None:
        for listener in self.listeners:
            try:
                listener(session, report)
            except Exception:  # a listener's bug must not turn a stored report into a rejection
                session.rollback()
                log.exception("report listener %r failed", listener)

    def _store(self, session: Session, report: StatusReport | TelemetryReport | JobStatusReport) -> bool:
        if isinstance(report, StatusReport):
            crud.apply_status(session, report)
            return True
        if isinstance(report, TelemetryReport):
            return crud.store_telemetry(session, report)
        if not crud.apply_job_report(session, report):
            self._reject("unknown_job", report.job_id, f"job {report.job_id!r} is not a job of {report.device_id}")
            return False
        return True
