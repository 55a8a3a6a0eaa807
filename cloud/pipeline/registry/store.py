"""Data access for the pipeline's registry. Services call these; they never build queries."""

from __future__ import annotations

from sqlmodel import Session, col, select

from cloud.fleet.crud import NotFound
from cloud.fleet.tables import ModelVersion
from cloud.pipeline.registry.tables import DatasetRecord, ModelBuild, ModelLineage


def save_dataset(session: Session, record: DatasetRecord) -> DatasetRecord:
    """Insert or refresh a dataset version (ingesting the same bytes twice is idempotent)."""
    existing = session.get(DatasetRecord, record.id)
    if existing is not None:
        for name in ("source_path", "store_path", "issues", "split_counts", "image_count", "excluded_count"):
            setattr(existing, name, getattr(record, name))
        record = existing
    session.add(record)
    session.commit()
    session.refresh(record)
    return record


def get_dataset(session: Session, dataset_id: str) -> DatasetRecord:
    record = session.get(DatasetRecord, dataset_id)
    if record is None:
        raise NotFound(f"dataset {dataset_id!r} does not exist; ingest it first")
    return record


def list_datasets(session: Session) -> list[DatasetRecord]:
    return list(session.exec(select(DatasetRecord).order_by(col(DatasetRecord.created_at).desc())))


def save_lineage(session: Session, lineage: ModelLineage) -> ModelLineage:
    session.merge(lineage)
    session.commit()
    return lineage


def get_lineage(session: Session, model_version_id: int) -> ModelLineage | None:
    return session.get(ModelLineage, model_version_id)


def add_build(session: Session, build: ModelBuild) -> ModelBuild:
    session.add(build)
    session.commit()
    session.refresh(build)
    return build


def list_builds(session: Session, model_version_id: int) -> list[ModelBuild]:
    query = select(ModelBuild).where(ModelBuild.model_version_id == model_version_id).order_by(
        col(ModelBuild.created_at).desc())
    return list(session.exec(query))


def production_model(session: Session, name: str) -> ModelVersion | None:
    """The newest version of ``name`` with status ``production``, if any."""
    query = select(ModelVersion).where(ModelVersion.name == name, ModelVersion.status == "production").order_by(
        col(ModelVersion.id).desc())
    return session.exec(query).first()


def set_status(session: Session, model: ModelVersion, status: str) -> ModelVersion:
    model.status = status
    session.add(model)
    session.commit()
    session.refresh(model)
    return model
