"""Real services for tests: Mosquitto, PostgreSQL, and private broker processes.

Under ``EDGEFLEET_REQUIRE_SERVICES=1`` (CI) a missing service fails the run; it
never silently falls back to something weaker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from agent.contract.broker_url import parse_broker_url

REQUIRE_SERVICES = os.environ.get("EDGEFLEET_REQUIRE_SERVICES") == "1"
MACHINE_MOSQUITTO = "mqtt://127.0.0.1:1883"


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    with socket.socket() as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until truthy; return its value or raise AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class MosquittoProcess:
    """A private ``mosquitto`` instance with its own config on its own port."""

    def __init__(self, config_lines: list[str] | None = None, port: int | None = None,
                 workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="ef-mosquitto-"))
        self.config_path = self.workdir / "mosquitto.conf"
        lines = config_lines if config_lines is not None else [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        self.config_path.write_text("\n".join([*lines, "persistence false", ""]))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> MosquittoProcess:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.log = (self.workdir / "mosquitto.log").open("ab")
        self.process = subprocess.Popen([binary, "-c", str(self.config_path)], stdout=self.log, stderr=self.log)
        wait_for(lambda: port_open("127.0.0.1", self.port) or self.process.poll() is not None, timeout_s,
                 what=f"mosquitto on port {self.port}")
        if self.process.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


def _worker_broker() -> tuple[str, MosquittoProcess] | None:
    """A private Mosquitto for every parallel test worker but the first (pytest-xdist).

    Agents connect with their device id as MQTT client id, and tests on two workers that
    enroll the same device id on one broker would take each other's sessions. The first
    worker keeps the machine's broker, so CI still runs against it.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker in ("", "gw0") or not mosquitto_available():
        return None
    private = MosquittoProcess().start()
    return private.url, private


def resolve_broker_url() -> tuple[str, MosquittoProcess | None]:
    """The broker tests use, and the private process to stop afterwards (if one was started)."""
    configured = os.environ.get("EDGEFLEET_TEST_MQTT_URL")
    if configured:
        address = parse_broker_url(configured)
        if not port_open(address.host, address.port):
            raise RuntimeError(f"EDGEFLEET_TEST_MQTT_URL={configured} is not reachable")
        return _worker_broker() or (configured, None)
    if port_open("127.0.0.1", 1883):
        if (private := _worker_broker()) is not None:
            return private
        return MACHINE_MOSQUITTO, None
    if REQUIRE_SERVICES:
        raise RuntimeError("EDGEFLEET_REQUIRE_SERVICES=1 but no Mosquitto on 127.0.0.1:1883")
    if mosquitto_available():
        private = MosquittoProcess().start()
        return private.url, private
    return "", None  # the caller falls back to the embedded broker


def create_postgres_database(admin_url: str) -> tuple[str, str]:
    """Create a fresh database next to ``admin_url``'s; return (its URL, its name)."""
    import psycopg

    name = f"ef_test_{uuid.uuid4().hex[:12]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}", name


def drop_postgres_database(admin_url: str, name: str) -> None:
    import psycopg

    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class DurableMosquitto(MosquittoProcess):
    """A private Mosquitto that keeps sessions and queued messages across a restart."""

    def __init__(self) -> None:
        super().__init__()
        store = self.workdir / "store"
        store.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to its own user; it must be able to write its store.
            shutil.chown(store, "mosquitto")
            self.workdir.chmod(0o755)
        self.config_path.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {store}/",
            # No silent drops: the default caps a session's queue at 1000 messages.
            "max_queued_messages 0",
            "",
        ]))
