"""Admin-only: API tokens, enrollment tokens, certificate revocation, key status."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlmodel import col, select

from cloud.api.deps import ActorDep, AdminDep, PlaneDep, SessionDep, require_admin
from cloud.errors import InvalidInputError
from cloud.governance import audit
from cloud.security.tables import ApiToken, ApiTokenPublic, Role
from cloud.security.tokens import create_api_token, revoke_api_token

router = APIRouter(tags=["security"], dependencies=[Depends(require_admin)])


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    role: Role = Role.VIEWER
    ttl_s: int | None = Field(default=None, gt=0, le=10 * 365 * 86_400,
                              description="seconds until the token expires; default EDGEFLEET_API_TOKEN_TTL_S")


class TokenCreated(BaseModel):
    id: str
    name: str
    role: Role
    token: str
    expires_at: datetime | None


class EnrollmentTokenCreate(BaseModel):
    device_id: str = Field(max_length=64)
    hardware_profile: str = Field(default="x86-64-avx2", max_length=64)


class EnrollmentTokenCreated(BaseModel):
    device_id: str
    token: str
    expires_at: datetime
    # Where devices enroll: EDGEFLEET_PUBLIC_URL when set; None = the address the caller used.
    server_url: str | None = None


@router.post("/tokens", response_model=TokenCreated, status_code=201)
def create_token(body: TokenCreate, session: SessionDep, plane: PlaneDep, actor: ActorDep) -> TokenCreated:
    """Create an operator API token. The secret is in this response only; it is stored hashed. It expires."""
    if body.role == Role.DEVICE:
        raise HTTPException(422, "device tokens are issued by enrollment, not here")
    secret, row = create_api_token(session, name=body.name, role=body.role,
                                   ttl_s=body.ttl_s or plane.settings.api_token_ttl_s)
    audit.record(session, actor=actor, action="token.created", subject_type="api_token", subject_id=row.id,
                 details={"name": row.name, "role": body.role.value})
    session.commit()
    return TokenCreated(id=row.id, name=row.name, role=body.role, token=secret, expires_at=row.expires_at)


@router.get("/tokens", response_model=list[ApiTokenPublic])
def list_tokens(session: SessionDep):  # type: ignore[no-untyped-def]
    return list(session.exec(select(ApiToken).order_by(col(ApiToken.created_at))))


@router.delete("/tokens/{token_id}", status_code=204)
def delete_token(token_id: str, session: SessionDep, actor: ActorDep) -> None:
    row = session.get(ApiToken, token_id)
    if not revoke_api_token(session, token_id):
        raise HTTPException(404, f"token {token_id!r} does not exist")
    audit.record(session, actor=actor, action="token.revoked", subject_type="api_token", subject_id=token_id,
                 details={"name": row.name if row is not None else None})
    session.commit()


@router.post("/enrollment-tokens", response_model=EnrollmentTokenCreated, status_code=201)
def create_enrollment(body: EnrollmentTokenCreate, session: SessionDep, plane: PlaneDep,
                      actor: ActorDep) -> EnrollmentTokenCreated:
    """A one-time token for `edgefleet-agent enroll --token`, valid for EDGEFLEET_ENROLLMENT_TOKEN_TTL_S.

    The token pins the fleet's TUF root and director key; the agent refuses others.
    """
    try:
        token, expires_at = plane.security.create_enrollment_token(session, body.device_id,
                                                                   hardware_profile=body.hardware_profile)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    audit.record(session, actor=actor, action="enrollment_token.created", subject_type="device",
                 subject_id=body.device_id, details={"hardware_profile": body.hardware_profile,
                                                     "expires_at": expires_at.isoformat()})
    session.commit()
    return EnrollmentTokenCreated(device_id=body.device_id, token=token, expires_at=expires_at,
                                  server_url=plane.settings.public_url)


@router.post("/devices/{device_id}/revoke")
def revoke_device(device_id: str, session: SessionDep, plane: PlaneDep, caller: AdminDep,
                  actor: ActorDep) -> dict[str, object]:
    """Take every credential of the device: certificates (the CRL is rewritten; a broker that
    watches it reloads), API tokens and pending enrollment. It gets no new one until re-admitted."""
    try:
        serials = plane.security.revoke_device(session, device_id, revoked_by=caller.name)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None
    audit.record(session, actor=actor, action="device.revoked", subject_type="device", subject_id=device_id,
                 details={"revoked_serials": [str(s) for s in serials]})
    session.commit()
    return {"device_id": device_id, "revoked_serials": [str(s) for s in serials],
            "crl_file": str(plane.security.ca.crl_file)}


@router.post("/devices/{device_id}/readmit")
def readmit_device(device_id: str, session: SessionDep, plane: PlaneDep, actor: ActorDep) -> dict[str, object]:
    """Let a revoked device enroll again; it still needs a new enrollment token."""
    plane.security.readmit_device(session, device_id)
    audit.record(session, actor=actor, action="device.readmitted", subject_type="device", subject_id=device_id)
    session.commit()
    return {"device_id": device_id, "readmitted": True}


@router.get("/security/status")
def security_status(plane: PlaneDep) -> dict[str, object]:
    return plane.security.status()
