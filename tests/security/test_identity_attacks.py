"""Attacks on identity and key lifecycle, replayed against a running control plane.

Each test stages what an attacker did against the real API (uvicorn, PostgreSQL or
SQLite, real X.509 and Ed25519), the real agent enrollment code and, for revocation,
the Mosquitto that `edgefleet broker-config` writes; and asserts the attack fails.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID
from sqlmodel import Session, col, select

from agent.contract.enrollment import rotation_proof_bytes
from agent.security.enroll import EnrollmentError, enroll, identity_paths, rotate_certificate
from cloud.core.config import Settings
from cloud.security.broker import write_broker_config
from cloud.security.ca import CONTROL_PLANE_IDENTITY
from cloud.security.tables import ApiToken, DeviceCertificate, Role
from cloud.security.tokens import create_api_token
from cloud.server import ControlPlane
from tests.security.test_broker_isolation import Broker, Client, Identity
from tests.support.services import (
    MosquittoProcess,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    mosquitto_available,
    wait_for,
)

pytestmark = pytest.mark.integration


def _csr() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anything")])).sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def _enrollment_token(api: httpx.Client, device_id: str) -> str:
    response = api.post("/api/v1/enrollment-tokens", json={"device_id": device_id})
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def _token(plane: ControlPlane, role: Role, name: str) -> dict[str, str]:
    with Session(plane.engine) as session:
        secret, _ = create_api_token(session, name=name, role=role)
    return {"Authorization": f"Bearer {secret}"}


def _device_headers(state_dir: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {identity_paths(state_dir)['api_token_file'].read_text().strip()}"}


# --- a revoked device keeps nothing -------------------------------------------------------
def test_revoked_device_cannot_issue_itself_a_new_certificate(control_plane, api, tmp_path: Path) -> None:
    state_dir = tmp_path / "cam-rev"
    enroll(control_plane.base_url, _enrollment_token(api, "cam-rev"), state_dir)
    spare_token = _enrollment_token(api, "cam-rev")  # pending enrollment, as a thief might hold

    assert api.post("/api/v1/devices/cam-rev/revoke").status_code == 200

    # Its API token is gone with its certificates: rotation, the old way in, is refused.
    with pytest.raises(EnrollmentError, match="401"):
        rotate_certificate(control_plane.base_url, "cam-rev", state_dir)
    with httpx.Client(base_url=control_plane.base_url, headers=_device_headers(state_dir)) as device:
        assert device.get("/api/v1/devices/cam-rev").status_code == 401
    # The pending enrollment token is spent, a new one is refused, and so is an admin's certificate.
    with pytest.raises(EnrollmentError, match="403"):
        enroll(control_plane.base_url, spare_token, tmp_path / "again")
    refused = api.post("/api/v1/enrollment-tokens", json={"device_id": "cam-rev"})
    assert refused.status_code == 403 and "readmit" in refused.json()["detail"]
    _, csr = _csr()
    assert api.post("/api/v1/devices/cam-rev/certificate", json={"csr_pem": csr}).status_code == 403
    with Session(control_plane.engine) as session:
        live = session.exec(select(DeviceCertificate).where(DeviceCertificate.device_id == "cam-rev",
                                                            col(DeviceCertificate.revoked_at).is_(None))).all()
    assert live == []

    # An admin re-admits it; then (and only then) a new token enrolls it again.
    assert api.post("/api/v1/devices/cam-rev/readmit").status_code == 200
    enroll(control_plane.base_url, _enrollment_token(api, "cam-rev"), tmp_path / "readmitted")


# --- certificates only for yourself, proving your key; or from an admin ---------------------
def test_operator_cannot_get_a_certificate_for_any_identity(control_plane, api, tmp_path: Path) -> None:
    victim_dir = tmp_path / "cam-victim"
    enroll(control_plane.base_url, _enrollment_token(api, "cam-victim"), victim_dir)
    victim_serial = x509.load_pem_x509_certificate(identity_paths(victim_dir)["mqtt_cert_file"].read_bytes()).serial_number
    operator = _token(control_plane, Role.OPERATOR, "operator")
    _, csr = _csr()
    with httpx.Client(base_url=control_plane.base_url, headers=operator) as client:
        for identity in (CONTROL_PLANE_IDENTITY, "cam-victim", "cam-never-enrolled"):
            response = client.post(f"/api/v1/devices/{identity}/certificate", json={"csr_pem": csr})
            assert response.status_code == 403, (identity, response.text)
    # The victim's own certificate was not revoked and replaced by any of that.
    assert victim_serial not in control_plane.security.ca.revoked_serials()

    # An admin cannot mint the control plane's identity or a name that is no enrolled device.
    assert api.post(f"/api/v1/devices/{CONTROL_PLANE_IDENTITY}/certificate", json={"csr_pem": csr}).status_code in (404, 422)
    assert api.post("/api/v1/devices/cam-never-enrolled/certificate", json={"csr_pem": csr}).status_code == 404
    assert api.post("/api/v1/devices", json={"id": CONTROL_PLANE_IDENTITY}).status_code == 422
    assert api.post("/api/v1/enrollment-tokens", json={"device_id": CONTROL_PLANE_IDENTITY}).status_code == 422


def test_a_device_token_alone_cannot_rotate_the_certificate(control_plane, api, tmp_path: Path) -> None:
    """A stolen device API token without the device's key gets no certificate."""
    state_dir = tmp_path / "cam-key"
    enroll(control_plane.base_url, _enrollment_token(api, "cam-key"), state_dir)
    paths = identity_paths(state_dir)
    thief_key, csr = _csr()
    proof_by_thief = thief_key.sign(rotation_proof_bytes("cam-key", csr.encode()), ec.ECDSA(hashes.SHA256()))
    with httpx.Client(base_url=control_plane.base_url, headers=_device_headers(state_dir)) as thief:
        no_proof = thief.post("/api/v1/devices/cam-key/certificate", json={"csr_pem": csr})
        wrong_key = thief.post("/api/v1/devices/cam-key/certificate", json={
            "csr_pem": csr, "current_certificate_pem": paths["mqtt_cert_file"].read_text(),
            "proof": base64.b64encode(proof_by_thief).decode()})
    assert no_proof.status_code == 403 and "prove" in no_proof.json()["detail"]
    assert wrong_key.status_code == 403
    # The device itself, holding the key, rotates fine.
    rotate_certificate(control_plane.base_url, "cam-key", state_dir)


