"""Dataset routes: ingest a directory under the import root (as an ``import`` job), validate, list, show."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.api.routes.jobs import submit
from cloud.api.routes.models import user_errors
from cloud.core.config import Settings
from cloud.core.ids import DATASET_ID
from cloud.errors import BadRequestError, PermissionDeniedError
from cloud.pipeline.registry import store
from cloud.pipeline.registry.tables import DatasetPublic

router = APIRouter(prefix="/datasets", tags=["datasets"])


class DatasetSource(BaseModel):
    path: str = Field(min_length=1, max_length=4096,
                      description="an ImageFolder directory inside the import root (EDGEFLEET_DATASET_IMPORT_ROOT); "
                                  "relative paths are taken from that root")


def confined_dataset_path(settings: Settings, requested: str) -> Path:
    """``requested`` resolved inside the import root, or ``PermissionDeniedError`` (403) naming the setting.

    Resolved (symlinks and ``..`` followed) before the check, so neither can lead out of the root.
    """
    root = settings.imports_dir
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    try:
        candidate = (root / requested).resolve()  # an absolute ``requested`` replaces root, and is checked the same
        candidate.stat()  # what the filesystem cannot even look up (NUL bytes, unencodable names) fails here
    except FileNotFoundError:
        pass  # a missing directory inside the root is the caller's 400 to give
    except (OSError, ValueError) as exc:
        raise BadRequestError(f"dataset path {requested[:200]!r} is not a usable path: {exc}") from None
    if not candidate.is_relative_to(root):
        raise PermissionDeniedError(
            f"dataset path {requested[:200]!r} is outside the dataset import root {root}; copy the dataset "
            "there (or set EDGEFLEET_DATASET_IMPORT_ROOT on the control plane) and send a path inside it")
    return candidate


@router.get("", response_model=list[DatasetPublic])
def list_datasets(session: SessionDep):  # type: ignore[no-untyped-def]
    return store.list_datasets(session)


@router.post("", status_code=202)
def ingest_dataset(body: DatasetSource, plane: PlaneDep, actor: ActorDep) -> dict[str, Any]:
    """Queue an import: validate and store a content-addressed version (corrupt images are excluded and
    listed in ``issues``); 202 with the job id, whose result names the dataset."""
    root = confined_dataset_path(plane.settings, body.path)
    if not root.is_dir():
        raise BadRequestError(f"dataset directory {body.path[:200]!r} does not exist under the import root "
                              "(or is not a directory)")
    return submit(plane, "import", {"path": str(root)}, created_by=actor)


@router.post("/validate")
def validate_dataset(body: DatasetSource, plane: PlaneDep) -> dict[str, Any]:
    """Validate a directory without ingesting it."""
    # Imported here: it pulls in torch, which the API and CLI keep out of start-up.
    from cloud.pipeline.service import validate_directory

    source = confined_dataset_path(plane.settings, body.path)
    with user_errors():
        report = validate_directory(source)
    return {"dataset_id": report.dataset_id, "ok": report.ok, "usable_images": report.usable_images,
            "excluded_files": report.excluded_files, "issues": [i.as_dict() for i in report.issues]}


@router.get("/{dataset_id}", response_model=DatasetPublic)
def get_dataset(dataset_id: Annotated[str, PathParam(pattern=DATASET_ID)], session: SessionDep):  # type: ignore[no-untyped-def]
    return store.get_dataset(session, dataset_id)
