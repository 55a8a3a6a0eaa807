"""Ingest listener: keep what rollout gates need that the shared telemetry table lacks."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from agent.contract import TelemetryReport
from cloud.fleet.tables import utc_now
from cloud.rollout.tables import RolloutWindow

__all__ = ["record_rollout_window"]


def record_rollout_window(session: Session, report: object) -> None:
    """Store a telemetry window's invalid-output count and shadow result, when it has either."""
    if not isinstance(report, TelemetryReport):
        return
    shadow = report.shadow
    if report.invalid_outputs == 0 and shadow is None:
        return  # healthy windows without a shadow cost nothing extra
    window = RolloutWindow(
        message_id=report.message_id, device_id=report.device_id, received_at=utc_now(),
        model_version=report.model_version, invalid_outputs=report.invalid_outputs,
    )
    if shadow is not None:
        window.shadow_package_id = shadow.package_id
        window.shadow_frames = shadow.frames
        window.shadow_agreements = shadow.agreements
        window.shadow_errors = shadow.candidate_errors
        window.shadow_p95_latency_ms = shadow.candidate_p95_latency_ms
        window.active_p95_latency_ms = shadow.active_p95_latency_ms
    session.add(window)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # QoS 1 redelivery of a window already kept
