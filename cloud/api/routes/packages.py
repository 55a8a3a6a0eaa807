from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel

from agent.contract import MANIFEST_FILE, PackageManifest
from cloud.api.deps import ActorDep, AdminDep, PlaneDep, SessionDep
from cloud.core.ids import SAFE_ID
from cloud.fleet import crud
from cloud.fleet.tables import PackagePublic
from cloud.governance import audit

router = APIRouter(prefix="/packages", tags=["packages"])
# Package ids and file names name directories and files: checked before any lookup.
PackageIdParam = Annotated[str, PathParam(pattern=SAFE_ID, max_length=200)]
FileNameParam = Annotated[str, PathParam(pattern=SAFE_ID, max_length=200)]


@router.get("", response_model=list[PackagePublic])
def list_packages(session: SessionDep):  # type: ignore[no-untyped-def]
    return crud.list_packages(session)


@router.get("/{package_id}", response_model=PackagePublic)
def get_package(package_id: PackageIdParam, session: SessionDep):  # type: ignore[no-untyped-def]
    return crud.get_package(session, package_id)


@router.get("/{package_id}/files/{name}", response_class=FileResponse)
def package_file(package_id: PackageIdParam, name: FileNameParam, session: SessionDep) -> FileResponse:
    """Serve one file of a package. Supports HTTP Range so devices can resume."""
    package = crud.get_package(session, package_id)
    directory = Path(package.path)
    if name != MANIFEST_FILE:
        # Only names the manifest lists are served: no path tricks reach the disk.
        manifest = PackageManifest.from_bytes((directory / MANIFEST_FILE).read_bytes())
        try:
            manifest.file(name)
        except KeyError:
            raise crud.NotFound(f"package {package_id!r} has no file {name!r}") from None
    return FileResponse(directory / name, media_type="application/octet-stream")


class WithdrawnPublic(BaseModel):
    package_id: str
    targets_removed: int


@router.post("/{package_id}/withdraw", response_model=WithdrawnPublic)
def withdraw_package(package_id: str, session: SessionDep, plane: PlaneDep, admin: AdminDep,
                     actor: ActorDep) -> WithdrawnPublic:
    """Remove the package from the signed TUF targets (admin). Devices refuse it as an unknown
    target from their next metadata refresh; new deployments of it are refused here."""
    crud.get_package(session, package_id)
    removed = plane.security.tuf.withdraw_package(package_id)
    audit.record(session, actor=actor, action="package.withdrawn", subject_type="package", subject_id=package_id,
                 details={"targets_removed": removed})
    session.commit()
    return WithdrawnPublic(package_id=package_id, targets_removed=removed)
