"""Ingest listener: keep what rollout gates need that the shared telemetry table lacks."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from agent.contract import TelemetryReport
from cloud.core.timestamps import utc_now
from cloud.rollout.tables import RolloutWindow

__all__ = ["record_rollout_window"]


def record_rollout_window(session: Session, report: object) -> None:
    """Store a telemetry window's invalid-output count, shadow result and detection part, when it has any."""
    if not isinstance(report, TelemetryReport):
        return
    shadow, detection = report.shadow, report.detection
    if report.invalid_outputs == 0 and shadow is None and detection is None:
        return  # healthy classification windows without a shadow cost nothing extra
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
        window.shadow_boxes_active = shadow.boxes_active
        window.shadow_boxes_candidate = shadow.boxes_candidate
        window.shadow_boxes_matched = shadow.boxes_matched
    if detection is not None:
        window.detection_frames = detection.frames
        window.detection_boxes = sum(detection.object_counts.values())
        window.detection_mean_box_score = detection.mean_box_score
        window.detection_object_counts = dict(detection.object_counts)
    session.add(window)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # QoS 1 redelivery of a window already kept
