"""Enrollment and certificate rotation: the device side.

The key pair is generated here and never leaves the device; the control plane
sees only a CSR. What comes back (certificate, broker CA, TUF root, director
public key, a device API token) is written under ``<state_dir>/identity/`` with
owner-only permissions, and the agent config is pointed at it.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.contract.enrollment import PinnedEnrollmentToken, anchor_pin, rotation_proof_bytes
from agent.fsutil import atomic_write_bytes
from agent.update.store import reset_command_state
from agent.yamlkeys import update_top_level_keys

__all__ = ["EnrollmentError", "check_anchor_pins", "current_broker_url", "enroll", "identity_paths",
           "remember_broker_url", "require_secure_url", "rotate_certificate"]


log = logging.getLogger(__name__)


class EnrollmentError(ValueError):
    """The control plane refused the enrollment, or could not be reached."""


def identity_paths(state_dir: Path) -> dict[str, Path]:
    identity = state_dir / "identity"
    return {
        "mqtt_key_file": identity / "device.key",
        "mqtt_cert_file": identity / "device.pem",
        "mqtt_ca_file": identity / "broker-ca.pem",
        "tuf_root_file": identity / "tuf-root.json",
        "director_key_file": identity / "director.pub",
        "api_token_file": identity / "api-token",
    }


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _new_key_and_csr() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    # The CN is ignored by the control plane (it uses the token's device id); it is here for humans.
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet-device")]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def require_secure_url(url: str, *, allow_http: bool = False) -> None:
    """Refuse plain http except to a loopback address (a control plane on this machine, for development)
    or when ``allow_http`` says so (a lab network; the token's pins still guard the anchors).

    Raises:
        EnrollmentError: ``url`` is not https and not loopback http.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https":
        return
    if parsed.scheme == "http" and allow_http:
        log.warning("enrolling over plain http to %s (--insecure-http): the API token travels unencrypted", url)
        return
    host = parsed.hostname or ""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if parsed.scheme == "http" and loopback:
        return
    raise EnrollmentError(f"{url}: the control plane must be reached over https:// "
                          "(plain http is allowed only to a loopback address, for development)")


def check_anchor_pins(token: PinnedEnrollmentToken, root_json: bytes, director_pem: bytes) -> None:
    """Refuse trust anchors other than the ones the token pins.

    Raises:
        EnrollmentError: either anchor differs from its pin.
    """
    mismatched = [name for name, data, pin in (("TUF root", root_json, token.root_pin),
                                               ("director key", director_pem, token.director_pin))
                  if anchor_pin(data) != pin]
    if mismatched:
        raise EnrollmentError(
            f"the {' and '.join(mismatched)} received do not match the enrollment token's pins; nothing was "
            "written. Either the keys changed since the token was made (ask an admin for a new token) or "
            "something between this device and the control plane swapped them")


def _post(url: str, body: dict[str, Any], *, token: str | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            document: Any = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise EnrollmentError(f"{url}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnrollmentError(f"{url}: {exc}") from exc
    if not isinstance(document, dict):
        raise EnrollmentError(f"{url}: unexpected response")
    return document


def enroll(server_url: str, token: str, state_dir: Path, *, config_path: Path | None = None,
           overrides: dict[str, Any] | None = None, allow_http: bool = False) -> dict[str, Any]:
    """Enroll this device with a one-time ``token``; write identity files and the agent config.

    Returns the agent config as a dict (also written to ``config_path`` when given,
    merged over any settings already in that file).

    Raises:
        EnrollmentError: the server refused (bad, used or expired token) or is unreachable.
    """
    try:
        pinned = PinnedEnrollmentToken.parse(token)
    except ValueError as exc:
        raise EnrollmentError(str(exc)) from None
    require_secure_url(server_url, allow_http=allow_http)
    key_pem, csr_pem = _new_key_and_csr()
    bundle = _post(f"{server_url.rstrip('/')}/api/v1/enroll", {"token": str(pinned), "csr_pem": csr_pem.decode()})
    check_anchor_pins(pinned, str(bundle.get("tuf_root_json", "")).encode(),
                      str(bundle.get("director_public_key_pem", "")).encode())
    paths = identity_paths(state_dir)
    _write_private(paths["mqtt_key_file"], key_pem)
    atomic_write_bytes(paths["mqtt_cert_file"], str(bundle["certificate_pem"]).encode())
    atomic_write_bytes(paths["mqtt_ca_file"], str(bundle["broker_ca_pem"]).encode())
    atomic_write_bytes(paths["tuf_root_file"], str(bundle["tuf_root_json"]).encode())
    atomic_write_bytes(paths["director_key_file"], str(bundle["director_public_key_pem"]).encode())
    _write_private(paths["api_token_file"], str(bundle["api_token"]).encode())
    # A new identity starts a new command sequence (the control plane's may be new too).
    reset_command_state(state_dir)

    enrolled: dict[str, Any] = {
        "device_id": bundle["device_id"], "hardware_profile": bundle["hardware_profile"],
        "mqtt_url": bundle["mqtt_url"], "api_url": bundle["api_url"], "topic_prefix": bundle["topic_prefix"],
        "state_dir": str(state_dir), **{name: str(path) for name, path in paths.items()}, **(overrides or {}),
    }
    existing = config_path.read_text() if config_path is not None and config_path.exists() else ""
    loaded = yaml.safe_load(existing) if existing.strip() else {}
    config: dict[str, Any] = {**(loaded if isinstance(loaded, dict) else {}), **enrolled}
    if config_path is not None:
        # Only the enrollment keys change: the operator's comments, order and other settings stay.
        atomic_write_bytes(config_path, update_top_level_keys(existing, enrolled).encode())
    return config


def rotate_certificate(api_url: str, device_id: str, state_dir: Path) -> None:
    """Get a new certificate for a new key, authenticated by the device's API token and
    by a signature of the current key over the new CSR (a stolen token alone is not enough).

    The old certificate is revoked by the control plane once the new one is issued.

    Raises:
        EnrollmentError: refused or unreachable.
    """
    paths = identity_paths(state_dir)
    token = paths["api_token_file"].read_text().strip()
    current_key = serialization.load_pem_private_key(paths["mqtt_key_file"].read_bytes(), password=None)
    if not isinstance(current_key, ec.EllipticCurvePrivateKey):
        raise EnrollmentError(f"{paths['mqtt_key_file']} is not an EC private key")
    key_pem, csr_pem = _new_key_and_csr()
    proof = current_key.sign(rotation_proof_bytes(device_id, csr_pem), ec.ECDSA(hashes.SHA256()))
    answer = _post(f"{api_url.rstrip('/')}/api/v1/devices/{device_id}/certificate",
                   {"csr_pem": csr_pem.decode(), "proof": base64.b64encode(proof).decode(),
                    "current_certificate_pem": paths["mqtt_cert_file"].read_text()}, token=token)
    _write_private(paths["mqtt_key_file"], key_pem)
    atomic_write_bytes(paths["mqtt_cert_file"], str(answer["certificate_pem"]).encode())


def current_broker_url(api_url: str, device_id: str, token_file: Path, *, timeout_s: float = 10.0) -> str:
    """Ask the control plane, with this device's API token, which broker URL to use now.

    Raises:
        EnrollmentError: refused, unreachable, or no token file.
    """
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise EnrollmentError(f"cannot read the device API token {token_file}: {exc.strerror}") from exc
    url = f"{api_url.rstrip('/')}/api/v1/devices/{device_id}/connection"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            document: Any = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise EnrollmentError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnrollmentError(f"{url}: {exc}") from exc
    mqtt_url = document.get("mqtt_url") if isinstance(document, dict) else None
    if not isinstance(mqtt_url, str) or not mqtt_url:
        raise EnrollmentError(f"{url}: no mqtt_url in the answer")
    return mqtt_url


def remember_broker_url(config_path: Path, mqtt_url: str) -> None:
    """Write ``mqtt_url`` into the agent config file, keeping every other setting, so a restart uses it too."""
    text = config_path.read_text()
    if config_path.suffix == ".json":
        document = json.loads(text)
        document["mqtt_url"] = mqtt_url
        atomic_write_bytes(config_path, (json.dumps(document, indent=2) + "\n").encode())
        return
    loaded = yaml.safe_load(text)
    config = loaded if isinstance(loaded, dict) else {}
    config["mqtt_url"] = mqtt_url
    atomic_write_bytes(config_path, yaml.safe_dump(config).encode())
