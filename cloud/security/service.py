"""One object per control plane that owns its keys: TUF repository, fleet CAs, director key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, select

from agent.contract import DeployCommand, validate_device_id
from agent.contract.enrollment import anchor_pin
from cloud.core.config import WEAKNESSES, Settings
from cloud.errors import EdgeFleetError, NotFoundError, PermissionDeniedError
from cloud.fleet.tables import Device
from cloud.security.ca import FleetCA, IssuedCertificate
from cloud.security.director import DirectorKey
from cloud.security.tables import DeviceCertificate, RevokedDevice, Role
from cloud.security.tokens import (
    DeviceRevokedError,
    Principal,
    create_api_token,
    create_enrollment_token,
    is_revoked_device,
    record_certificate,
    redeem_enrollment_token,
    revoke_device_certificates,
    revoke_device_credentials,
)
from cloud.security.tuf_repo import OfflineKeyRequired, TufPolicy, TufRepository

__all__ = ["EnrollmentBundle", "FleetSecurity", "InsecureConfigurationError"]


class InsecureConfigurationError(EdgeFleetError):
    """Production was asked to run with a weak security setting nobody accepted by name."""


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
    def __init__(self, settings: Settings, engine: Engine, *, offline_keys_dir: Path | None = None) -> None:
        self.settings = settings
        self.engine = engine
        base = settings.security_dir
        self.tuf = TufRepository(base / "tuf", offline_keys_dir=offline_keys_dir, policy=TufPolicy.for_environment(
            settings.environment,
            root_keys=settings.tuf_root_keys, root_threshold=settings.tuf_root_threshold,
            root_expiry_s=settings.tuf_root_expiry_s, targets_expiry_s=settings.tuf_targets_expiry_s,
            snapshot_expiry_s=settings.tuf_snapshot_expiry_s, timestamp_expiry_s=settings.tuf_timestamp_expiry_s,
        ))
        self.ca = FleetCA(base / "ca")
        self.director = DirectorKey(base / "director" / "director.pem")
        self._published: set[str] = set()

    def weaknesses(self) -> list[str]:
        """Every weak security setting of this control plane (names from ``cloud.core.config.WEAKNESSES``)."""
        found = self.settings.weaknesses()
        if self.tuf.initialised and self.tuf.online_offline_role_keys():
            found.append("online-root-keys")
        return found

    def check_production(self) -> list[str]:
        """In production, refuse what was not accepted by name; return the accepted weaknesses (to log).

        Raises:
            InsecureConfigurationError: a weakness not named in EDGEFLEET_ACCEPT_WEAK_SECURITY.
        """
        if self.settings.environment != "production":
            return []
        weak = self.weaknesses()
        refused = [name for name in weak if name not in self.settings.accepted_weaknesses]
        if refused:
            raise InsecureConfigurationError(
                "production refuses: " + "; ".join(f"{WEAKNESSES[name]} [{name}]" for name in refused)
                + ". Fix it, or accept it by name in EDGEFLEET_ACCEPT_WEAK_SECURITY (logged at every start)")
        return weak

    def initialise(self) -> None:
        """Create any missing key material. Raises ``KeyPermissionError`` on loose permissions."""
        self.director.initialise()
        self.tuf.initialise(director_public_pem=self.director.public_pem())
        self.ca.initialise()

    def rotate_director(self) -> None:
        """Replace the director key, announcing the new public key in a new root version.

        Enrolled devices learn it from their next metadata refresh (a command signed by a
        key they do not know yet makes them refresh first), so nobody re-enrolls.

        Raises:
            OfflineKeyRequired: the root keys are offline and not attached.
        """
        self.director.rotate(self.tuf.set_director_key)

    # -- packages and commands -----------------------------------------------
    def publish_package(self, package_dir: Path) -> str:
        """Make the package a signed TUF target (idempotent). Returns its id."""
        return self.tuf.add_package(package_dir)

    def ensure_signed(self, package_id: str) -> None:
        """Make ``package_id`` a signed TUF target, or say why it cannot be one yet.

        With the targets key offline a new package is staged; it can be deployed only once
        someone signs the staged targets where the key is.

        Raises:
            OfflineKeyRequired: the package is staged and awaits the offline targets signature.
        """
        if package_id in self._published:
            return
        package_dir = self.settings.packages_dir / package_id
        if package_dir.is_dir():
            self.tuf.add_package(package_dir)  # idempotent: a listed package is left alone
        if package_id in self.tuf.staged_packages():
            raise OfflineKeyRequired(
                f"package {package_id} awaits the targets signature and the targets key is offline: run "
                "`edgefleet keys sign-targets --offline-keys DIR` where the keys are, then deploy again")
        if package_dir.is_dir():
            self._published.add(package_id)

    def sign_command(self, command: DeployCommand) -> DeployCommand:
        """Sign ``command``, first making sure TUF lists the package it names.

        The command is only a hint; without the package among the signed targets the
        device would refuse it. Packages live in ``packages_dir/<package_id>``.

        Raises:
            OfflineKeyRequired: the package still awaits the offline targets signature.
        """
        self.ensure_signed(command.package_id)
        return self.director.sign(command)

    # -- devices -------------------------------------------------------------
    def anchor_pins(self) -> tuple[str, str]:
        """(root pin, director pin): what an enrollment token tells the device to expect."""
        return anchor_pin(self.tuf.trusted_root_bytes()), anchor_pin(self.director.public_pem())

    def create_enrollment_token(self, session: Session, device_id: str, *, hardware_profile: str) -> tuple[str, datetime]:
        """A one-time enrollment token pinning today's root and director key. Returns (token, expiry).

        Raises:
            ValueError: invalid or reserved id.
            DeviceRevokedError: the device is revoked and not re-admitted.
        """
        root_pin, director_pin = self.anchor_pins()
        return create_enrollment_token(session, device_id, hardware_profile=hardware_profile,
                                       ttl_s=self.settings.enrollment_token_ttl_s,
                                       root_pin=root_pin, director_pin=director_pin)

    def enroll(self, session: Session, token: str, csr_pem: bytes, *, mqtt_url: str, api_url: str) -> EnrollmentBundle:
        """Redeem a one-time token: sign the CSR as the token's device, mint its API token.

        Registers the device if it is new. Everything commits together or not at all.

        Raises:
            EnrollmentRefused: bad, used or expired token.
            DeviceRevokedError: the device is revoked.
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

    def issue_certificate(self, session: Session, caller: Principal, device_id: str, csr_pem: bytes, *,
                          current_certificate_pem: bytes | None = None, proof: bytes | None = None) -> IssuedCertificate:
        """A new certificate for ``device_id``; its older certificates are revoked.

        Who may ask: the device itself, proving it holds its current key (a certificate
        of ours for this device that is neither revoked nor expired, and a signature by
        its key over the new CSR), or an admin. Only an enrolled, unrevoked device gets
        one: reserved identities (the control plane's) and unknown names never do.

        Raises:
            PermissionDeniedError: the caller may not issue this certificate.
            NotFoundError: no such device.
            DeviceRevokedError: the device is revoked.
            ValueError: malformed CSR, certificate or proof.
        """
        validate_device_id(device_id)
        if caller.role == Role.DEVICE:
            if caller.device_id != device_id:
                raise PermissionDeniedError(f"device {caller.device_id} may rotate only its own certificate")
            if current_certificate_pem is None or proof is None:
                raise PermissionDeniedError("a device rotating its certificate must prove its current key: "
                                            "send current_certificate_pem and proof (edgefleet-agent rotate-cert does)")
            serial = self.ca.verify_possession(current_certificate_pem, device_id, csr_pem, proof)
            current = session.get(DeviceCertificate, str(serial))
            if current is None or current.device_id != device_id or current.revoked_at is not None:
                raise PermissionDeniedError("the certificate presented as current is revoked or unknown")
        elif not caller.at_least(Role.ADMIN):
            raise PermissionDeniedError(f"role {caller.role.value} may not issue certificates: only the device "
                                        "itself (proving its current key) or an admin may")
        if session.get(Device, device_id) is None:
            raise NotFoundError(f"device {device_id} is not enrolled; certificates are issued only to enrolled devices")
        if is_revoked_device(session, device_id):
            raise DeviceRevokedError(device_id)
        issued = self.ca.sign_device_csr(csr_pem, device_id, validity_days=self.settings.device_cert_validity_days)
        record_certificate(session, device_id, issued)
        session.flush()
        old = revoke_device_certificates(session, device_id, keep_serial=issued.serial)
        session.commit()
        if old:
            self.ca.revoke(old)
        return issued

    def revoke_device(self, session: Session, device_id: str, *, revoked_by: str = "admin") -> list[int]:
        """Take every credential of ``device_id`` (certificates, API tokens, pending enrollment),
        bar new ones until :meth:`readmit_device`, and write the CRL. Returns the revoked serials."""
        validate_device_id(device_id)
        serials = revoke_device_credentials(session, device_id, revoked_by=revoked_by)
        session.commit()
        self.ca.revoke(serials)
        return serials

    def readmit_device(self, session: Session, device_id: str) -> None:
        """Let a revoked device be enrolled again (with a new enrollment token).

        Raises:
            NotFoundError: the device is not revoked.
        """
        marker = session.get(RevokedDevice, device_id)
        if marker is None or marker.readmitted_at is not None:
            raise NotFoundError(f"device {device_id} is not revoked")
        marker.readmitted_at = datetime.now(UTC)
        session.add(marker)
        session.commit()

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

