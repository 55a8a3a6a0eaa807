"""The embedded development broker (amqtt), used when no EDGEFLEET_MQTT_URL is set."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cloud.core.broker_access import CONTROL_PLANE_USERNAME, BrokerAccess, FleetAuthPlugin, FleetTopicPlugin

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT_FILE = "embedded-broker-port"
PORT_SETTING = "EDGEFLEET_EMBEDDED_BROKER_PORT"


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def choose_port(data_dir: Path, configured: int) -> int:
    """The embedded broker's port: ``configured`` when set, else the one remembered in ``data_dir``.

    Devices keep the broker URL they were enrolled with, so the port must survive a
    restart: the first start picks a free port and remembers it (``remember_port``),
    every later start takes it again.

    Raises:
        RuntimeError: the port is taken; the message names the setting that moves it.
    """
    remembered = data_dir / PORT_FILE
    port = configured
    source = f"{PORT_SETTING}={configured}"
    if not port and remembered.exists():
        try:
            port = int(remembered.read_text().strip())
        except ValueError:
            port = 0
        source = f"the port remembered in {remembered}"
    if not port:
        return free_port()
    if port_in_use(port):
        raise RuntimeError(
            f"the embedded MQTT broker cannot listen on 127.0.0.1:{port} ({source}): another process holds it. "
            f"Stop that process, or set {PORT_SETTING} to a free port (enrolled agents ask the API for the "
            "new broker URL when the old one stops answering)")
    return port


def remember_port(data_dir: Path, port: int) -> None:
    """Keep ``port`` for the next start (see :func:`choose_port`)."""
    path = data_dir / PORT_FILE
    if not path.exists() or path.read_text().strip() != str(port):
        path.write_text(f"{port}\n")


class EmbeddedBroker:
    """An amqtt broker on loopback, in its own thread and event loop.

    With ``access`` it refuses anonymous clients and applies the per-device ACL of
    :class:`~cloud.core.broker_access.BrokerAccess`; ``access=None`` is an open broker, for
    tests that need any broker at all.
    """

    def __init__(self, port: int = 0, *, access: BrokerAccess | None) -> None:
        self.port = port or free_port()
        self.access = access
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._broker: object | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def control_plane_url(self) -> str:
        """The URL with the control plane's own credentials (never hand it to a device)."""
        if self.access is None:
            return self.url
        user, password = quote(CONTROL_PLANE_USERNAME, safe=""), quote(self.access.control_plane_password, safe="")
        return f"mqtt://{user}:{password}@127.0.0.1:{self.port}"

    def _run(self) -> None:
        from cloud.core.broker_access import FleetBroker

        asyncio.set_event_loop(self._loop)
        plugins: dict[str, Any] = (
            {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}} if self.access is None
            else {f"{FleetAuthPlugin.__module__}.{FleetAuthPlugin.__name__}": {"access": self.access},
                  f"{FleetTopicPlugin.__module__}.{FleetTopicPlugin.__name__}": {"access": self.access}})
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 10000}},
            "plugins": plugins,
        }
        try:
            broker = FleetBroker(config, loop=self._loop)
            self._loop.run_until_complete(broker.start())
            self._broker = broker
        except BaseException as exc:  # surface start failures to the caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self, timeout_s: float = 10.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("embedded MQTT broker did not start in time")
        if self._error is not None:
            raise RuntimeError(f"embedded MQTT broker failed to start: {self._error}") from self._error
        log.warning(
            "EDGEFLEET_MQTT_URL is not set: started an embedded amqtt broker on %s (development only; "
            "loopback only, %s)", self.url,
            "open to anyone on this machine" if self.access is None
            else "devices log in with their device id and API token and see only their own topics")

    def stop(self) -> None:
        broker = self._broker
        if broker is not None and self._loop.is_running():
            future = asyncio.run_coroutine_threadsafe(broker.shutdown(), self._loop)  # type: ignore[attr-defined]
            try:
                future.result(timeout=5)
            except Exception:  # shutting down anyway
                log.debug("embedded broker shutdown raised", exc_info=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
