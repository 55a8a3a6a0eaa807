"""The running control plane: database, broker connection, ingest and HTTP API."""

from __future__ import annotations

import logging
import socket
import threading
import time
from functools import partial

import uvicorn
from sqlalchemy import Engine

from agent.contract import Topics
from cloud.api.main import create_app
from cloud.core.broker import EmbeddedBroker, choose_port, free_port, remember_port
from cloud.core.broker_access import BrokerAccess
from cloud.core.config import WEAKNESSES, Settings
from cloud.core.db import make_engine, migrate
from cloud.fleet.cameras import resend_when_behind
from cloud.jobs.queue import JobQueue, make_queue
from cloud.messaging.bridge import CloudMqtt
from cloud.messaging.wiring import make_bridge, make_ingest, make_retention
from cloud.ops.telemetry_retention import RetentionWorker
from cloud.rollout.engine import EngineConfig, RolloutEngine
from cloud.security import FleetSecurity
from cloud.security.tokens import authenticate_device

log = logging.getLogger(__name__)


class ControlPlane:
    """Owns the long-lived parts. ``start`` is idempotent in spirit: call once, then ``stop``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.engine: Engine = make_engine(settings.resolved_database_url)
        self.broker: EmbeddedBroker | None = None
        self.broker_url = settings.mqtt_url or ""
        # Ingest with the rollout listener and the drift monitor's handlers (cloud/messaging/wiring.py).
        self.ingest = make_ingest(self.engine, self.topics, settings)
        # A device back online behind its desired camera set gets it again (cloud/fleet/cameras.py).
        self.ingest.listeners.append(partial(resend_when_behind, self))
        # Telemetry downsampling and retention, on whichever node holds the lease.
        self.retention: RetentionWorker | None = None
        self.mqtt: CloudMqtt | None = None
        # TUF repository, fleet CAs and director key (docs/security.md).
        self.security = FleetSecurity(settings, self.engine)
        # Staged rollouts: the engine thread starts with the plane unless disabled.
        self.rollout_settings = settings.rollout
        self.rollouts: RolloutEngine | None = None
        # Training, builds, dataset imports, retraining: queued here, run by workers (cloud/jobs/).
        self.jobs: JobQueue = make_queue(self.engine, settings)
        self.api_port = settings.api_port
        self._http: uvicorn.Server | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return self.settings.base_url(self.api_port)

    def start(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings.packages_dir.mkdir(parents=True, exist_ok=True)
        migrate(self.settings.resolved_database_url)
        self.jobs.start()
        self.security.initialise()
        for weakness in self.security.check_production():
            log.warning("INSECURE: production runs with %s, accepted by EDGEFLEET_ACCEPT_WEAK_SECURITY=%s",
                        WEAKNESSES[weakness], weakness)
        if not self.settings.mqtt_url:
            # The same port on every start: enrolled devices keep the broker URL they were given.
            port = choose_port(self.settings.data_dir, self.settings.embedded_broker_port)
            self.broker = EmbeddedBroker(port, access=self._broker_access())
            self.broker.start()
            remember_port(self.settings.data_dir, self.broker.port)
            self.broker_url = self.broker.url
        # Batched ingest, acknowledging each report to the broker only once it is committed.
        if self.settings.ingest_enabled:
            self.ingest.start()
        bridge_url = self.broker.control_plane_url if self.broker is not None else self.broker_url
        self.mqtt = make_bridge(self.settings, self.topics, broker_url=bridge_url, ingest=self.ingest,
                                sign=self.security.sign_command,
                                # amqtt, the embedded broker, speaks MQTT 3.1.1 only.
                                protocol="3.1.1" if self.broker is not None else None)
        self.mqtt.start()
        self.retention = make_retention(
            self.engine, self.settings,
            holder=self.settings.ingest_client_id or f"plane-{socket.gethostname()}-{id(self):x}")
        if self.retention is not None:
            self.retention.start()
        if self.rollout_settings.engine_enabled:
            self.rollouts = self.make_rollout_engine()
            self.rollouts.start()

    def _broker_access(self) -> BrokerAccess:
        """The embedded broker's logins and ACL: devices by their API token, as in docs/operations.md."""
        engine = self.engine
        return BrokerAccess(self.topics, lambda device_id, token: authenticate_device(engine, device_id, token))

    def make_rollout_engine(self, name: str = "plane") -> RolloutEngine:
        """A rollout engine publishing through this plane's (signing) MQTT bridge."""
        assert self.mqtt is not None, "start the control plane first"
        config = EngineConfig(tick_s=self.rollout_settings.tick_s, command_ttl_s=self.settings.command_ttl_s,
                              max_dispatch_per_tick=self.rollout_settings.max_dispatch_per_tick)
        return RolloutEngine(self.engine, self.mqtt.publish_command, lambda: self.base_url, config=config, name=name)

    def serve_http_in_thread(self, timeout_s: float = 15.0) -> str:
        """Run the API with uvicorn on a background thread; return its base URL."""

        if self.api_port == 0:
            self.api_port = free_port()
        config = uvicorn.Config(
            create_app(self), host=self.settings.api_host, port=self.api_port, log_level="warning", lifespan="off"
        )
        self._http = uvicorn.Server(config)
        self._http_thread = threading.Thread(target=self._http.run, name="http", daemon=True)
        self._http_thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex((self.settings.api_host, self.api_port)) == 0:
                    return self.base_url
            time.sleep(0.05)
        raise RuntimeError(f"API did not start listening on port {self.api_port}")

    def stop(self) -> None:
        if self.rollouts is not None:
            self.rollouts.stop()
        self.jobs.stop()
        if self._http is not None:
            self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(timeout=5)
        if self.retention is not None:
            self.retention.stop()
        # Store and acknowledge what is queued while still connected; the rest is redelivered.
        self.ingest.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        if self.broker is not None:
            self.broker.stop()
        self.engine.dispose()

