"""Governance tables (migration ``0006_monitor``): audit log, proposals, dataset lineage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from cloud.core.timestamps import UtcDateTime, timestamp_field


def _json(default_factory: Any) -> Any:
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


class AuditEvent(SQLModel, table=True):
    """Who or what did what, to which subject, when, with the numbers that drove it."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = timestamp_field(index=True)
    actor: str = Field(max_length=128)
    action: str = Field(index=True, max_length=64)
    subject_type: str = Field(max_length=32)
    subject_id: str = Field(index=True, max_length=128)
    details: dict[str, Any] = _json(dict)


class RetrainingProposal(SQLModel, table=True):
    """Opened by a drift alert; carried through labelling, training and validation."""

    __tablename__ = "retraining_proposal"

    id: str = Field(primary_key=True, max_length=32)
    # open → training → validated | rejected → rollout_proposed
    state: str = Field(default="open", index=True, max_length=24)
    created_at: datetime = timestamp_field()
    updated_at: datetime = timestamp_field()
    created_by: str = Field(max_length=128)
    base_model_version: str | None = Field(default=None, max_length=128)
    base_package_id: str | None = Field(default=None, max_length=64)
    base_dataset_id: str | None = Field(default=None, max_length=80)
    alert_ids: list[str] = _json(list)
    device_ids: list[str] = _json(list)
    new_dataset_id: str | None = Field(default=None, max_length=80)
    new_model_version: str | None = Field(default=None, max_length=128)
    new_package_id: str | None = Field(default=None, max_length=64)
    validation: dict[str, Any] = _json(dict)
    rollout_proposal_id: str | None = Field(default=None, max_length=32)


class RolloutProposal(SQLModel, table=True):
    """A canary rollout of a retrained release that waits for approval (or auto-approval)."""

    __tablename__ = "rollout_proposal"

    id: str = Field(primary_key=True, max_length=32)
    retraining_proposal_id: str | None = Field(default=None, max_length=32)
    model_version: str = Field(max_length=128)
    package_id: str = Field(max_length=64)
    device_ids: list[str] = _json(list)
    # pending → approved → started | rejected
    state: str = Field(default="pending", index=True, max_length=16)
    auto_approved: bool = False
    decided_by: str | None = Field(default=None, max_length=128)
    decided_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    rollout_id: str | None = Field(default=None, max_length=64)
    deployment_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = timestamp_field()
    reason: str = Field(default="", max_length=512)


class DatasetLineage(SQLModel, table=True):
    """A dataset version made by governance: its parent and the samples it added."""

    __tablename__ = "dataset_lineage"

    dataset_id: str = Field(primary_key=True, max_length=80)
    parent_dataset_id: str | None = Field(default=None, max_length=80)
    sample_ids: list[str] = _json(list)
    device_ids: list[str] = _json(list)
    store_path: str = ""
    proposal_id: str | None = Field(default=None, max_length=32)
    created_by: str = Field(max_length=128)
    created_at: datetime = timestamp_field()


class SampleLabelChange(SQLModel, table=True):
    """One change of a sample's label: who gave it, when, and what it replaced.

    The sample row keeps only the current label; this is its history, so a relabel
    never erases the earlier judgement (migration ``0010_label19_label_history``).
    """

    __tablename__ = "sample_label_change"

    id: int | None = Field(default=None, primary_key=True)
    sample_id: str = Field(index=True, max_length=64)
    at: datetime = timestamp_field()
    actor: str = Field(max_length=128)
    old_label: str | None = Field(default=None, max_length=256)
    new_label: str | None = Field(default=None, max_length=256)
    old_status: str = Field(max_length=16)
    new_status: str = Field(max_length=16)
    # Detection samples: the boxes before and after (fractions of the frame); None for a classifier's
    # sample or a rejection (migration ``detretrain_box_labels``).
    old_boxes: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    new_boxes: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class SampleBoxLabel(SQLModel, table=True):
    """The current box label of a detection sample: each object's class and box in fractions of the frame.

    An empty list is a label too: the frame holds no objects. The sample row keeps the
    status and a short summary in ``label``; retraining reads the boxes from here.
    """

    __tablename__ = "sample_box_label"

    sample_id: str = Field(primary_key=True, max_length=64)
    boxes: list[dict[str, Any]] = _json(list)
    labelled_by: str = Field(default="", max_length=128)
    labelled_at: datetime = timestamp_field()
