"""What every control-plane process builds the same way: report ingest with its listeners,
the MQTT bridge (with the settings' TLS files), and the retention worker.

``edgefleet serve`` (:mod:`cloud.server`), ingest-only nodes (:mod:`cloud.workers.ingest_node`)
and the standalone rollout engine (:mod:`cloud.rollout.run`) all call these, so a setting such
as mutual TLS reaches each of them.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from agent.contract import DeployCommand, Topics
from cloud.core.config import Settings
from cloud.messaging.bridge import CloudMqtt
from cloud.messaging.ingest import ReportIngest
from cloud.monitor.service import install as install_monitor
from cloud.ops.telemetry_retention import RetentionPolicy, RetentionWorker
from cloud.rollout.listener import record_rollout_window

__all__ = ["make_bridge", "make_ingest", "make_retention"]


def make_ingest(engine: Engine, topics: Topics, settings: Settings) -> ReportIngest:
    """Batched report ingest with the rollout listener and the drift monitor's handlers."""
    ingest = ReportIngest(engine, topics, max_report_bytes=settings.max_report_bytes,
                          batch_max_rows=settings.ingest_batch_max_rows,
                          batch_wait_s=settings.ingest_batch_wait_ms / 1000,
                          queue_max=settings.ingest_queue_max)
    ingest.listeners.append(record_rollout_window)
    install_monitor(ingest, settings.monitor)
    return ingest


def make_bridge(settings: Settings, topics: Topics, *, broker_url: str, ingest: ReportIngest | None = None,
                sign: Callable[[DeployCommand], DeployCommand] | None = None, client_id: str | None = None,
                protocol: str | None = None) -> CloudMqtt:
    """The MQTT bridge: reports into ``ingest`` (acknowledged once stored), signed commands out.

    Without ``ingest`` the bridge only publishes commands (the standalone rollout engine).
    ``protocol`` overrides the settings' MQTT version (the embedded broker speaks 3.1.1 only).
    """
    ca_file, cert_file, key_file = (_path(settings.mqtt_ca_file), _path(settings.mqtt_cert_file),
                                    _path(settings.mqtt_key_file))
    if ingest is None:
        return CloudMqtt(broker_url, topics, lambda topic, payload: None, client_id=client_id, sign=sign,
                         subscribe_reports=False, protocol=protocol or settings.mqtt_protocol,
                         tls_ca_file=ca_file, tls_cert_file=cert_file, tls_key_file=key_file)
    return CloudMqtt(broker_url, topics, ingest.handle, on_report_acked=ingest.submit, client_id=client_id,
                     session_id=settings.ingest_client_id, shared_group=settings.ingest_shared_group,
                     protocol=protocol or settings.mqtt_protocol,
                     receive_maximum=settings.ingest_receive_maximum,
                     session_expiry_s=settings.ingest_session_expiry_s,
                     subscribe_reports=settings.ingest_enabled, sign=sign,
                     tls_ca_file=ca_file, tls_cert_file=cert_file, tls_key_file=key_file)


def make_retention(engine: Engine, settings: Settings, *, holder: str) -> RetentionWorker | None:
    """Downsampling and retention on whichever node holds the lease (None when disabled)."""
    if not settings.retention_enabled:
        return None
    return RetentionWorker(engine, RetentionPolicy.from_settings(settings), holder=holder,
                           interval_s=settings.retention_interval_s)


def _path(value: object) -> str | None:
    return str(value) if value else None
