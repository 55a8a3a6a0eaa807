"""Tables for scale-out (migration ``0005_scale``): telemetry rollups and leader leases."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud.core.timestamps import UtcDateTime

__all__ = ["LeaderLease", "TelemetryRollup"]


class TelemetryRollup(SQLModel, table=True):
    """Telemetry of one device and model version over one bucket (60 s or 3600 s).

    Every column is a sum, a count or a maximum, so rollups merge by addition: late
    reports and repeated runs fold into an existing bucket without rereading raw rows.
    Means are ``*_sum / reports`` (or ``/ confidence_frames`` for confidence, which is
    weighted by frames like the device computes it).
    """

    __tablename__ = "telemetry_rollup"
    __table_args__ = (
        UniqueConstraint("resolution_s", "device_id", "model_version", "bucket_start", name="uq_telemetry_rollup_key"),
        Index("ix_telemetry_rollup_resolution_bucket", "resolution_s", "bucket_start"),
    )

    id: int | None = Field(default=None, primary_key=True)
    resolution_s: int
    device_id: str = Field(max_length=64, index=True)
    # "" rather than NULL: NULLs never collide in a unique constraint.
    model_version: str = Field(default="", max_length=128)
    bucket_start: datetime = Field(sa_type=UtcDateTime)
    reports: int = 0
    frames: int = 0
    window_s: float = 0.0
    inference_errors: int = 0
    camera_down_reports: int = 0
    confidence_sum: float = 0.0  # sum of mean_confidence * frames
    confidence_frames: int = 0
    p95_latency_sum: float = 0.0
    p95_latency_reports: int = 0
    p95_latency_max: float | None = None
    fps_sum: float = 0.0
    cpu_percent_sum: float = 0.0
    memory_mb_max: float = 0.0
    class_counts: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class LeaderLease(SQLModel, table=True):
    """Who runs a singleton background job, until when. ``term`` grows with every new holder."""

    __tablename__ = "leader_lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    term: int = 1

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "holder": self.holder, "expires_at": self.expires_at.isoformat(), "term": self.term}
