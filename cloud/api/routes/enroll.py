"""Device enrollment (authenticated by a one-time token) and certificate rotation."""

from __future__ import annotations

import base64
import binascii

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from cloud.api.deps import CurrentPrincipal, PlaneDep, SessionDep, require_access
from cloud.errors import EdgeFleetError, InvalidInputError
from cloud.fleet import crud

router = APIRouter(tags=["enrollment"])


class EnrollRequest(BaseModel):
    token: str = Field(min_length=8, max_length=256)
    csr_pem: str = Field(max_length=16_384)


class CertificateRequest(BaseModel):
    csr_pem: str = Field(max_length=16_384)
    # A device proves it holds its current key; an admin issuing for a device sends neither.
    current_certificate_pem: str | None = Field(default=None, max_length=16_384)
    proof: str | None = Field(default=None, max_length=1_024, description="base64 ECDSA-SHA256 signature by the "
                              "current key over the rotation context, the device id and the new CSR")


@router.post("/enroll")
def enroll(body: EnrollRequest, session: SessionDep, plane: PlaneDep) -> dict[str, object]:
    """Exchange a one-time enrollment token and a CSR for a certificate and the fleet's trust roots."""
    try:
        bundle = plane.security.enroll(session, body.token, body.csr_pem.encode(),
                                       mqtt_url=plane.broker_url, api_url=plane.base_url)
    except EdgeFleetError:
        raise  # refusals carry their own status (403 for a used, expired or revoked device's token)
    except ValueError as exc:  # a malformed CSR
        raise InvalidInputError(str(exc)) from None
    return bundle.as_dict()


@router.post("/devices/{device_id}/certificate", dependencies=[Depends(require_access)])
def issue_certificate(device_id: str, body: CertificateRequest, session: SessionDep, plane: PlaneDep,
                      caller: CurrentPrincipal) -> dict[str, object]:
    """A new certificate for a new device key; the device's older certificates are revoked.

    The device itself may ask, proving its current key; an admin may issue for any
    enrolled device that is not revoked; nobody else.
    """
    try:
        proof = base64.b64decode(body.proof, validate=True) if body.proof is not None else None
    except (binascii.Error, ValueError):
        raise InvalidInputError("proof must be base64") from None
    try:
        issued = plane.security.issue_certificate(
            session, caller, device_id, body.csr_pem.encode(), proof=proof,
            current_certificate_pem=body.current_certificate_pem.encode() if body.current_certificate_pem else None)
    except EdgeFleetError:
        raise
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
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
