"""What the API, the dashboard and the services need from a running control plane.

Routes and services depend on this protocol, not on :class:`cloud.server.ControlPlane`,
so nothing below the entry points imports the module that wires everything together
(only the CLI and the demo do).
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import Engine

from cloud.core.config import Settings
from cloud.jobs.queue import JobQueue
from cloud.messaging.bridge import CloudMqtt
from cloud.messaging.ingest import ReportIngest
from cloud.ops.telemetry_retention import RetentionWorker
from cloud.security import FleetSecurity

__all__ = ["Plane"]


class Plane(Protocol):
    settings: Settings
    engine: Engine
    security: FleetSecurity
    ingest: ReportIngest
    # None until started (and on a node that never connects to the broker).
    mqtt: CloudMqtt | None
    retention: RetentionWorker | None
    broker_url: str
    # Where long work (train, build, import, retrain) is queued (cloud/jobs/).
    jobs: JobQueue

    @property
    def base_url(self) -> str:
        """Where devices reach this plane's HTTP API (TUF metadata, packages)."""
        ...
