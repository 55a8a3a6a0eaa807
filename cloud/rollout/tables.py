"""Rollout tables (migration ``0004_rollout``). Only the rollout engine writes them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud.core.timestamps import UtcDateTime, timestamp_field


def _json(default_factory: Any) -> Any:
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


class Rollout(SQLModel, table=True):
    __tablename__ = "rollout"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    spec: dict[str, Any] = _json(dict)
    state: str = Field(max_length=32, index=True)
    stage: int = 0
    # "shadow" while the stage's devices run the candidate beside the active model, else "install".
    phase: str = Field(default="install", max_length=16)
    phase_started_at: datetime = timestamp_field()
    # The stage an operator approved to move past (pause-for-approval, or too few samples).
    approved_stage: int | None = None
    halted_strata: list[str] = _json(list)
    # stratum -> device count, and cumulative per-stage sizes, as planned.
    plan: dict[str, Any] = _json(dict)
    # stratum -> previous-version telemetry summed at creation: the control when no live one remains.
    baseline: dict[str, Any] = _json(dict)
    # The newest gate evaluation (what `rollout show` prints while the stage runs).
    evaluation: dict[str, Any] = _json(dict)
    # Dispatch rate limit as a token bucket kept on the row, so it holds across engines.
    dispatch_budget: float = 0.0
    budget_at: datetime = timestamp_field()
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class RolloutDevice(SQLModel, table=True):
    __tablename__ = "rollout_device"
    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id", name="uq_rollout_device"),
        Index("ix_rollout_device_rollout_state", "rollout_id", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="rollout.id", max_length=64)
    device_id: str = Field(foreign_key="device.id", max_length=64, index=True)
    stratum: str = Field(max_length=160)
    stage: int
    package_id: str = Field(max_length=64)
    previous_package_id: str | None = Field(default=None, max_length=64)
    previous_model_version: str | None = Field(default=None, max_length=128)
    state: str = Field(max_length=32)
    state_since: datetime = timestamp_field()
    reason: str = Field(default="", max_length=500)
    attempts: int = 0
    job_id: str | None = Field(default=None, max_length=64)
    dispatched_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    shadow_job_id: str | None = Field(default=None, max_length=64)
    # Offline events seen after the device received the candidate (restart signal).
    restarts: int = 0
    last_online: bool = True


class RolloutDecision(SQLModel, table=True):
    __tablename__ = "rollout_decision"

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="rollout.id", max_length=64, index=True)
    stage: int
    action: str = Field(max_length=32)
    actor: str = Field(default="engine", max_length=64)
    reason: str = Field(max_length=4000)
    numbers: dict[str, Any] = _json(dict)
    created_at: datetime = timestamp_field()


class DeviceLabel(SQLModel, table=True):
    """Tags and groups a rollout target can select on."""

    __tablename__ = "device_label"

    device_id: str = Field(foreign_key="device.id", primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=8)  # "tag" | "group"
    value: str = Field(primary_key=True, max_length=64)


class RolloutWindow(SQLModel, table=True):
    """What gates need from a telemetry window beyond the shared ``telemetry`` table.

    Written by an ingest listener, only for windows that carry invalid outputs, a
    shadow result or a detection part, so healthy classification fleets cost nothing extra.
    """

    __tablename__ = "rollout_window"

    message_id: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(max_length=64, index=True)
    received_at: datetime = timestamp_field(index=True)
    model_version: str | None = Field(default=None, max_length=128)
    invalid_outputs: int = 0
    shadow_package_id: str | None = Field(default=None, max_length=64)
    shadow_frames: int = 0
    shadow_agreements: int = 0
    shadow_errors: int = 0
    shadow_p95_latency_ms: float | None = None
    active_p95_latency_ms: float | None = None
    # Shadow mode of detection packages: boxes of each model and matched pairs.
    shadow_boxes_active: int = 0
    shadow_boxes_candidate: int = 0
    shadow_boxes_matched: int = 0
    # Detection packages: the window's detection frames, boxes, mean box score and objects per class.
    detection_frames: int = 0
    detection_boxes: int = 0
    detection_mean_box_score: float | None = None
    detection_object_counts: dict[str, int] = _json(dict)
