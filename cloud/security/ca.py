"""The fleet's certificate authorities (``cryptography`` x509), kept as files.

Two CAs, so that a broker certificate can never pass as a device and vice versa:

* the **device CA** signs device certificates (CN = device id) and the control
  plane's client certificate; the broker trusts only it for clients (``cafile``)
  and checks its CRL (``crlfile``);
* the **broker CA** signs the broker's server certificate; devices receive it at
  enrollment and trust nothing else for the broker.

Layout under ``directory`` (private keys 0600 in a 0700 directory)::

    device-ca.key device-ca.pem device-ca.crl.pem revoked.json
    broker-ca.key broker-ca.pem
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.contract import validate_device_id
from agent.contract.enrollment import rotation_proof_bytes
from cloud.errors import PermissionDeniedError
from cloud.security.keys import ensure_private_dir, load_private_key, write_private_key

__all__ = ["CONTROL_PLANE_IDENTITY", "RESERVED_IDENTITIES", "FleetCA", "IssuedCertificate", "refuse_reserved_identity"]

# The control plane's certificate CN; the broker ACL grants this user every device's topics.
CONTROL_PLANE_IDENTITY = "edgefleet-control-plane"
# Names no device certificate may carry: each is an identity the broker ACL treats specially.
RESERVED_IDENTITIES = frozenset({CONTROL_PLANE_IDENTITY})
# ...and the whole family of names, so a future service identity is reserved before it exists.
RESERVED_PREFIX = "edgefleet-"


def refuse_reserved_identity(device_id: str) -> None:
    """Raises ValueError when ``device_id`` is a name kept for the control plane's own identities."""
    if device_id in RESERVED_IDENTITIES or device_id.startswith(RESERVED_PREFIX):
        raise ValueError(f"{device_id!r} is reserved for the control plane's own identities "
                         f"(names starting with {RESERVED_PREFIX!r}); choose another device id")
CRL_VALIDITY_DAYS = 365


@dataclass(frozen=True)
class IssuedCertificate:
    serial: int
    common_name: str
    not_after: datetime
    pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class FleetCA:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.device_ca_cert = directory / "device-ca.pem"
        self.broker_ca_cert = directory / "broker-ca.pem"
        self.crl_file = directory / "device-ca.crl.pem"
        self._revoked_file = directory / "revoked.json"

    # -- creation ------------------------------------------------------------
    def initialise(self) -> bool:
        """Create both CAs and an empty CRL if missing. Returns False if they existed."""
        ensure_private_dir(self.directory)
        if self.device_ca_cert.exists() and self.broker_ca_cert.exists():
            return False
        for stem, title in (("device-ca", "EdgeFleet device CA"), ("broker-ca", "EdgeFleet broker CA")):
            key = ec.generate_private_key(ec.SECP256R1())
            now = datetime.now(UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(_name(title)).issuer_name(_name(title))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256())
            )
            write_private_key(self.directory / f"{stem}.key", key)
            (self.directory / f"{stem}.pem").write_bytes(_pem(cert))
        self._write_crl()
        return True

    def _ca(self, stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = load_private_key(self.directory / f"{stem}.key")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key, x509.load_pem_x509_certificate((self.directory / f"{stem}.pem").read_bytes())

    # -- issuing -------------------------------------------------------------
    def _issue(self, stem: str, common_name: str, public_key: CertificatePublicKeyTypes,
               validity_days: int, *, server_names: list[str] | None = None) -> IssuedCertificate:
        ca_key, ca_cert = self._ca(stem)
        now = datetime.now(UTC)
        not_after = now + timedelta(days=validity_days)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if server_names:
            alt: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return IssuedCertificate(cert.serial_number, common_name, not_after, _pem(cert))

    def sign_device_csr(self, csr_pem: bytes, device_id: str, *, validity_days: int = 90) -> IssuedCertificate:
        """Sign a device's CSR. The certificate's CN is ``device_id``, whatever the CSR asked for.

        The subject comes from the enrollment token, never from the device: a device
        cannot name itself someone else.

        Raises:
            ValueError: the CSR is malformed, its self-signature is invalid, or the id is invalid.
        """
        validate_device_id(device_id)
        refuse_reserved_identity(device_id)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise ValueError(f"certificate signing request is not PEM: {exc}") from exc
        if not csr.is_signature_valid:
            raise ValueError("certificate signing request is not signed by its own key")
        return self._issue("device-ca", device_id, csr.public_key(), validity_days)

    def verify_possession(self, certificate_pem: bytes, device_id: str, csr_pem: bytes, proof: bytes) -> int:
        """Check that the caller holds the key of a current certificate of ours for ``device_id``.

        ``proof`` is the certificate key's signature over
        :func:`agent.contract.enrollment.rotation_proof_bytes` of the new CSR. Returns
        the certificate's serial (the caller checks it is not revoked).

        Raises:
            PermissionDeniedError: not our certificate, another device's, expired, or a bad proof.
            ValueError: the certificate is not PEM.
        """
        try:
            cert = x509.load_pem_x509_certificate(certificate_pem)
        except ValueError as exc:
            raise ValueError(f"current certificate is not PEM: {exc}") from exc
        _, ca_cert = self._ca("device-ca")
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise PermissionDeniedError("the current certificate was not issued by this fleet's device CA") from exc
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != device_id:
            raise PermissionDeniedError(f"the current certificate does not belong to device {device_id}")
        if cert.not_valid_after_utc < datetime.now(UTC):
            raise PermissionDeniedError("the current certificate has expired; an admin must issue a new one")
        public_key = cert.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PermissionDeniedError("the current certificate's key is not an EC key")
        try:
            public_key.verify(proof, rotation_proof_bytes(device_id, csr_pem), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise PermissionDeniedError("the proof is not signed by the current certificate's key") from exc
        return int(cert.serial_number)

    def issue_client_identity(self, common_name: str, *, validity_days: int = 365) -> tuple[bytes, IssuedCertificate]:
        """A key and client certificate generated here (for the control plane itself). Returns (key PEM, cert)."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self._issue("device-ca", common_name, key.public_key(), validity_days)
        return _key_pem(key), issued

    def issue_broker_certificate(self, server_names: list[str], *, validity_days: int = 365) -> tuple[bytes, IssuedCertificate]:
        """The broker's TLS server key and certificate (SANs = ``server_names``)."""
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self._issue("broker-ca", server_names[0], key.public_key(), validity_days, server_names=server_names)
        return _key_pem(key), issued

    # -- revocation ----------------------------------------------------------
    def revoked_serials(self) -> list[int]:
        try:
            return [int(s) for s in json.loads(self._revoked_file.read_text())]
        except (OSError, ValueError):
            return []

    def revoke(self, serials: list[int]) -> None:
        """Add ``serials`` to the CRL and rewrite it. The broker reads it at (re)start or reload."""
        merged = sorted(set(self.revoked_serials()) | set(serials))
        tmp = self._revoked_file.with_name(".revoked.json.tmp")
        tmp.write_text(json.dumps([str(s) for s in merged]))
        os.replace(tmp, self._revoked_file)
        self._write_crl()

    def _write_crl(self) -> None:
        ca_key, ca_cert = self._ca("device-ca")
        now = datetime.now(UTC)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
                   .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=CRL_VALIDITY_DAYS)))
        for serial in self.revoked_serials():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
        crl = builder.sign(ca_key, hashes.SHA256())
        tmp = self.crl_file.with_name(".crl.tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        os.replace(tmp, self.crl_file)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
