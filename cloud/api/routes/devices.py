from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import BaseModel

from cloud.api.deps import ActorDep, PlaneDep, SessionDep
from cloud.fleet import crud
from cloud.fleet.deploy import resync_device
from cloud.fleet.liveness import Liveness, public_devices
from cloud.fleet.tables import DeviceCreate, DevicePublic, TelemetryPublic
from cloud.governance import audit

router = APIRouter(prefix="/devices", tags=["devices"])


@router.get("", response_model=list[DevicePublic])
def list_devices(session: SessionDep, plane: PlaneDep, offset: int = Query(0, ge=0),  # type: ignore[no-untyped-def]
                 limit: int = Query(100, ge=1, le=1000)):
    return public_devices(session, crud.list_devices(session, offset, limit), Liveness.from_settings(plane.settings))


@router.post("", response_model=DevicePublic, status_code=201)
def create_device(device_in: DeviceCreate, session: SessionDep):  # type: ignore[no-untyped-def]
    return crud.create_device(session, device_in)


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: str, session: SessionDep, plane: PlaneDep):  # type: ignore[no-untyped-def]
    return public_devices(session, [crud.get_device(session, device_id)], Liveness.from_settings(plane.settings))[0]


@router.get("/{device_id}/telemetry", response_model=list[TelemetryPublic])
def device_telemetry(device_id: str, session: SessionDep, limit: int = Query(100, ge=1, le=1000)):  # type: ignore[no-untyped-def]
    crud.get_device(session, device_id)
    return crud.list_telemetry(session, device_id, limit)


class ResyncPublic(BaseModel):
    device_id: str
    job_id: str
    seq: int


@router.post("/{device_id}/resync", response_model=ResyncPublic, status_code=202)
def resync(device_id: str, session: SessionDep, plane: PlaneDep, actor: ActorDep) -> ResyncPublic:
    """Send the device a signed resync of its command sequence (operators; see docs/security.md).

    The device's outcome comes back as a job report on the returned ``job_id``.
    """
    sent = resync_device(plane, session, device_id)
    audit.record(session, actor=actor, action="device.resynced", subject_type="device", subject_id=device_id,
                 details={"job_id": sent.job_id, "seq": sent.seq})
    session.commit()
    return ResyncPublic(device_id=sent.device_id, job_id=sent.job_id, seq=sent.seq)
