"""Dataset routes: ingest a directory the control plane can read (as an ``import`` job), validate, list, show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from cloud.api.deps import PlaneDep, SessionDep
from cloud.api.routes.jobs import actor, submit
from cloud.api.routes.models import user_errors
from cloud.errors import BadRequestError
from cloud.pipeline.registry import store
from cloud.pipeline.registry.tables import DatasetPublic

router = APIRouter(prefix="/datasets", tags=["datasets"])


class DatasetSource(BaseModel):
    path: str = Field(min_length=1, description="an ImageFolder directory on the control plane's filesystem")


@router.get("", response_model=list[DatasetPublic])
def list_datasets(session: SessionDep):  # type: ignore[no-untyped-def]
    return store.list_datasets(session)


@router.post("", status_code=202)
def ingest_dataset(body: DatasetSource, plane: PlaneDep, request: Request) -> dict[str, Any]:
    """Queue an import: validate and store a content-addressed version (corrupt images are excluded and
    listed in ``issues``); 202 with the job id, whose result names the dataset."""
    root = Path(body.path)
    if not root.is_dir():
        raise BadRequestError(f"dataset directory {root} does not exist on the control plane (or is not a directory)")
    return submit(plane, "import", {"path": str(root.resolve())}, created_by=actor(request))


@router.post("/validate")
def validate_dataset(body: DatasetSource) -> dict[str, Any]:
    """Validate a directory without ingesting it."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import validate_directory

    with user_errors():
        report = validate_directory(Path(body.path))
    return {"dataset_id": report.dataset_id, "ok": report.ok, "usable_images": report.usable_images,
            "excluded_files": report.excluded_files, "issues": [i.as_dict() for i in report.issues]}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: str, session: SessionDep):  # type: ignore[no-untyped-def]
    return store.get_dataset(session, dataset_id)
