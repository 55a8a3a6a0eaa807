"""One object per control plane that owns its keys: TUF repository, fleet CAs, director key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from agent.contract import DeployCommand, validate_device_id
from cloud.core.config import Settings
from cloud.fleet.tables import Device
from cloud.security.ca import FleetCA, IssuedCertificate
from cloud.security.director import DirectorKey
from cloud.security.tables import DeviceCertificate, Role
from cloud.security.tokens import (
    create_api_token,
    record_certificate,
    redeem_enrollment_token,
    revoke_device_certificates,
)
from cloud.security.tuf_repo import TufPolicy, TufRepository

__all__ = ["EnrollmentBundle", "FleetSecurity"]


@dataclass(frozen=True)
class EnrollmentBundle:
    """Everything a device needs after enrollment; the API returns it as JSON."""

    device_id: str
    hardware_profile: str
    certificate_pem: str
    broker_ca_pem: str
    tuf_root_json: str
    director_public_key_pem: str
    api_token: str
    mqtt_url: str
    api_url: str
    topic_prefix: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FleetSecurity:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        base = settings.security_dir
        self.tuf = TufRepository(base / "tuf", TufPolicy.for_environment(
            settings.environment,
            root_keys=settings.tuf_root_keys, root_threshold=settings.tuf_root_threshold,
            root_expiry_s=settings.tuf_root_expiry_s, targets_expiry_s=settings.tuf_targets_expiry_s,
            snapshot_expiry_s=settings.tuf_snapshot_expiry_s, timestamp_expiry_s=settings.tuf_timestamp_expiry_s,
        ))
        self.ca = FleetCA(base / "ca")
        self.director = DirectorKey(base / "director" / "director.pem")
        self._published: set[str] = set()

    def initialise(self) -> None:
        """Create any missing key material. Raises ``KeyPermissionError`` on loose permissions."""
        self.tuf.initialise()
        self.ca.initialise()
        self.director.initialise()

    # -- packages and commands -----------------------------------------------
    def publish_package(self, package_dir: Path) -> str:
        """Make the package a signed TUF target (idempotent). Returns its id."""
        return self.tuf.add_package(package_dir)

    def sign_command(self, command: DeployCommand) -> DeployCommand:
        """Sign ``command``, first making sure TUF lists the package it names.

        The command is only a hint; without the package among the signed targets the
        device would refuse it. Packages live in ``packages_dir/<package_id>``.
        """
        if command.package_id not in self._published:
            package_dir = self.settings.packages_dir / command.package_id
            if package_dir.is_dir():
                self.tuf.add_package(package_dir)  # idempotent: a listed package is left alone
                self._published.add(command.package_id)
        return self.director.sign(command)

    # -- devices -------------------------------------------------------------
    def enroll(self, session: Session, token: str, csr_pem: bytes, *, mqtt_url: str, api_url: str) -> EnrollmentBundle:
        """Redeem a one-time token: sign the CSR as the token's device, mint its API token.

        Registers the device if it is new. Everything commits together or not at all.

        Raises:
            EnrollmentRefused: bad, used or expired token.
            ValueError: malformed CSR.
        """
        enrollment = redeem_enrollment_token(session, token)
        device_id = enrollment.device_id
        issued = self.ca.sign_device_csr(csr_pem, device_id, validity_days=self.settings.device_cert_validity_days)
        record_certificate(session, device_id, issued)
        device_mqtt_url = self.settings.device_mqtt_url or mqtt_url
        device = session.get(Device, device_id)
        if device is None:
            device = Device(id=device_id, hardware_profile=enrollment.hardware_profile)
        device.mqtt_url = device_mqtt_url
        session.add(device)
        session.commit()
        api_token, _ = create_api_token(session, name=f"device {device_id}", role=Role.DEVICE, device_id=device_id)
        return EnrollmentBundle(
            device_id=device_id, hardware_profile=enrollment.hardware_profile,
            certificate_pem=issued.pem.decode(), broker_ca_pem=self.ca.broker_ca_cert.read_text(),
            tuf_root_json=self.tuf.trusted_root_bytes().decode(),
            director_public_key_pem=self.director.public_pem().decode(), api_token=api_token,
            mqtt_url=device_mqtt_url, api_url=api_url,
            topic_prefix=self.settings.topic_prefix,
        )

    def rotate_certificate(self, session: Session, device_id: str, csr_pem: bytes) -> IssuedCertificate:
        """Issue a new certificate for an enrolled device and revoke its older ones."""
        validate_device_id(device_id)
        issued = self.ca.sign_device_csr(csr_pem, device_id, validity_days=self.settings.device_cert_validity_days)
        record_certificate(session, device_id, issued)
        session.flush()
        old = revoke_device_certificates(session, device_id, keep_serial=issued.serial)
        session.commit()
        if old:
            self.ca.revoke(old)
        return issued

    def revoke_device(self, session: Session, device_id: str) -> list[int]:
        """Revoke every certificate of ``device_id`` and write the CRL. Returns the serials."""
        serials = revoke_device_certificates(session, device_id)
        session.commit()
        if serials:
            self.ca.revoke(serials)
        return serials

    def certificates(self, session: Session, device_id: str) -> list[DeviceCertificate]:
        return list(session.exec(select(DeviceCertificate).where(DeviceCertificate.device_id == device_id)))

    def status(self) -> dict[str, Any]:
        root = self.tuf.root()
        return {
            "tuf_root_version": root.version,
            "tuf_roles": {name: {"keys": len(role.keyids), "threshold": role.threshold} for name, role in root.roles.items()},
            "revoked_serials": len(self.ca.revoked_serials()),
            "checked_at": datetime.now(UTC).isoformat(),
        }

