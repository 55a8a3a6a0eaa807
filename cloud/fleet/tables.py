"""Database tables and API schema families (``XBase / X(table=True) / XPublic / XCreate``)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import field_validator
from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from agent.contract import validate_device_id
from cloud.core.timestamps import UtcDateTime, timestamp_field


def _json(default_factory: Any) -> Any:
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


# --- devices -----------------------------------------------------------------
class DeviceBase(SQLModel):
    hardware_profile: str = Field(default="x86-64-avx2", max_length=64)


class DeviceCreate(DeviceBase):
    id: str = Field(max_length=64)

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_device_id(value)


class Device(DeviceBase, table=True):
    id: str = Field(primary_key=True, max_length=64)
    online: bool = False
    last_seen_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    agent_version: str | None = None
    running_model_version: str | None = None
    running_package_id: str | None = None
    runtime: str | None = None
    # The broker URL the device was last handed (enrollment, or its own lookup after the broker moved).
    mqtt_url: str | None = Field(default=None, max_length=512)
    # Per-device command sequence: every command carries a larger one than the last.
    command_seq: int = 0
    created_at: datetime = timestamp_field()


class DevicePublic(DeviceBase):
    id: str
    online: bool
    last_seen_at: datetime | None
    agent_version: str | None
    running_model_version: str | None
    running_package_id: str | None
    runtime: str | None
    created_at: datetime
    mqtt_url: str | None = None
    # Liveness, computed when read (cloud/fleet/liveness.py): ``online`` is False once the
    # device has missed EDGEFLEET_OFFLINE_AFTER_INTERVALS reporting intervals; ``gone_quiet``
    # marks a device that went silent without saying goodbye (its last word was "online").
    gone_quiet: bool = False


# --- model registry ----------------------------------------------------------
class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=128)
    version: str = Field(unique=True, max_length=128)
    status: str = Field(default="registered", max_length=32)
    dataset_id: str = Field(max_length=80)
    code_version: str | None = None
    labels: list[str] = _json(list)
    hyperparameters: dict[str, Any] = _json(dict)
    metrics: dict[str, Any] = _json(dict)
    onnx_path: str
    onnx_sha256: str = Field(max_length=64)
    created_at: datetime = timestamp_field()


class ModelVersionPublic(SQLModel):
    id: int
    name: str
    version: str
    status: str
    dataset_id: str
    code_version: str | None
    labels: list[str]
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any]
    onnx_sha256: str
    created_at: datetime


# --- packages ----------------------------------------------------------------
class Package(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    model_version: str = Field(max_length=128)
    hardware_profiles: list[str] = _json(list)
    manifest_sha256: str = Field(max_length=64)
    size_bytes: int
    path: str
    created_at: datetime = timestamp_field()


class PackagePublic(SQLModel):
    id: str
    model_version: str
    hardware_profiles: list[str]
    manifest_sha256: str
    size_bytes: int
    created_at: datetime


# --- deployments -------------------------------------------------------------
class DeploymentState(StrEnum):
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"


class DeploymentCreate(SQLModel):
    package_id: str = Field(max_length=64)
    device_ids: list[str] = Field(min_length=1, max_length=100_000)
    # A deliberate return to an older release: devices refuse an older package without it.
    rollback: bool = False

    @field_validator("device_ids")
    @classmethod
    def _valid_ids(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("device_ids lists a device twice")
        return [validate_device_id(v) for v in values]


class Deployment(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    package_id: str = Field(foreign_key="package.id", index=True)
    state: str = Field(default=DeploymentState.IN_PROGRESS, max_length=32)
    created_at: datetime = timestamp_field()


class DeviceJob(SQLModel, table=True):
    __tablename__ = "device_job"

    id: str = Field(primary_key=True, max_length=64)
    deployment_id: str = Field(foreign_key="deployment.id", index=True)
    device_id: str = Field(foreign_key="device.id", index=True)
    package_id: str = Field(max_length=64)
    state: str = Field(default="queued", max_length=32)
    error_code: str | None = None
    error: str | None = None
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()


class DeviceJobPublic(SQLModel):
    id: str
    device_id: str
    package_id: str
    state: str
    error_code: str | None
    error: str | None
    updated_at: datetime


class DeploymentPublic(SQLModel):
    id: str
    package_id: str
    state: str
    created_at: datetime
    jobs: list[DeviceJobPublic] = []


# --- telemetry ---------------------------------------------------------------
class TelemetryRecord(SQLModel, table=True):
    __tablename__ = "telemetry"
    __table_args__ = (UniqueConstraint("message_id", name="uq_telemetry_message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=64)
    device_id: str = Field(foreign_key="device.id", index=True)
    # The agent's pipeline (one camera and model) this window belongs to; None if it named none.
    camera: str | None = Field(default=None, max_length=64)
    model_version: str | None = Field(default=None, index=True)
    package_id: str | None = None
    runtime: str | None = None
    sent_at: datetime = Field(sa_type=UtcDateTime)
    received_at: datetime = timestamp_field(index=True)
    window_s: float
    frames: int
    fps: float
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    mean_confidence: float | None = None
    class_counts: dict[str, int] = _json(dict)
    inference_errors: int = 0
    camera_ok: bool = True
    cpu_percent: float = 0.0
    memory_mb: float = 0.0
    # The device's last signed-metadata check: None = fine, else an error code such as
    # "expired_metadata" (a frozen repository or mirror).
    update_check_error: str | None = Field(default=None, max_length=256)  # the contract's ShortText
    # The device's own telemetry counter (1, 2, 3, ...): a gap means a lost window.
    report_seq: int | None = None
    # The camera's capture-to-result p95 over the window, and its stale frames dropped since
    # the agent started (cumulative), from the report's frame totals when it has them.
    capture_to_result_p95_ms: float | None = None
    stale_frames_dropped: int | None = None


class TelemetryPublic(SQLModel):
    device_id: str
    model_version: str | None
    runtime: str | None
    sent_at: datetime
    window_s: float
    frames: int
    fps: float
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    mean_confidence: float | None
    class_counts: dict[str, int]
    inference_errors: int
    camera_ok: bool
    cpu_percent: float
    memory_mb: float
    update_check_error: str | None = None
    report_seq: int | None = None
    camera: str | None = None
    capture_to_result_p95_ms: float | None = None
    stale_frames_dropped: int | None = None
