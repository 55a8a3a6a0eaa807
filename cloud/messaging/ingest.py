"""Validate device reports and store them in batches. Knows nothing of MQTT.

Two entry points:

* :meth:`ReportIngest.submit` (the running control plane): validate on the caller's
  thread, queue, and let one writer thread store whole batches in one transaction.
  The ``ack`` callback of each message runs only after its batch committed (or after
  it was rejected), in arrival order: with manual MQTT acknowledgements this means
  the broker keeps every report until it is in the database, so a crash of this
  process, the broker or the database loses nothing; the ``message_id`` unique
  constraint turns the resulting redeliveries into counted duplicates.
* :meth:`ReportIngest.handle`: the same validation and storage for one report,
  synchronously (tools, tests, and callers without acknowledgements).

Every rejection is counted by reason (:class:`~cloud.workers.counters.IngestCounters`)
and logged at a bounded rate; nothing a device sends can raise out of either method.
Storage failures are grouped by origin: a lost connection is retried with backoff
(never acknowledged meanwhile), a batch the database refuses for its content is
split so that one bad report cannot block the others.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session

from agent.contract import (
    ContractError,
    JobStatusReport,
    Report,
    StatusReport,
    TelemetryReport,
    TopicError,
    Topics,
    parse_report,
)
from cloud.core.timestamps import utc_now
from cloud.fleet import crud
from cloud.fleet.camera_reports import store_reported_cameras
from cloud.workers.counters import IngestCounters

__all__ = ["BatchPlan", "IngestCounters", "Rejection", "ReportIngest", "classify", "plan_batch"]

log = logging.getLogger(__name__)

Ack = Callable[[], None]
Reject = Callable[[str, str], None]
# Stores a report of a kind ingest does not know itself (drift, samples): (session, report,
# reject) -> stored. Registered by the feature that owns the kind, in ``kind_handlers``.
KindHandler = Callable[[Session, Report, Reject], bool]


# --- the pure core ---------------------------------------------------------------
@dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str


def classify(topics: Topics, topic: str, payload: bytes, max_report_bytes: int) -> Report | Rejection:
    """Parse one message into a typed report, or say why it is rejected. Never raises."""
    try:
        device_id, kind = topics.parse_report(topic)
        return parse_report(kind, payload, device_id, max_bytes=max_report_bytes)
    except TopicError as exc:
        return Rejection("topic", str(exc))
    except ContractError as exc:
        return Rejection(exc.reason, str(exc))
    except RecursionError:  # json.loads on thousands of nested brackets (still inside the size limit)
        return Rejection("malformed", "JSON nested too deeply")
    except Exception as exc:  # a parser bug must count as a rejection, not kill the network thread
        return Rejection("parser_error", f"{type(exc).__name__}: {exc}")


@dataclass
class BatchPlan:
    """What one batch writes, in which order: telemetry rows, device touches, then the rest in order."""

    telemetry_rows: list[dict[str, object]] = field(default_factory=list)
    telemetry: dict[str, TelemetryReport] = field(default_factory=dict)  # by message id
    duplicates_in_batch: int = 0
    touch_device_ids: set[str] = field(default_factory=set)
    ordered: list[Report] = field(default_factory=list)  # status, job and other reports, in arrival order


def plan_batch(reports: Sequence[Report], received_at: datetime, *,
               touch: Callable[[str], bool] = lambda device_id: True) -> BatchPlan:
    """Group a batch of valid reports from registered devices into writes.

    A message id seen twice in one batch (a redelivery racing its original) is written
    once. ``touch(device_id)`` says whether that device's last-seen time is due an update.
    """
    plan = BatchPlan()
    for report in reports:
        if isinstance(report, TelemetryReport):
            if report.message_id in plan.telemetry:
                plan.duplicates_in_batch += 1
                continue
            plan.telemetry[report.message_id] = report
            plan.telemetry_rows.append(crud.telemetry_row(report, received_at))
            if touch(report.device_id):
                plan.touch_device_ids.add(report.device_id)
        else:
            plan.ordered.append(report)
    return plan


# --- the I/O shell -------------------------------------------------------------------
@dataclass
class _Item:
    topic: str
    report: Report | None  # None: not parsed yet (payload set) or rejected (only the ack is left)
    ack: Ack | None
    payload: bytes | None = None  # until the writer parses it


_STOP = object()
_TRANSIENT = (OperationalError, InterfaceError)


class ReportIngest:
    """Validates reports and stores them; see the module docstring for the two entry points."""

    def __init__(
        self,
        engine: Engine,
        topics: Topics,
        *,
        max_report_bytes: int,
        batch_max_rows: int = 500,
        batch_wait_s: float = 0.01,
        queue_max: int = 70_000,
        touch_interval_s: float = 15.0,
        counters: IngestCounters | None = None,
    ) -> None:
        self.engine = engine
        self.topics = topics
        self.max_report_bytes = max_report_bytes
        self.batch_max_rows = batch_max_rows
        self.batch_wait_s = batch_wait_s
        self.touch_interval_s = touch_interval_s
        self.counters = counters or IngestCounters()
        # Called with (session, report) after a report is stored; the rollout engine keeps
        # shadow results and invalid-output counts this way. A failing listener
        # is logged and never loses the report.
        self.listeners: list[Callable[[Session, object], None]] = []
        self.kind_handlers: dict[str, KindHandler] = {}
        # QoS 1 traffic is bounded by the broker's in-flight window (receive maximum);
        # the bound here protects against QoS 0 floods, which are dropped when it is full.
        self._queue: queue.Queue[_Item | object] = queue.Queue(maxsize=queue_max)
        self._known_devices: set[str] = set()
        self._touched_at: dict[str, float] = {}
        self._writer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._log_budget = _LogBudget(per_s=5)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the batch writer thread (needed by :meth:`submit`)."""
        if self._writer is not None and self._writer.is_alive():
            return
        self._stopping.clear()
        self._writer = threading.Thread(target=self._write_loop, name="ingest-writer", daemon=True)
        self._writer.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store what is queued (acknowledging it), then stop. Later submissions are not acknowledged."""
        if self._writer is None:
            return
        self._stopping.set()
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("ingest queue still full at stop; unacknowledged reports will be redelivered")
        self._writer.join(timeout=timeout_s)
        self._writer = None

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything submitted so far is stored (tests and graceful hand-over)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._queue.empty() and self._idle.is_set():
                return True
            time.sleep(0.02)
        return False

    # -- entry points --------------------------------------------------------------------
    def submit(self, topic: str, payload: bytes, ack: Ack | None = None, qos: int = 1) -> None:
        """Queue one message; the writer validates and stores it, then calls ``ack``. Never raises.

        Only a queue append happens here, on the MQTT network thread: a network thread
        that falls behind lets its socket fill, and Mosquitto drops messages for a
        client once more than ``max_queued_messages`` wait to be written to it.
        """
        self.counters.count_received()
        if self._stopping.is_set() or self._writer is None:
            return  # not acknowledged: the broker redelivers it to this session later
        if len(payload) > self.max_report_bytes:  # never hold an oversized payload in memory
            self._reject("oversized", topic, f"payload of {len(payload)} bytes exceeds {self.max_report_bytes}")
            item = _Item(topic, None, ack)
        else:
            item = _Item(topic, None, ack, payload)
        if qos == 0:
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.counters.count_overloaded()
            return
        # QoS 1: never dropped here. Blocking is the last resort, and a costly one: a network
        # thread that stops reading lets the socket fill and Mosquitto then drops reports it
        # already acknowledged; so nodes size the queue to the broker's in-flight window
        # (Settings: INGEST_QUEUE_MAX >= INGEST_RECEIVE_MAXIMUM) and this never waits.
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def handle(self, topic: str, payload: bytes) -> bool:
        """Validate and store one report now. Returns True when it was stored (not a duplicate)."""
        self.counters.count_received()
        result = classify(self.topics, topic, payload, self.max_report_bytes)
        if isinstance(result, Rejection):
            self._reject(result.reason, topic, result.detail)
            return False
        try:
            stored = self._write_batch([_Item(topic, result, None)])
        except Exception:  # storage failed; counted, never raised to the caller
            self.counters.count_storage_error()
            log.exception("could not store report from %s", topic[:200])
            return False
        return result.message_id in stored

    # -- the writer ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            self._idle.clear()
            batch: list[_Item] = [first]  # type: ignore[list-item]
            deadline = time.monotonic() + self.batch_wait_s
            stop_after = False
            while len(batch) < self.batch_max_rows:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get_nowait() if remaining <= 0 else self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)  # type: ignore[arg-type]
            self._parse(batch)
            self._store_with_retry(batch)
            self._idle.set()
            if stop_after:
                return

    def _parse(self, batch: list[_Item]) -> None:
        for item in batch:
            if item.payload is None:
                continue
            result = classify(self.topics, item.topic, item.payload, self.max_report_bytes)
            item.payload = None
            if isinstance(result, Rejection):
                self._reject(result.reason, item.topic, result.detail)
            else:
                item.report = result

    def _store_with_retry(self, batch: list[_Item]) -> None:
        attempt = 0
        while True:
            try:
                self._write_batch(batch)
                break
            except _TRANSIENT as exc:
                # The database is away (restart, failover, network): keep the batch,
                # acknowledge nothing, and try again. The broker holds the rest.
                self.counters.count_storage_error()
                delay_s = min(0.1 * 2**attempt, 5.0)
                attempt += 1
                if attempt == 1 or attempt % 20 == 0:
                    log.warning("database unavailable (%s); retrying batch of %d in %.1fs",
                                type(exc.orig).__name__ if exc.orig else exc, len(batch), delay_s)
                if self._stopping.is_set() and attempt > 3:
                    log.warning("stopping with %d reports unstored; the broker will redeliver them", len(batch))
                    return
                time.sleep(delay_s)
            except Exception:
                # The database (or a handler) refused the content: store one by one so only
                # the culprit is lost, and acknowledge it so it cannot block the stream.
                self.counters.count_storage_error()
                if len(batch) == 1:
                    item = batch[0]
                    self._reject("unstorable", item.topic, "the database refused this report")
                    log.exception("report on %s cannot be stored", item.topic[:200])
                    item.report = None
                    self._write_batch(batch)  # only acknowledges
                    break
                for item in batch:
                    self._store_with_retry([item])
                return
        for item in batch:
            if item.ack is not None:
                try:
                    item.ack()
                except Exception:  # the broker connection went away; it redelivers
                    log.debug("acknowledgement failed for %s", item.topic[:200], exc_info=True)

    def _write_batch(self, batch: list[_Item]) -> set[str]:
        """Store one batch in one transaction; return the telemetry message ids newly stored.

        Raises:
            Exception: nothing of the batch is acknowledged; see ``_store_with_retry``.
        """
        reports = [item.report for item in batch if item.report is not None]
        accepted: Counter[str] = Counter()
        duplicates = 0
        inserted: set[str] = set()
        stored: list[Report] = []
        if reports:
            with Session(self.engine) as session:
                reports = self._registered_only(session, batch)
                now = time.monotonic()
                plan = plan_batch(reports, utc_now(), touch=lambda device_id: self._touch_due(device_id, now))
                inserted = crud.insert_telemetry_rows(session, plan.telemetry_rows)
                duplicates += plan.duplicates_in_batch + len(plan.telemetry) - len(inserted)
                crud.touch_devices(session, plan.touch_device_ids, utc_now())
                statuses = [r for r in plan.ordered if isinstance(r, StatusReport)]
                crud.apply_statuses(session, statuses)
                store_reported_cameras(session, statuses)
                for status in statuses:
                    self._touched_at.pop(status.device_id, None)  # the next telemetry re-marks it online
                stored.extend(statuses)
                jobs = [r for r in plan.ordered if isinstance(r, JobStatusReport)]
                for other in plan.ordered:
                    if not isinstance(other, StatusReport | JobStatusReport) and self._store_other(session, other):
                        stored.append(other)
                for job, applied in zip(jobs, crud.apply_job_reports(session, jobs), strict=True):
                    if applied:
                        stored.append(job)
                    else:
                        self._reject("unknown_job", job.job_id, f"job {job.job_id!r} is not a job of {job.device_id}")
                session.commit()
                for touched in plan.touch_device_ids:
                    self._touched_at[touched] = now
                stored[:0] = [plan.telemetry[message_id] for message_id in plan.telemetry if message_id in inserted]
                for done in stored:
                    accepted[done.kind] += 1
                    self._notify(session, done)
        acked = sum(1 for item in batch if item.ack is not None)
        self.counters.count_batch(len(batch), accepted, duplicates, acked)
        return inserted

    def _registered_only(self, session: Session, batch: list[_Item]) -> list[Report]:
        candidates = {item.report.device_id for item in batch if item.report is not None}
        unknown = candidates - self._known_devices
        if unknown:
            self._known_devices |= crud.registered_device_ids(session, unknown)
        reports: list[Report] = []
        for item in batch:
            if item.report is None:
                continue
            if item.report.device_id not in self._known_devices:
                self._reject("unknown_device", item.topic, f"device {item.report.device_id!r} is not registered")
                item.report = None
                continue
            reports.append(item.report)
        return reports

    def _touch_due(self, device_id: str, now: float) -> bool:
        # Updating ``last_seen_at`` on every report would rewrite each device row once a
        # second; a bounded staleness keeps the device table cold under heavy ingest.
        last = self._touched_at.get(device_id)
        return last is None or now - last >= self.touch_interval_s

    def _store_other(self, session: Session, report: Report) -> bool:
        handler = self.kind_handlers.get(report.kind)
        if handler is None:
            self._reject("unsupported_kind", report.kind, f"no handler stores {report.kind!r} reports here")
            return False
        return handler(session, report, lambda reason, detail: self._reject(reason, report.kind, detail))

    def _notify(self, session: Session, report: object) -> None:
        for listener in self.listeners:
            try:
                listener(session, report)
            except Exception:  # a listener's bug must not turn a stored report into a rejection
                session.rollback()
                log.exception("report listener %r failed", listener)

    def _reject(self, reason: str, topic: str, detail: str) -> None:
        self.counters.count_rejected(reason)
        # A flood of bad messages must not turn into a flood of log lines.
        if self._log_budget.allow():
            log.warning("rejected report on %s (%s): %s", topic[:200], reason, detail[:300])


class _LogBudget:
    """At most ``per_s`` log lines a second (token bucket)."""

    def __init__(self, per_s: float) -> None:
        self.per_s = per_s
        self._tokens = per_s
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.per_s, self._tokens + (now - self._at) * self.per_s)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False

