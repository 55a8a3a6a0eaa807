"""Device enrollment (authenticated by a one-time token) and certificate rotation."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from cloud.api.deps import PlaneDep, SessionDep, require_access
from cloud.fleet import crud
from cloud.security.tokens import EnrollmentRefused

router = APIRouter(tags=["enrollment"])


class EnrollRequest(BaseModel):
    token: str = Field(min_length=8, max_length=256)
    csr_pem: str = Field(max_length=16_384)


class CertificateRequest(BaseModel):
    csr_pem: str = Field(max_length=16_384)


@router.post("/enroll")
def enroll(body: EnrollRequest, session: SessionDep, plane: PlaneDep) -> dict[str, object]:
    """Exchange a one-time enrollment token and a CSR for a certificate and the fleet's trust roots."""
    try:
        bundle = plane.security.enroll(session, body.token, body.csr_pem.encode(),
                                       mqtt_url=plane.broker_url, api_url=plane.base_url)
    except EnrollmentRefused as exc:
        raise HTTPException(403, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return bundle.as_dict()


@router.post("/devices/{device_id}/certificate", dependencies=[Depends(require_access)])
def rotate_certificate(device_id: str, body: CertificateRequest, session: SessionDep, plane: PlaneDep) -> dict[str, object]:
    """A new certificate for a new device key; the device's older certificates are revoked."""
    try:
        issued = plane.security.rotate_certificate(session, device_id, body.csr_pem.encode())
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    return {"device_id": device_id, "certificate_pem": issued.pem.decode(), "serial": str(issued.serial)}


@router.get("/devices/{device_id}/connection", dependencies=[Depends(require_access)])
def device_connection(device_id: str, session: SessionDep, plane: PlaneDep) -> dict[str, object]:
    """Where the device reaches the control plane now; an agent asks when its broker stops answering."""
    device = crud.get_device(session, device_id)
    mqtt_url = plane.settings.device_mqtt_url or plane.broker_url
    if device.mqtt_url != mqtt_url:
        device.mqtt_url = mqtt_url
        session.add(device)
        session.commit()
    return {"device_id": device_id, "mqtt_url": mqtt_url, "api_url": plane.base_url,
            "topic_prefix": plane.settings.topic_prefix}
