"""TUF metadata and targets over HTTP (public: everything served here is signed).

Targets support HTTP Range (Starlette's FileResponse), so devices resume
interrupted downloads. ``timestamp.json`` is re-signed on the way out when it
nears expiry, so an idle repository never freezes its devices by accident.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from cloud.api.deps import PlaneDep

router = APIRouter(prefix="/tuf", tags=["tuf"])


@router.get("/metadata/{name}", response_class=FileResponse)
def metadata(name: str, plane: PlaneDep) -> FileResponse:
    repository = plane.security.tuf
    if name == "timestamp.json":
        repository.refresh_expiring()
    path = repository.metadata_file(name)
    if path is None:
        raise HTTPException(404, f"no metadata {name!r}")
    return FileResponse(path, media_type="application/json")


@router.get("/targets/{target_path:path}", response_class=FileResponse)
def target(target_path: str, plane: PlaneDep) -> FileResponse:
    path = plane.security.tuf.target_file(target_path)
    if path is None:
        raise HTTPException(404, f"no target {target_path!r}")
    return FileResponse(path, media_type="application/octet-stream")


@router.get("/crl.pem", response_class=FileResponse)
def certificate_revocation_list(plane: PlaneDep) -> FileResponse:
    """The device CA's CRL (signed by the CA), for brokers that watch it: `edgefleet broker watch-crl --crl-url`."""
    return FileResponse(plane.security.ca.crl_file, media_type="application/pkix-crl")
