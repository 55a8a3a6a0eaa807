"""Tables of the cameras managed from the control plane: each device's desired cameras, and
the camera set the device last reported running (with its revision and any refusal)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud.core.timestamps import UtcDateTime, utc_now

__all__ = ["DeviceCamera", "DeviceCameraSet"]


class DeviceCamera(SQLModel, table=True):
    """One desired camera of one device (the wire shape is :class:`agent.contract.CameraSpec`)."""

    __tablename__ = "device_camera"
    __table_args__ = (UniqueConstraint("device_id", "name", name="uq_device_camera_name"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=64)
    name: str = Field(max_length=32)
    source: str = Field(max_length=2048)
    target_fps: float = 5.0
    region: dict[str, float] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    package_id: str | None = Field(default=None, max_length=64)
    rtsp_transport: str = Field(default="tcp", max_length=8)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    updated_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class DeviceCameraSet(SQLModel, table=True):
    """Per device: the revision of its desired set, and what it reported applying or refusing."""

    __tablename__ = "device_camera_set"

    device_id: str = Field(primary_key=True, foreign_key="device.id", max_length=64)
    # 0 until an operator first changes the device's cameras (it then runs its config file's).
    desired_revision: int = 0
    last_job_id: str | None = Field(default=None, max_length=64)
    sent_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    applied_revision: int | None = None
    rejected_revision: int | None = None
    error_code: str | None = Field(default=None, max_length=256)
    error: str | None = Field(default=None, max_length=2000)
    # The device's CameraState list from its last status (spec, state, frames, serving package).
    reported: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    reported_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
