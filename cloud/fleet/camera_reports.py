"""Storing the camera set each device reports in its status (called by report ingest)."""

from __future__ import annotations

from sqlmodel import Session

from agent.contract import StatusReport
from cloud.fleet.camera_tables import DeviceCameraSet

__all__ = ["set_row", "store_reported_cameras"]


def set_row(session: Session, device_id: str) -> DeviceCameraSet:
    """The device's camera-set row (a new, unsaved one when it has none yet)."""
    return session.get(DeviceCameraSet, device_id) or DeviceCameraSet(device_id=device_id)


def store_reported_cameras(session: Session, reports: list[StatusReport]) -> None:
    """Keep each device's reported camera set, applied revision and last refusal (the caller commits)."""
    for report in reports:
        if report.cameras is None:
            continue
        row = set_row(session, report.device_id)
        cameras = report.cameras
        row.applied_revision = cameras.applied_revision
        row.rejected_revision = cameras.rejected_revision
        row.error_code, row.error = cameras.error_code, cameras.error
        row.reported = [state.model_dump(mode="json") for state in cameras.cameras]
        row.reported_at = report.sent_at
        session.add(row)