# --- one token, one enrollment, however many race for it -------------------------------------
@pytest.fixture(params=["postgresql", "sqlite"])
def plane_on_each_database(request: pytest.FixtureRequest, tmp_path: Path, mqtt_url: str,
                           topic_prefix: str) -> Iterator[ControlPlane]:
    admin_url = os.environ.get("EDGEFLEET_TEST_DATABASE_URL")
    database_name = None
    if request.param == "postgresql":
        if not admin_url:
            pytest.skip("needs EDGEFLEET_TEST_DATABASE_URL (PostgreSQL)")
        database_url, database_name = create_postgres_database(admin_url)
    else:
        database_url = f"sqlite:///{tmp_path / 'race.db'}"
    plane = ControlPlane(Settings(data_dir=tmp_path / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                                  topic_prefix=topic_prefix, api_port=0))
    plane.start()
    plane.serve_http_in_thread()
    try:
        yield plane
    finally:
        plane.stop()
        if database_name and admin_url:
            drop_postgres_database(admin_url, database_name)


def test_one_enrollment_token_enrolls_once_under_concurrency(plane_on_each_database: ControlPlane) -> None:
    plane = plane_on_each_database
    with httpx.Client(base_url=plane.base_url, timeout=30, headers=_token(plane, Role.ADMIN, "admin")) as api:
        token = _enrollment_token(api, "cam-race")
    csrs = [_csr()[1] for _ in range(16)]
    barrier = threading.Barrier(16)

    def redeem(csr: str) -> int:
        with httpx.Client(base_url=plane.base_url, timeout=60) as client:
            barrier.wait()
            return client.post("/api/v1/enroll", json={"token": token, "csr_pem": csr}).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(redeem, csrs))
    assert sorted(codes) == [200] + [403] * 15, codes
    with Session(plane.engine) as session:
        certificates = session.exec(select(DeviceCertificate).where(DeviceCertificate.device_id == "cam-race")).all()
        device_tokens = session.exec(select(ApiToken).where(ApiToken.device_id == "cam-race")).all()
    assert len(certificates) == 1 and len(device_tokens) == 1


