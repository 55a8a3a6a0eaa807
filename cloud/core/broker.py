"""The embedded development broker (amqtt), used when no EDGEFLEET_MQTT_URL is set."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any
from urllib.parse import quote

from cloud.core.broker_access import CONTROL_PLANE_USERNAME, BrokerAccess, FleetAuthPlugin, FleetTopicPlugin

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
