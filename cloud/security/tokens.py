"""API and enrollment tokens: random secrets handed out once, stored as sha256 only."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from agent.contract import validate_device_id
from cloud.errors import PermissionDeniedError
from cloud.security.ca import CONTROL_PLANE_IDENTITY, IssuedCertificate
from cloud.security.tables import ApiToken, DeviceCertificate, EnrollmentToken, Role

__all__ = [
    "EnrollmentRefused",
    "Principal",
    "authenticate",
    "authenticate_device",
    "create_api_token",
    "create_enrollment_token",
    "record_certificate",
    "redeem_enrollment_token",
    "revoke_api_token",
    "revoke_device_certificates",
]


class EnrollmentRefused(PermissionDeniedError, ValueError):
    """The enrollment token is unknown, used or expired (the API answers 403)."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, a name for the audit trail, and the device for device tokens."""

    role: Role
    name: str
    device_id: str | None = None

    def at_least(self, role: Role) -> bool:
        return self.role != Role.DEVICE and self.role.rank >= role.rank


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def create_api_token(session: Session, *, name: str, role: Role, device_id: str | None = None) -> tuple[str, ApiToken]:
    """Create a token; return (the secret, shown once, and the stored row).

    Raises:
        ValueError: a device token without a device id, or a device id on an operator token.
    """
    if (role == Role.DEVICE) != (device_id is not None):
        raise ValueError("device tokens need a device id, and only device tokens may have one")
    secret = _new_secret("efd" if role == Role.DEVICE else "efo")
    row = ApiToken(id=uuid.uuid4().hex, name=name, role=role.value, token_sha256=_digest(secret), device_id=device_id)
    session.add(row)
    session.commit()
    session.refresh(row)
    return secret, row


def revoke_api_token(session: Session, token_id: str) -> bool:
    row = session.get(ApiToken, token_id)
    if row is None:
        return False
    row.revoked_at = datetime.now(UTC)
    session.add(row)
    session.commit()
    return True


def authenticate(session: Session, token: str) -> Principal | None:
    """The principal for a bearer token, or None when it is unknown or revoked."""
    row = session.exec(select(ApiToken).where(ApiToken.token_sha256 == _digest(token))).first()
    if row is None or row.revoked_at is not None:
        return None
    return Principal(Role(row.role), row.name, row.device_id)


def authenticate_device(engine: Engine, device_id: str, token: str) -> bool:
    """Whether ``token`` is a live API token of ``device_id`` (the embedded broker's login check)."""
    with Session(engine) as session:
        principal = authenticate(session, token)
    return principal is not None and principal.role == Role.DEVICE and principal.device_id == device_id


def create_enrollment_token(session: Session, device_id: str, *, hardware_profile: str, ttl_s: int) -> tuple[str, datetime]:
    """A one-time token that lets whoever holds it enroll as ``device_id``. Returns (secret, expiry)."""
    validate_device_id(device_id)
    if device_id == CONTROL_PLANE_IDENTITY:
        raise ValueError(f"{device_id!r} is reserved for the control plane's broker identity")
    secret = _new_secret("efe")
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    session.add(EnrollmentToken(id=uuid.uuid4().hex, device_id=device_id, hardware_profile=hardware_profile,
                                token_sha256=_digest(secret), expires_at=expires_at))
    session.commit()
    return secret, expires_at


def redeem_enrollment_token(session: Session, token: str) -> EnrollmentToken:
    """Mark ``token`` used and return it. Does not commit: the caller commits with the certificate.

    Raises:
        EnrollmentRefused: unknown, already used or expired.
    """
    row = session.exec(select(EnrollmentToken).where(EnrollmentToken.token_sha256 == _digest(token))).first()
    if row is None:
        raise EnrollmentRefused("unknown enrollment token")
    if row.used_at is not None:
        raise EnrollmentRefused("enrollment token was already used; ask an admin for a new one")
    expires_at = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires_at < datetime.now(UTC):
        raise EnrollmentRefused("enrollment token expired; ask an admin for a new one")
    row.used_at = datetime.now(UTC)
    session.add(row)
    return row


def record_certificate(session: Session, device_id: str, issued: IssuedCertificate) -> None:
    session.add(DeviceCertificate(serial=str(issued.serial), device_id=device_id, not_after=issued.not_after))


def revoke_device_certificates(session: Session, device_id: str, *, keep_serial: int | None = None) -> list[int]:
    """Mark every unrevoked certificate of ``device_id`` revoked (except ``keep_serial``); return serials."""
    query = select(DeviceCertificate).where(DeviceCertificate.device_id == device_id,
                                            col(DeviceCertificate.revoked_at).is_(None))
    serials: list[int] = []
    for row in session.exec(query):
        if keep_serial is not None and row.serial == str(keep_serial):
            continue
        row.revoked_at = datetime.now(UTC)
        session.add(row)
        serials.append(int(row.serial))
    return serials
