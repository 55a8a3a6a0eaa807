"""API and enrollment tokens: random secrets handed out once, stored as sha256 only."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from agent.contract import validate_device_id
from agent.contract.enrollment import ENROLLMENT_TOKEN_PREFIX, PinnedEnrollmentToken
from cloud.errors import PermissionDeniedError
from cloud.security.ca import IssuedCertificate, refuse_reserved_identity
from cloud.security.tables import ApiToken, DeviceCertificate, EnrollmentToken, RevokedDevice, Role

__all__ = [
    "DeviceRevokedError",
    "EnrollmentRefused",
    "Principal",
    "TokenExpired",
    "authenticate",
    "authenticate_device",
    "create_api_token",
    "create_enrollment_token",
    "is_revoked_device",
    "principal_for_row",
    "record_certificate",
    "redeem_enrollment_token",
    "revoke_api_token",
    "revoke_device_certificates",
    "revoke_device_credentials",
]


class EnrollmentRefused(PermissionDeniedError, ValueError):
    """The enrollment token is unknown, used or expired (the API answers 403)."""


class DeviceRevokedError(PermissionDeniedError):
    """The device was revoked: it gets no new credential until an admin re-admits it (403)."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id} was revoked; it gets no new credential until an admin runs "
                         f"`edgefleet device readmit {device_id}`")


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
    if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
        raise TokenExpired(row.name)
    return Principal(Role(row.role), row.name, row.device_id, row.id)


def authenticate_device(engine: Engine, device_id: str, token: str) -> bool:
    """Whether ``token`` is a live API token of ``device_id`` (the embedded broker's login check)."""
    with Session(engine) as session:
        try:
            principal = authenticate(session, token)
        except TokenExpired:
            return False
    return principal is not None and principal.role == Role.DEVICE and principal.device_id == device_id


def create_enrollment_token(session: Session, device_id: str, *, hardware_profile: str, ttl_s: int,
                            root_pin: str, director_pin: str) -> tuple[str, datetime]:
    """A one-time token that lets whoever holds it enroll as ``device_id``. Returns (token, expiry).

    The token carries the pins of the trust anchors (see :mod:`agent.contract.enrollment`);
    only its secret part is stored, hashed.

    Raises:
        ValueError: an invalid or reserved device id.
        DeviceRevokedError: the device is revoked.
    """
    validate_device_id(device_id)
    refuse_reserved_identity(device_id)
    if is_revoked_device(session, device_id):
        raise DeviceRevokedError(device_id)
    secret = _new_secret(ENROLLMENT_TOKEN_PREFIX.rstrip("_"))
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    session.add(EnrollmentToken(id=uuid.uuid4().hex, device_id=device_id, hardware_profile=hardware_profile,
                                token_sha256=_digest(secret), expires_at=expires_at))
    session.commit()
    return str(PinnedEnrollmentToken(secret, root_pin, director_pin)), expires_at


def redeem_enrollment_token(session: Session, token: str) -> EnrollmentToken:
    """Mark ``token`` used and return it. Does not commit: the caller commits with the certificate.

    Single use under concurrency: the token is claimed by a conditional update
    (``... WHERE used_at IS NULL``), so of any number of parallel redemptions exactly
    one changes the row; on PostgreSQL the others wait for its transaction and then
    match nothing, on SQLite the write lock serialises them the same way.

    Raises:
        EnrollmentRefused: unknown, already used or expired.
        DeviceRevokedError: the token's device was revoked since the token was made.
    """
    secret = token.split(".", 1)[0]
    row = session.exec(select(EnrollmentToken).where(EnrollmentToken.token_sha256 == _digest(secret))).first()
    if row is None:
        raise EnrollmentRefused("unknown enrollment token")
    if row.used_at is not None:
        raise EnrollmentRefused("enrollment token was already used; ask an admin for a new one")
    if row.expires_at < datetime.now(UTC):
        raise EnrollmentRefused("enrollment token expired; ask an admin for a new one")
    if is_revoked_device(session, row.device_id):
        raise DeviceRevokedError(row.device_id)
    claimed = session.execute(
        update(EnrollmentToken)
        .where(col(EnrollmentToken.id) == row.id, col(EnrollmentToken.used_at).is_(None))
        .values(used_at=datetime.now(UTC))
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise EnrollmentRefused("enrollment token was already used; ask an admin for a new one")
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


def is_revoked_device(session: Session, device_id: str) -> bool:
    row = session.get(RevokedDevice, device_id)
    return row is not None and row.readmitted_at is None


def revoke_device_credentials(session: Session, device_id: str, *, revoked_by: str) -> list[int]:
    """Take every credential ``device_id`` holds and bar new ones. Does not commit.

    Certificates are marked revoked (their serials returned for the CRL), every API
    token of the device is revoked, and unused enrollment tokens are spent, so nothing
    the device (or whoever stole from it) holds still opens a door.
    """
    now = datetime.now(UTC)
    serials = revoke_device_certificates(session, device_id)
    for api_token in session.exec(select(ApiToken).where(ApiToken.device_id == device_id,
                                                         col(ApiToken.revoked_at).is_(None))):
        api_token.revoked_at = now
        session.add(api_token)
    for pending in session.exec(select(EnrollmentToken).where(EnrollmentToken.device_id == device_id,
                                                              col(EnrollmentToken.used_at).is_(None))):
        pending.used_at = now
        session.add(pending)
    marker = session.get(RevokedDevice, device_id)
    if marker is None:
        session.add(RevokedDevice(device_id=device_id, revoked_at=now, revoked_by=revoked_by))
    else:
        marker.revoked_at, marker.revoked_by, marker.readmitted_at = now, revoked_by, None
        session.add(marker)
    return serials
