"""Operator API tokens with roles, device credentials, enrollment and certificate rotation."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sqlmodel import Session, select

from agent.security.enroll import EnrollmentError, enroll, identity_paths, rotate_certificate
from cloud.security.tables import ApiToken

pytestmark = pytest.mark.integration


def _client(plane, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=plane.base_url, timeout=15, headers=headers)


def _enrollment_token(api: httpx.Client, device_id: str) -> str:
    response = api.post("/api/v1/enrollment-tokens", json={"device_id": device_id})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def test_api_calls_without_a_token_get_401(control_plane) -> None:
    with _client(control_plane, None) as anonymous, _client(control_plane, "efo_not-a-real-token") as forged:
        assert anonymous.get("/api/v1/devices").status_code == 401
        assert anonymous.post("/api/v1/devices", json={"id": "cam-x"}).status_code == 401
        assert anonymous.post("/api/v1/deployments", json={"package_id": "p", "device_ids": ["cam-x"]}).status_code == 401
        assert forged.get("/api/v1/devices").status_code == 401
        assert anonymous.get("/api/v1/health").status_code == 200  # liveness stays open


def test_viewer_starting_a_deployment_gets_403(control_plane, api) -> None:
    created = api.post("/api/v1/tokens", json={"name": "dashboard", "role": "viewer"})
    assert created.status_code == 201, created.text
    viewer_token = created.json()["token"]
    operator_token = api.post("/api/v1/tokens", json={"name": "ci", "role": "operator"}).json()["token"]
    with _client(control_plane, viewer_token) as viewer, _client(control_plane, operator_token) as operator:
        assert viewer.get("/api/v1/devices").status_code == 200
        denied = viewer.post("/api/v1/deployments", json={"package_id": "p", "device_ids": ["cam-x"]})
        assert denied.status_code == 403 and "operator" in denied.json()["detail"]
        assert viewer.post("/api/v1/devices", json={"id": "cam-x"}).status_code == 403
        assert operator.post("/api/v1/tokens", json={"name": "x", "role": "admin"}).status_code == 403
        # The operator passes the access check (and then learns the package does not exist).
        assert operator.post("/api/v1/deployments", json={"package_id": "p", "device_ids": ["cam-x"]}).status_code == 404
    with Session(control_plane.engine) as session:
        stored = [row.token_sha256 for row in session.exec(select(ApiToken))]
    assert viewer_token not in stored and all(len(digest) == 64 for digest in stored)  # hashed, never the secret


def test_device_reading_another_devices_data_gets_403(control_plane, api, tmp_path: Path) -> None:
    configs = {d: enroll(control_plane.base_url, _enrollment_token(api, d), tmp_path / d) for d in ("cam-a", "cam-b")}
    token_a = Path(str(configs["cam-a"]["api_token_file"])).read_text()
    with _client(control_plane, token_a) as device_a:
        assert device_a.get("/api/v1/devices/cam-a").status_code == 200
        assert device_a.get("/api/v1/devices/cam-a/telemetry").status_code == 200
        assert device_a.get("/api/v1/devices/cam-b").status_code == 403
        assert device_a.get("/api/v1/devices/cam-b/telemetry").status_code == 403
        assert device_a.get("/api/v1/devices").status_code == 403
        assert device_a.post("/api/v1/deployments", json={"package_id": "p", "device_ids": ["cam-b"]}).status_code == 403
        assert device_a.post("/api/v1/devices", json={"id": "cam-z"}).status_code == 403


def test_enrollment_token_is_one_time_and_the_certificate_names_the_device(control_plane, api, tmp_path: Path) -> None:
    token = _enrollment_token(api, "cam-e")
    config = enroll(control_plane.base_url, token, tmp_path / "first")
    cert = x509.load_pem_x509_certificate(Path(str(config["mqtt_cert_file"])).read_bytes())
    # The CSR asked for another name; the certificate carries the id the token was issued for.
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-e"
    assert (Path(str(config["mqtt_key_file"])).stat().st_mode & 0o077) == 0
    with pytest.raises(EnrollmentError, match="403"):
        enroll(control_plane.base_url, token, tmp_path / "second")
    with pytest.raises(EnrollmentError, match="403"):
        enroll(control_plane.base_url, "efe_guessed-token-value.pin.pin", tmp_path / "third")


def test_certificate_rotation_revokes_the_old_certificate(control_plane, api, tmp_path: Path) -> None:
    state_dir = tmp_path / "cam-r"
    enroll(control_plane.base_url, _enrollment_token(api, "cam-r"), state_dir)
    cert_file = identity_paths(state_dir)["mqtt_cert_file"]
    old_serial = x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number

    rotate_certificate(control_plane.base_url, "cam-r", state_dir)

    new_serial = x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number
    assert new_serial != old_serial
    assert old_serial in control_plane.security.ca.revoked_serials()
    assert new_serial not in control_plane.security.ca.revoked_serials()
    # An admin revokes the device outright: its current certificate joins the CRL too.
    assert api.post("/api/v1/devices/cam-r/revoke").status_code == 200
    assert new_serial in control_plane.security.ca.revoked_serials()


def test_tuf_repository_is_served_publicly_with_range(control_plane, tmp_path: Path) -> None:
    from tests.security.hostile import make_package

    package = make_package(tmp_path, "shapes-9")
    control_plane.security.publish_package(package.directory)
    target = next((control_plane.security.tuf.targets_dir / package.manifest.package_id).glob("*.model.onnx"))
    with _client(control_plane, None) as anonymous:  # signed content needs no token
        assert anonymous.get("/tuf/metadata/timestamp.json").status_code == 200
        assert anonymous.get("/tuf/metadata/1.root.json").json()["signed"]["_type"] == "root"
        url = f"/tuf/targets/{package.manifest.package_id}/{target.name}"
        partial = anonymous.get(url, headers={"Range": "bytes=100-"})
        assert partial.status_code == 206 and partial.content == target.read_bytes()[100:]
        assert anonymous.get("/tuf/targets/%2E%2E/keys/x.pem").status_code == 404
        assert anonymous.get("/tuf/metadata/.lock").status_code == 404
    assert control_plane.security.tuf.target_file("../keys/x.pem") is None
