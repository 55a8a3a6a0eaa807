"""Tables of drift monitoring and sample capture (migration ``0006_monitor``).

Idempotent ingest: every table fed by device reports has a unique ``message_id``,
so a QoS 1 redelivery is a no-op.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud.core.timestamps import UtcDateTime, timestamp_field


def _json(default_factory: Any) -> Any:
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


class DriftWindowRecord(SQLModel, table=True):
    """One device window as received, with the control plane's test of it."""

    __tablename__ = "drift_window"
    __table_args__ = (UniqueConstraint("message_id", name="uq_drift_window_message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=64)
    device_id: str = Field(index=True, max_length=64)
    # The agent's pipeline (one camera and model); None for reports that name none.
    camera: str | None = Field(default=None, max_length=64)
    model_version: str | None = Field(default=None, max_length=128)
    package_id: str | None = Field(default=None, index=True, max_length=64)
    window_seq: int = 0
    window_started_at: datetime = Field(sa_type=UtcDateTime)
    window_ended_at: datetime = Field(sa_type=UtcDateTime)
    received_at: datetime = timestamp_field(index=True)
    frames: int = 0
    frames_seen: int = 0
    features: list[str] = _json(list)
    histograms: str = Field(sa_column=Column(Text, nullable=False))
    means: list[float] = _json(list)
    stds: list[float] = _json(list)
    class_counts: list[int] = _json(list)
    local_score: float | None = None
    # A detection package's window: its DetectionDrift block as sent (merged by the fleet test).
    detection: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    tested: bool = False
    untested_reason: str | None = Field(default=None, max_length=256)
    p_value: float | None = None
    score: float | None = None
    cusum: float | None = None
    evidence: dict[str, Any] = _json(dict)


class DriftDetectorState(SQLModel, table=True):
    """The sequential test's state for one camera of a device under one package (survives restarts).

    Per camera: each camera's scene is its own population, so one camera's windows must
    not step another's statistic.
    """

    __tablename__ = "drift_camera_detector"

    device_id: str = Field(primary_key=True, max_length=64)
    # The agent's pipeline name, "default" for reports that name none (as DriftBaseline.camera).
    camera: str = Field(primary_key=True, max_length=64)
    package_id: str = Field(primary_key=True, max_length=64)
    statistic: float = 0.0
    alarm: bool = False
    clean_run: int = 0
    clean_streak: int = 0
    windows: int = 0
    updated_at: datetime = timestamp_field()


class DriftAlert(SQLModel, table=True):
    __tablename__ = "drift_alert"

    id: str = Field(primary_key=True, max_length=32)
    scope: str = Field(default="device", max_length=16)  # "device" or "fleet"
    device_id: str | None = Field(default=None, index=True, max_length=64)
    # The camera whose windows alarmed (device alerts); None for fleet alerts.
    camera: str | None = Field(default=None, max_length=64)
    package_id: str | None = Field(default=None, max_length=64)
    model_version: str | None = Field(default=None, max_length=128)
    state: str = Field(default="open", index=True, max_length=16)  # "open" or "cleared"
    opened_at: datetime = timestamp_field()
    cleared_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    cleared_reason: str | None = Field(default=None, max_length=256)
    score: float = 0.0
    window_ids: list[int] = _json(list)
    evidence: dict[str, Any] = _json(dict)
    proposal_id: str | None = Field(default=None, max_length=32)


class SampleBlob(SQLModel, table=True):
    """A sample image, content-addressed by sha256 (uploaded over HTTP or inline)."""

    __tablename__ = "sample_blob"

    sha256: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(index=True, max_length=64)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    size_bytes: int
    created_at: datetime = timestamp_field(index=True)


class SampleRecord(SQLModel, table=True):
    __tablename__ = "sample"
    __table_args__ = (
        UniqueConstraint("message_id", name="uq_sample_message_id"),
        UniqueConstraint("sample_id", name="uq_sample_sample_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=64)
    sample_id: str = Field(max_length=64)
    device_id: str = Field(index=True, max_length=64)
    camera: str | None = Field(default=None, max_length=64)  # the agent's pipeline, when it named one
    model_version: str | None = Field(default=None, max_length=128)
    package_id: str | None = Field(default=None, max_length=64)
    sampler: str = Field(max_length=16)
    reason: str = Field(default="", max_length=256)
    captured_at: datetime = Field(sa_type=UtcDateTime)
    received_at: datetime = timestamp_field(index=True)
    predicted_label: str | None = Field(default=None, max_length=256)
    confidence: float | None = None
    features: dict[str, float] = _json(dict)
    stats_only: bool = False
    image_sha256: str | None = Field(default=None, index=True, max_length=64)
    image_bytes: int = 0
    image_width: int = 0
    image_height: int = 0
    # Detection packages: the frame's boxes as the device sent them (SampleBox: fractions of
    # the frame, label, score, and whose model found it).
    boxes: list[dict[str, Any]] = _json(list)
    # Labelling: "unlabelled" → "labelled" (or "rejected": not usable); who and when.
    status: str = Field(default="unlabelled", index=True, max_length=16)
    label: str | None = Field(default=None, max_length=256)
    labelled_by: str | None = Field(default=None, max_length=128)
    labelled_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class DriftBaseline(SQLModel, table=True):
    """What one camera normally sees, learnt from its first windows under one package.

    ``collecting`` until ``windows`` reaches the configured number, then ``proposed``; an
    operator's confirmation makes it ``confirmed``, and from then on that camera's windows
    are tested against it instead of the package's training reference. The histograms use
    the package's edges, so a new package starts a new baseline.
    """

    __tablename__ = "drift_baseline"
    __table_args__ = (UniqueConstraint("device_id", "camera", "package_id", name="uq_drift_baseline_camera"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=64)
    # The agent's pipeline name (one camera and model), "default" for reports that name none.
    camera: str = Field(max_length=64)
    package_id: str = Field(max_length=64)
    state: str = Field(default="collecting", max_length=16)  # collecting, proposed, confirmed
    windows: int = 0
    frames: int = 0
    window_ids: list[int] = _json(list)
    features: list[str] = _json(list)
    # Summed window histograms (features x 32) and predicted-class counts.
    counts: list[list[int]] = _json(list)
    class_counts: list[int] = _json(list)
    # Per feature: frame-weighted sums of window means and of (std^2 + mean^2), for moments.
    mean_sums: list[float] = _json(list)
    square_sums: list[float] = _json(list)
    # The CUSUM allowance for this camera: at least the reference's, raised to cover how
    # much the baseline's own windows differ from one another.
    k: float | None = None
    loo_scores: list[float] = _json(list)
    created_at: datetime = timestamp_field()
    proposed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    confirmed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    confirmed_by: str | None = Field(default=None, max_length=128)
