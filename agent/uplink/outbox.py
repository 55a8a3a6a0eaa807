"""A bounded, ordered, on-disk queue of reports (SQLite) for while the broker is away.

Every report goes through here, connected or not, so the order of delivery is the
order of creation and a crash loses nothing already accepted. When full, the
oldest report is dropped first and the drop is counted (persisted, so the count
survives restarts and reaches the cloud as ``dropped_reports``).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                                   payload BLOB NOT NULL, retain INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Outbox:
    def __init__(self, path: Path, *, max_reports: int) -> None:
        if max_reports < 1:
            raise ValueError("max_reports must be at least 1")
        self.max_reports = max_reports
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a committed row survives a process crash (kill -9), which is the
        # failure that matters here, without an fsync per report.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _add_counter(self, name: str, delta: int) -> int:
        value = self._counter(name) + delta
        self._db.execute("INSERT INTO counters(name, value) VALUES(?, ?) "
                         "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (name, value))
        return value

    def next_seq(self) -> int:
        """A per-device report sequence number, persisted, starting at 1."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                value = self._add_counter("report_seq", 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return value

    def append(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Store one report; drop the oldest ones if over capacity. Returns how many were dropped."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO outbox(topic, payload, retain) VALUES(?, ?, ?)",
                                 (topic, payload, int(retain)))
                (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                excess = int(count) - self.max_reports
                if excess > 0:
                    self._db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                                     (excess,))
                    self._add_counter("dropped", excess)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return max(excess, 0)

    def peek(self, limit: int) -> list[tuple[int, str, bytes, bool]]:
        """The oldest ``limit`` reports as (id, topic, payload, retain), oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT id, topic, payload, retain FROM outbox ORDER BY id LIMIT ?",
                                    (limit,)).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2]), bool(r[3])) for r in rows]

    def remove_through(self, report_id: int) -> None:
        """Forget every report up to and including ``report_id`` (they were acknowledged)."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id <= ?", (report_id,))

    def dropped(self) -> int:
        with self._lock:
            return self._counter("dropped")

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
