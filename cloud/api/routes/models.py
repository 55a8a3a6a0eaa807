from __future__ import annotations

from fastapi import APIRouter

from cloud import crud
from cloud.api.deps import SessionDep
from cloud.models import ModelVersionPublic

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep):  # type: ignore[no-untyped-def]
    return crud.list_model_versions(session)


@router.get("/{version}", response_model=ModelVersionPublic)
def get_model(version: str, session: SessionDep):  # type: ignore[no-untyped-def]
    return crud.get_model_version(session, version)
