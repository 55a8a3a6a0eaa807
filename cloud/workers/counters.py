"""Every ingest and retention counter, in one place.

Counters are plain, thread-safe dataclasses so that ``/api/v1/ingest/stats`` can show
them and a Prometheus collector can export them: :meth:`samples` yields
``(metric_name, labels, value)`` triples with Prometheus-style names, so an exporter
needs no knowledge of the fields.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["IngestCounters", "RetentionCounters", "Sample"]

Sample = tuple[str, dict[str, str], float]


@dataclass
class IngestCounters:
    """What ingest did since the process started. Mutate only through the methods."""

    accepted: Counter[str] = field(default_factory=Counter)  # by report kind
    rejected: Counter[str] = field(default_factory=Counter)  # by reason (ContractError.reason and ours)
    duplicates: int = 0  # QoS 1 redeliveries of a message id already stored
    storage_errors: int = 0  # batches that failed to commit (retried, never acknowledged)
    received: int = 0  # messages handed to ingest
    batches: int = 0
    batch_rows: int = 0  # messages committed in batches (received = batch_rows + in flight)
    acked: int = 0  # PUBACKs released after the commit
    overloaded: int = 0  # QoS 0 messages dropped because the queue was full (QoS 1 waits instead)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def count_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def count_overloaded(self) -> None:
        with self._lock:
            self.overloaded += 1

    def count_batch(self, rows: int, accepted: Counter[str], duplicates: int, acked: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_rows += rows
            self.accepted.update(accepted)
            self.duplicates += duplicates
            self.acked += acked

    def count_storage_error(self) -> None:
        with self._lock:
            self.storage_errors += 1

    def as_dict(self) -> dict[str, object]:
        with self._lock:
            return {
                "accepted": dict(self.accepted),
                "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values()),
                "duplicates": self.duplicates,
                "storage_errors": self.storage_errors,
                "received": self.received,
                "batches": self.batches,
                "batch_rows": self.batch_rows,
                "acked": self.acked,
                "overloaded": self.overloaded,
            }

    def samples(self) -> Iterator[Sample]:
        snapshot = self.as_dict()
        for kind, value in sorted(dict(snapshot["accepted"]).items()):  # type: ignore[call-overload]
            yield "edgefleet_ingest_accepted_total", {"kind": kind}, float(value)
        for reason, value in sorted(dict(snapshot["rejected"]).items()):  # type: ignore[call-overload]
            yield "edgefleet_ingest_rejected_total", {"reason": reason}, float(value)
        for name in ("duplicates", "storage_errors", "received", "batches", "batch_rows", "acked", "overloaded"):
            yield f"edgefleet_ingest_{name}_total", {}, float(snapshot[name])  # type: ignore[arg-type]


@dataclass
class RetentionCounters:
    """What the downsampling/retention job did (on the node holding the lease)."""

    runs: int = 0
    raw_rolled_up: int = 0  # raw telemetry rows folded into 1-minute rollups and deleted
    minute_rolled_up: int = 0  # 1-minute rollups folded into 1-hour rollups and deleted
    hour_expired: int = 0  # 1-hour rollups older than the longest retention, deleted
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, *, raw: int, minute: int, hour: int) -> None:
        with self._lock:
            self.runs += 1
            self.raw_rolled_up += raw
            self.minute_rolled_up += minute
            self.hour_expired += hour

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {"runs": self.runs, "raw_rolled_up": self.raw_rolled_up,
                    "minute_rolled_up": self.minute_rolled_up, "hour_expired": self.hour_expired}

    def samples(self) -> Iterator[Sample]:
        for name, value in self.as_dict().items():
            yield f"edgefleet_retention_{name}_total", {}, float(value)
