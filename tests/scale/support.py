"""Harness for the scale tests: private services that can be restarted, ingest nodes as processes.

* :class:`DurableMosquitto`: a private broker with persistence on, so a restart keeps
  sessions and queued QoS 1 messages (the production setting; docs/scaling.md).
* :class:`PrivatePostgres`: a throw-away PostgreSQL cluster (``initdb``/``pg_ctl``) on
  a free port, so a test can restart *its* database without disturbing other tests.
* :class:`IngestNodeProcess`: ``python -m cloud.workers.ingest_node`` as a subprocess,
  which a test can SIGKILL and start again.

Services that are missing make a test skip locally and fail under
``EDGEFLEET_REQUIRE_SERVICES=1`` (CI), through :func:`require`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from cloud.core.db import make_engine, migrate
from cloud.fleet.tables import Device, TelemetryRecord
from tests.support.services import (
    REQUIRE_SERVICES,
    DurableMosquitto,
    free_port,
    mosquitto_available,
    wait_for,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def require(available: bool, what: str) -> None:
    """Skip when ``what`` is missing; fail instead when services are required (CI)."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"EDGEFLEET_REQUIRE_SERVICES=1 but {what} is not available")
    pytest.skip(f"{what} is not available")


class PrivatePostgres:
    """A PostgreSQL cluster in a temp directory, run as the ``postgres`` user when we are root."""

    def __init__(self) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="ef-pg-"))
        self.data = self.workdir / "data"
        self.bin = PG_BIN[-1]
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @staticmethod
    def available() -> bool:
        return bool(PG_BIN) and (os.geteuid() != 0 or shutil.which("runuser") is not None)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg_ctl("start")
        return self

    def _pg_ctl(self, action: str, *extra: str) -> None:
        # fsync off: a process crash (not an OS crash) loses nothing, and tests run faster.
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.workdir / "log"),
                  "-w", action, *extra)

    def restart(self, down_s: float = 2.0) -> None:
        """Crash-stop (``-m immediate``: no checkpoint, clients cut), stay down, start again."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        time.sleep(down_s)
        self._pg_ctl("start")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.workdir, ignore_errors=True)


class IngestNodeProcess:
    """One ingest node process with a stable client id (so its broker session persists)."""

    def __init__(self, *, database_url: str, mqtt_url: str, topic_prefix: str, client_id: str,
                 group: str | None = None, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.status_file = workdir / f"{client_id}.json"
        self.log_path = workdir / f"{client_id}.log"
        self.env = {
            **os.environ,
            "EDGEFLEET_DATABASE_URL": database_url,
            "EDGEFLEET_MQTT_URL": mqtt_url,
            "EDGEFLEET_TOPIC_PREFIX": topic_prefix,
            "EDGEFLEET_INGEST_CLIENT_ID": client_id,
            "EDGEFLEET_DATA_DIR": str(workdir / client_id),
            "EDGEFLEET_RETENTION_ENABLED": "false",
            "PYTHONPATH": str(REPO_ROOT),
            **({"EDGEFLEET_INGEST_SHARED_GROUP": group} if group else {}),
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.killed: list[int] = []  # return codes of processes killed by :meth:`kill`

    def start(self, timeout_s: float = 60.0) -> IngestNodeProcess:
        self.status_file.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cloud.workers.ingest_node", "--status-file", str(self.status_file),
                 "--status-interval", "0.5"],
                env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.status().get("connected") or self.process.poll() is not None,
                 timeout_s, what=f"ingest node {self.status_file.stem} connected")
        if self.process.poll() is not None:
            raise AssertionError(f"ingest node exited: {self.log_path.read_text()[-3000:]}")
        return self

    def status(self) -> dict[str, object]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def kill(self) -> None:
        """SIGKILL: no chance to store, acknowledge or disconnect cleanly."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.killed.append(self.process.wait(timeout=10))

    def stop(self, *, purge_session: bool = False) -> None:
        """SIGTERM (store and acknowledge what is queued). ``purge_session``: then remove the
        node's persistent session from the broker, so a shared broker keeps nothing of this test."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if purge_session:
            import paho.mqtt.client as mqtt

            from agent.contract.broker_url import parse_broker_url

            address = parse_broker_url(self.env["EDGEFLEET_MQTT_URL"])
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.env["EDGEFLEET_INGEST_CLIENT_ID"],
                                 protocol=mqtt.MQTTv5)
            with contextlib.suppress(OSError):
                client.connect(address.host, address.port, clean_start=True)
                client.disconnect()


def prepare_database(url: str, device_ids: list[str]) -> None:
    """Migrate and register ``device_ids`` directly (the API is not under test here)."""
    migrate(url)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            session.add_all([Device(id=device_id) for device_id in device_ids])
            session.commit()
    finally:
        engine.dispose()


def stored_telemetry(url: str, device_ids: list[str]) -> tuple[int, set[str]]:
    """(row count, distinct message ids) of the telemetry stored for ``device_ids``."""
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            query = select(TelemetryRecord.message_id).where(TelemetryRecord.device_id.in_(device_ids))
            ids = list(session.exec(query))
            return len(ids), set(ids)
    finally:
        engine.dispose()


def assert_every_report_stored_once(url: str, device_ids: list[str], generated: list[str], *, timeout_s: float,
                                    settle_s: float = 0.0, what: str = "every report stored") -> None:
    """Wait until as many rows as ``generated`` reports exist, then: each stored, none twice.

    ``settle_s``: wait that long after the count is reached, so a late redelivery would show
    up as an extra row.
    """
    wait_for(lambda: stored_telemetry(url, device_ids)[0] >= len(generated), timeout_s, what=what)
    if settle_s:
        time.sleep(settle_s)
    rows, stored_ids = stored_telemetry(url, device_ids)
    assert stored_ids == set(generated), (
        f"{len(set(generated) - stored_ids)} reports lost, {len(stored_ids - set(generated))} unexpected")
    assert rows == len(generated), f"{rows - len(generated)} reports stored twice"


def count_rows(url: str, table: str) -> int:
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return int(session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


__all__ = [
    "DurableMosquitto",
    "IngestNodeProcess",
    "PrivatePostgres",
    "assert_every_report_stored_once",
    "count_rows",
    "mosquitto_available",
    "prepare_database",
    "require",
    "stored_telemetry",
]
