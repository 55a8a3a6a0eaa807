"""Registry tables owned by the pipeline (migration ``0002_pipeline``).

The shared ``model_version`` table keeps the model's identity and status; these
tables add what the pipeline knows: dataset versions, each model's lineage
(environment, evaluation, gate decision) and each build's artifacts with hashes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column
from sqlmodel import Field, SQLModel

from cloud.core.timestamps import timestamp_field


def _json(default_factory: Any) -> Any:
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))



class DatasetRecord(SQLModel, table=True):
    __tablename__ = "dataset_version"

    id: str = Field(primary_key=True, max_length=80)
    source_path: str
    store_path: str
    labels: list[str] = _json(list)
    metadata_fields: list[str] = _json(list)
    # {"train": {"circle": 104, ...}, "val": {...}, "test": {...}}
    split_counts: dict[str, Any] = _json(dict)
    issues: list[dict[str, str]] = _json(list)
    image_count: int = 0
    excluded_count: int = 0
    created_at: datetime = timestamp_field()


class DatasetPublic(SQLModel):
    id: str
    source_path: str
    labels: list[str]
    metadata_fields: list[str]
    split_counts: dict[str, Any]
    issues: list[dict[str, str]]
    image_count: int
    excluded_count: int
    created_at: datetime


class ModelLineage(SQLModel, table=True):
    __tablename__ = "model_lineage"

    model_version_id: int = Field(primary_key=True, foreign_key="model_version.id")
    source: str = Field(default="trained", max_length=16)  # trained | imported
    preprocessing: dict[str, Any] = _json(dict)
    environment: dict[str, Any] = _json(dict)
    evaluation: dict[str, Any] = _json(dict)
    gate: dict[str, Any] = _json(dict)
    compared_with: str | None = Field(default=None, max_length=128)
    checkpoint_path: str | None = None


class ModelBuild(SQLModel, table=True):
    __tablename__ = "model_build"

    id: str = Field(primary_key=True, max_length=64)
    model_version_id: int = Field(foreign_key="model_version.id", index=True)
    profiles: list[str] = _json(list)
    # One entry per artifact: file, runtime, precision, sha256, size_bytes, profiles, accuracy, gate.
    artifacts: list[dict[str, Any]] = _json(list)
    # Per profile and target: built | rejected | not_built | built_on_device | built_externally, with a message.
    notes: list[dict[str, Any]] = _json(list)
    package_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = timestamp_field()