# --- first contact: anchors pinned by the token -------------------------------------------
class _AnchorSwappingProxy:
    """A man in the middle on plain HTTP: forwards to the control plane, swaps the director key."""

    def __init__(self, upstream: str) -> None:
        attacker_pem = Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.swapped = 0

        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = httpx.post(upstream + self.path, content=body,
                                    headers={"Content-Type": "application/json"}, timeout=30)
                payload = answer.content
                if self.path.endswith("/enroll") and answer.status_code == 200:
                    document = answer.json()
                    document["director_public_key_pem"] = attacker_pem
                    payload = json.dumps(document).encode()
                    proxy.swapped += 1
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_trust_anchors_swapped_on_first_contact_are_refused(control_plane, api, tmp_path: Path) -> None:
    proxy = _AnchorSwappingProxy(control_plane.base_url)
    try:
        with pytest.raises(EnrollmentError, match="do not match the enrollment token's pins"):
            enroll(proxy.url, _enrollment_token(api, "cam-mitm"), tmp_path / "mitm")
        assert proxy.swapped == 1, "the proxy never saw the enrollment"
        assert not identity_paths(tmp_path / "mitm")["director_key_file"].exists(), "the swapped key was written"
    finally:
        proxy.close()
    # Plain http to anything but loopback is refused before a byte is sent; the genuine path works.
    with pytest.raises(EnrollmentError, match="https"):
        enroll("http://192.0.2.10:8000", _enrollment_token(api, "cam-far"), tmp_path / "far")
    config = enroll(control_plane.base_url, _enrollment_token(api, "cam-mitm"), tmp_path / "direct")
    assert Path(str(config["director_key_file"])).read_bytes() == control_plane.security.director.public_pem()


# --- revocation reaches a running broker without a restart ------------------------------------
@pytest.mark.skipif(not mosquitto_available(), reason="needs the mosquitto binary")
def test_device_revoked_in_the_api_is_refused_by_the_running_broker(control_plane, api, tmp_path: Path) -> None:
    state_dir = tmp_path / "cam-live"
    config = enroll(control_plane.base_url, _enrollment_token(api, "cam-live"), state_dir)
    ca = control_plane.security.ca
    files = write_broker_config(tmp_path / "mosquitto", ca, prefix=control_plane.settings.topic_prefix,
                                port=free_port(), bind="127.0.0.1", server_names=["127.0.0.1"], user=getpass.getuser())
    broker = MosquittoProcess(config_lines=files.config.read_text().splitlines(), port=files.port,
                              workdir=tmp_path / "mosquitto").start()
    assert broker.process is not None
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(str(broker.process.pid))
    watcher = subprocess.Popen([str(Path(sys.executable).with_name("edgefleet")), "broker-watch-crl",
                                "--crl-file", str(ca.crl_file),
                                "--ca-file", str(ca.device_ca_cert), "--pid-file", str(pid_file), "--interval", "0.5"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    identity = Identity(Path(str(config["mqtt_cert_file"])), Path(str(config["mqtt_key_file"])))
    handle = Broker(broker, ca, {}, identity)
    try:
        first = Client(handle, identity)
        assert first.connect(), "the enrolled device could not connect before revocation"
        first.stop()
        assert api.post("/api/v1/devices/cam-live/revoke").status_code == 200

        def refused() -> bool:
            attempt = Client(handle, identity)
            try:
                return not attempt.connect(timeout_s=3)
            finally:
                attempt.stop()

        wait_for(refused, 30, interval_s=0.5, what="the running broker to refuse the revoked device")
        assert broker.process.poll() is None, "the broker was restarted or died"
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        broker.stop()


def test_the_crl_watcher_installs_only_crls_signed_by_the_device_ca(control_plane, api, tmp_path: Path) -> None:
    """The remote-broker path: the CRL fetched from the control plane, checked, written, broker reloaded."""
    from cloud.security.ca import FleetCA
    from cloud.security.crl_watch import CrlWatcher, ReloadError

    reloads: list[int] = []
    target = tmp_path / "broker-crl.pem"
    watcher = CrlWatcher(source=f"{control_plane.base_url}/tuf/crl.pem", target=target,
                         ca_cert=control_plane.security.ca.device_ca_cert, reload=lambda: reloads.append(1))
    assert watcher.poll_once() and len(reloads) == 1  # the first poll always installs
    assert not watcher.poll_once() and len(reloads) == 1  # unchanged: nothing to do
    enroll(control_plane.base_url, _enrollment_token(api, "cam-crl"), tmp_path / "cam-crl")
    assert api.post("/api/v1/devices/cam-crl/revoke").status_code == 200
    assert watcher.poll_once() and len(reloads) == 2
    assert target.read_bytes() == control_plane.security.ca.crl_file.read_bytes()

    foreign = FleetCA(tmp_path / "foreign-ca")
    foreign.initialise()
    impostor = CrlWatcher(source=str(foreign.crl_file), target=target,
                          ca_cert=control_plane.security.ca.device_ca_cert, reload=lambda: reloads.append(1))
    with pytest.raises(ReloadError, match="not signed by the CA"):
        impostor.poll_once()
    assert target.read_bytes() == control_plane.security.ca.crl_file.read_bytes() and len(reloads) == 2
