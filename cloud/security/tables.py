"""Security tables: API tokens, dashboard sessions, enrollment tokens, issued device certificates.

Secrets are stored as sha256 digests only. The tokens are 256-bit random values,
so a fast hash is enough: there is no password to brute-force.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from cloud.core.timestamps import UtcDateTime, utc_now


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"
    # A device's own credential: it reaches only that device's endpoints.
    DEVICE = "device"

    @property
    def rank(self) -> int:
        return {"device": 0, "viewer": 1, "operator": 2, "admin": 3}[self.value]


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_token"

    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(max_length=128)
    role: str = Field(max_length=16)
    token_sha256: str = Field(max_length=64, unique=True, index=True)
    device_id: str | None = Field(default=None, max_length=64, index=True)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    # None: no expiry (device tokens, which end with the device's enrollment, and older rows).
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class ApiTokenPublic(SQLModel):
    id: str
    name: str
    role: str
    device_id: str | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None


class DashboardSession(SQLModel, table=True):
    """A dashboard login. The cookie holds a random id; only its sha256 is stored here.

    The session acts with its API token's role, and ends when that token is revoked or
    expires, or at its own ``expires_at``, whichever comes first.
    """

    __tablename__ = "dashboard_session"

    id_sha256: str = Field(primary_key=True, max_length=64)
    token_id: str = Field(foreign_key="api_token.id", max_length=32, index=True)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime)


class EnrollmentToken(SQLModel, table=True):
    __tablename__ = "enrollment_token"

    id: str = Field(primary_key=True, max_length=32)
    device_id: str = Field(max_length=64, index=True)
    hardware_profile: str = Field(default="x86-64-avx2", max_length=64)
    token_sha256: str = Field(max_length=64, unique=True, index=True)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    used_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)


class DeviceCertificate(SQLModel, table=True):
    __tablename__ = "device_certificate"

    # Serials are 159-bit random numbers: stored as decimal text, portable across databases.
    serial: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(max_length=64, index=True)
    not_after: datetime = Field(sa_type=UtcDateTime)
    created_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class RevokedDevice(SQLModel, table=True):
    """A device an admin revoked or decommissioned: it may hold no credential until re-admitted.

    While a row exists (and ``readmitted_at`` is empty) the control plane refuses the
    device every new certificate, API token and enrollment token.
    """

    __tablename__ = "revoked_device"

    device_id: str = Field(primary_key=True, max_length=64)
    revoked_at: datetime = Field(default_factory=utc_now, sa_type=UtcDateTime)
    revoked_by: str = Field(default="", max_length=128)
    readmitted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
