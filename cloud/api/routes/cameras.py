"""``/devices/{id}/cameras``: a device's cameras, managed from the control plane (docs/operations.md).

Every change is checked (4xx saying what to fix), stored, audited and sent to the device as
one director-signed camera set; the device reports back the revision it applied.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.fleet import cameras
from cloud.fleet.cameras import CameraIn, CameraSetIn, CameraSetPublic, CameraSetSent

router = APIRouter(prefix="/devices", tags=["cameras"])


class CameraChangePublic(BaseModel):
    device_id: str
    revision: int
    # The signed command's job id; None when the control plane has no broker connection.
    job_id: str | None


def _sent(device_id: str, sent: CameraSetSent) -> CameraChangePublic:
    return CameraChangePublic(device_id=device_id, revision=sent.revision, job_id=sent.job_id)


@router.get("/{device_id}/cameras", response_model=CameraSetPublic)
def list_cameras(device_id: str, session: SessionDep) -> CameraSetPublic:
    """Desired cameras beside what the device reports running, and the applied vs desired revision."""
    return cameras.camera_set(session, device_id)


@router.put("/{device_id}/cameras", response_model=CameraChangePublic, status_code=202)
def replace_cameras(device_id: str, body: CameraSetIn, session: SessionDep, plane: PlaneDep,
                    actor: ActorDep) -> CameraChangePublic:
    """Replace the device's whole camera set (sent again even when unchanged: a re-send)."""
    return _sent(device_id, cameras.replace_cameras(plane, session, device_id, body.cameras, actor=actor))


@router.post("/{device_id}/cameras", response_model=CameraChangePublic, status_code=202)
def add_camera(device_id: str, body: CameraIn, session: SessionDep, plane: PlaneDep,
               actor: ActorDep) -> CameraChangePublic:
    return _sent(device_id, cameras.add_camera(plane, session, device_id, body, actor=actor))


@router.put("/{device_id}/cameras/{name}", response_model=CameraChangePublic, status_code=202)
def update_camera(device_id: str, name: str, body: CameraIn, session: SessionDep, plane: PlaneDep,
                  actor: ActorDep) -> CameraChangePublic:
    return _sent(device_id, cameras.update_camera(plane, session, device_id, name, body, actor=actor))


@router.delete("/{device_id}/cameras/{name}", response_model=CameraChangePublic, status_code=202)
def remove_camera(device_id: str, name: str, session: SessionDep, plane: PlaneDep,
                  actor: ActorDep) -> CameraChangePublic:
    return _sent(device_id, cameras.remove_camera(plane, session, device_id, name, actor=actor))
