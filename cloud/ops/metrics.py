"""Prometheus ``/metrics`` for the control plane.

Values are read at scrape time (a custom collector), not pushed from every code path:
the database already holds device, deployment and rollout state, and ingest keeps its
own counters. So a scrape costs a few GROUP BY queries and nothing else pays for it.

Each control plane gets its own :class:`CollectorRegistry` so that several planes in
one process (tests, the demo) never share or double-register metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, inspect, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from cloud.core.plane import Plane
from cloud.core.timestamps import utc_now
from cloud.fleet.liveness import Liveness, reporting_intervals
from cloud.fleet.tables import Deployment, Device, DeviceJob

__all__ = ["INGEST_REJECT_REASONS", "ControlPlaneCollector", "install_metrics", "metrics_registry"]

log = logging.getLogger(__name__)

# Every reason ingest can reject for (docs/protocol.md), exported at 0 from the start so
# that ``rate()`` and ``increase()`` in alert rules have a series before the first reject.
INGEST_REJECT_REASONS = ("topic", "oversized", "malformed", "schema", "device_mismatch", "unknown_device",
                         "unknown_job")
INGEST_KINDS = ("status", "telemetry", "job")
_COUNTER_HELP = {
    "edgefleet_ingest_accepted": "Device reports stored, by kind; rate() of it is the ingest rate.",
    "edgefleet_ingest_rejected": "Device reports rejected, by reason.",
    "edgefleet_ingest_duplicates": "Reports dropped as QoS 1 redeliveries of a stored message id.",
    "edgefleet_ingest_storage_errors": "Batches that failed to commit (retried, never acknowledged).",
    "edgefleet_ingest_received": "Messages handed to ingest.",
    "edgefleet_ingest_overloaded": "QoS 0 messages dropped because the ingest queue was full.",
}

# Tables owned by other features (rollout engine, drift monitor). Their state columns are
# counted when the table exists, so /metrics works on any schema version.
_OPTIONAL_STATE_TABLES: dict[str, tuple[str, ...]] = {
    "edgefleet_rollouts": ("rollout",),
    "edgefleet_drift_alerts": ("drift_alert", "alert"),
    "edgefleet_retraining_proposals": ("retraining_proposal", "proposal"),
}
_OPTIONAL_HELP = {
    "edgefleet_rollouts": "Rollouts by state.",
    "edgefleet_drift_alerts": "Drift alerts by state.",
    "edgefleet_retraining_proposals": "Retraining proposals by state.",
}


class ControlPlaneCollector(Collector):
    """Collects fleet, ingest, deployment, rollout and drift figures at scrape time."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield from self._ingest()
        connected = GaugeMetricFamily("edgefleet_mqtt_connected", "1 when the control plane is connected to the broker.")
        connected.add_metric([], 1.0 if self.plane.mqtt and self.plane.mqtt.connected.is_set() else 0.0)
        yield connected
        try:
            with Session(self.plane.engine) as session:
                yield from self._devices(session)
                yield from self._deployments(session)
                yield from self._optional_states(session)
        except SQLAlchemyError:
            # A scrape must not 500 because the database blinked; the gauge below says so.
            log.exception("metrics: database query failed")
            up = GaugeMetricFamily("edgefleet_database_up", "1 when the last scrape could query the database.")
            up.add_metric([], 0.0)
            yield up
            return
        up = GaugeMetricFamily("edgefleet_database_up", "1 when the last scrape could query the database.")
        up.add_metric([], 1.0)
        yield up

    def _ingest(self) -> Iterator[CounterMetricFamily]:
        """Ingest (and retention) counters, exported from the counters' own ``samples()``.

        Whatever counter ingest adds later appears here without a change; the known
        kinds and reasons are exported at 0 from the start.
        """
        samples: list[tuple[str, dict[str, str], float]] = list(self.plane.ingest.counters.samples())
        retention = self.plane.retention
        if retention is not None:
            samples += list(retention.counters.samples())
        declared = {("edgefleet_ingest_accepted_total", "kind", kind) for kind in INGEST_KINDS}
        declared |= {("edgefleet_ingest_rejected_total", "reason", reason) for reason in INGEST_REJECT_REASONS}
        seen = {(name, key, labels[key]) for name, labels, _ in samples for key in labels}
        samples += [(name, {key: value}, 0.0) for name, key, value in sorted(declared - seen)]
        families: dict[str, CounterMetricFamily] = {}
        for name, labels, value in sorted(samples, key=lambda s: (s[0], sorted(s[1].items()))):
            family_name = name.removesuffix("_total")
            family = families.get(family_name)
            if family is None:
                family = families[family_name] = CounterMetricFamily(
                    family_name, _COUNTER_HELP.get(family_name, family_name.replace("_", " ") + "."),
                    labels=sorted(labels))
            family.add_metric([labels[k] for k in sorted(labels)], value)
        yield from families.values()

    def _devices(self, session: Session) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily("edgefleet_devices", "Registered devices by connection state and hardware profile.",
                                     labels=["state", "hardware_profile"])
        # Liveness as every other reader computes it (cloud/fleet/liveness.py), not the stored flag.
        liveness = Liveness.from_settings(self.plane.settings)
        intervals = reporting_intervals(session)
        now = utc_now()
        counts: Counter[tuple[bool, str]] = Counter()
        running: Counter[str] = Counter()
        for device in session.exec(select(Device)):
            online = liveness.online(device, intervals.get(device.id), now)
            counts[(online, device.hardware_profile)] += 1
            if online:
                running[device.running_model_version or "none"] += 1
        for profile in sorted({profile for _, profile in counts}):
            for online in (True, False):
                by_state.add_metric(["online" if online else "offline", profile], float(counts[(online, profile)]))
        yield by_state
        online_total = GaugeMetricFamily("edgefleet_devices_online", "Devices online now (heard from lately).")
        online_total.add_metric([], float(sum(n for (online, _), n in counts.items() if online)))
        yield online_total
        versions = GaugeMetricFamily("edgefleet_devices_running", "Online devices by the model version they run.",
                                     labels=["model_version"])
        for version, n in sorted(running.items()):
            versions.add_metric([version], float(n))
        yield versions

    def _deployments(self, session: Session) -> Iterator[GaugeMetricFamily]:
        deployments = GaugeMetricFamily("edgefleet_deployments", "Deployments by state.", labels=["state"])
        for state, n in session.exec(select(Deployment.state, func.count()).group_by(Deployment.state)).all():
            deployments.add_metric([state], float(n))
        yield deployments
        jobs = GaugeMetricFamily("edgefleet_device_jobs", "Device jobs by state.", labels=["state"])
        for state, n in session.exec(select(DeviceJob.state, func.count()).group_by(DeviceJob.state)).all():
            jobs.add_metric([state], float(n))
        yield jobs

    def _optional_states(self, session: Session) -> Iterator[GaugeMetricFamily]:
        tables = set(inspect(session.get_bind()).get_table_names())
        for metric, candidates in _OPTIONAL_STATE_TABLES.items():
            family = GaugeMetricFamily(metric, _OPTIONAL_HELP[metric], labels=["state"])
            table = next((t for t in candidates if t in tables), None)
            if table is not None:
                columns = {c["name"] for c in inspect(session.get_bind()).get_columns(table)}
                column = "state" if "state" in columns else "status" if "status" in columns else None
                if column is not None:
                    # Names come from the fixed tables above, never from input.
                    query = text(f'SELECT "{column}", COUNT(*) FROM "{table}" GROUP BY "{column}"')
                    for state, n in session.execute(query).all():
                        family.add_metric([str(state)], float(n))
            yield family


def metrics_registry(plane: Plane) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControlPlaneCollector(plane))
    return registry


def install_metrics(app: FastAPI, plane: Plane) -> None:
    """Serve ``GET /metrics`` in the Prometheus text exposition format.

    Outside ``/api/v1`` and without a token, as Prometheus scrapes by default; it holds
    counts only. Restrict it at the network edge if even counts are sensitive.
    """
    registry = metrics_registry(plane)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
