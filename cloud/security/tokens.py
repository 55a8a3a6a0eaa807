"""API and enrollment tokens: random secrets handed out once, stored as sha256 only."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, select

from agent.contract import validate_device_id
from cloud.errors import PermissionDeniedError
from cloud.security.ca import CONTROL_PLANE_IDENTITY, IssuedCertificate
from cloud.security.tables import ApiToken, DeviceCertificate, EnrollmentToken, Role

__all__ = [
    "EnrollmentRefused",
    "Principal",
    "TokenExpired",
    "authenticate",
    "create_api_token",
    "create_enrollment_token",
    "principal_for_row",
    "record_certificate",
    "redeem_enrollment_token",
    "revoke_api_token",
    "revoke_device_certificates",
]


class EnrollmentRefused(PermissionDeniedError, ValueError):
    """The enrollment token is unknown, used or expired (the API answers 403)."""


class TokenExpired(Exception):
    """A known, unrevoked API token past its ``expires_at`` (the API answers 401 with this message)."""

    def __init__(self, token_name: str) -> None:
        super().__init__(f"API token {token_name!r} expired; create a new one with "
                         "`edgefleet token create --name NAME --role ROLE [--ttl SECONDS]`")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, a name for the audit trail, and the device for device tokens."""

    role: Role
    name: str
    device_id: str | None = None
    # The api_token row behind it (dashboard sessions link to it).
    token_id: str | None = None

    def at_least(self, role: Role) -> bool:
        return self.role != Role.DEVICE and self.role.rank >= role.rank


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def create_api_token(session: Session, *, name: str, role: Role, device_id: str | None = None,
                     ttl_s: int | None = None) -> tuple[str, ApiToken]:
    """Create a token; return (the secret, shown once, and the stored row).

    ``ttl_s``: seconds until it expires; None for no expiry (device tokens; the API and
    CLI always pass EDGEFLEET_API_TOKEN_TTL_S or the caller's choice for operator tokens).

    Raises:
        ValueError: a device token without a device id, a device id on an operator token, or ttl_s <= 0.
    """
    if (role == Role.DEVICE) != (device_id is not None):
        raise ValueError("device tokens need a device id, and only device tokens may have one")
    if ttl_s is not None and ttl_s <= 0:
        raise ValueError(f"a token lifetime must be positive, not {ttl_s} s")
    secret = _new_secret("efd" if role == Role.DEVICE else "efo")
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s) if ttl_s is not None else None
    row = ApiToken(id=uuid.uuid4().hex, name=name, role=role.value, token_sha256=_digest(secret), device_id=device_id,
                   expires_at=expires_at)
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
    """The principal for a bearer token, or None when it is unknown or revoked.

    The lookup is by the secret's sha256 (an index hit, not a comparison of secrets).

    Raises:
        TokenExpired: the token is known and unrevoked, but past its ``expires_at``.
    """
    row = session.exec(select(ApiToken).where(ApiToken.token_sha256 == _digest(token))).first()
    return principal_for_row(row)


def principal_for_row(row: ApiToken | None) -> Principal | None:
    """The principal an api_token row stands for now: None if missing or revoked; ``TokenExpired`` if expired."""
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None:
        expires_at = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires_at <= datetime.now(UTC):
            raise TokenExpired(row.name)
    return Principal(Role(row.role), row.name, row.device_id, row.id)


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
