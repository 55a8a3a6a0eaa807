"""A private Mosquitto with the config `edgefleet broker-config` writes keeps devices apart.

Real mosquitto, real TLS, real certificates from the fleet CA. The control plane
side is the real :class:`cloud.messaging.bridge.CloudMqtt` over mutual TLS.
"""

from __future__ import annotations

import getpass
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.contract import DeployCommand, Topics
from cloud.messaging.bridge import CloudMqtt
from cloud.security.broker import write_broker_config, write_control_plane_identity
from cloud.security.ca import FleetCA
from tests.support.services import MosquittoProcess, free_port, mosquitto_available, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not mosquitto_available(), reason="needs the mosquitto binary")]
PREFIX = "ef/v1"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _device_identity(ca: FleetCA, directory: Path, device_id: str) -> tuple[Identity, int]:
    """What enrollment gives a device: its own key, and the CA's certificate for its CSR."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whatever")])).sign(key, hashes.SHA256()))
    issued = ca.sign_device_csr(csr.public_bytes(serialization.Encoding.PEM), device_id)
    (directory / f"{device_id}.key").write_bytes(_key_pem(key))
    (directory / f"{device_id}.pem").write_bytes(issued.pem)
    return Identity(directory / f"{device_id}.pem", directory / f"{device_id}.key"), issued.serial


def _self_signed_identity(directory: Path, device_id: str) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    (directory / "self.key").write_bytes(_key_pem(key))
    (directory / "self.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(directory / "self.pem", directory / "self.key")


@dataclass
class Broker:
    process: MosquittoProcess
    ca: FleetCA
    identities: dict[str, Identity]
    control_plane: Identity

    @property
    def port(self) -> int:
        return self.process.port


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    workdir = tmp_path_factory.mktemp("broker")
    ca = FleetCA(workdir / "ca")
    ca.initialise()
    ids = workdir / "ids"
    ids.mkdir()
    identities: dict[str, Identity] = {}
    for device_id in ("cam-a", "cam-b"):
        identities[device_id], _ = _device_identity(ca, ids, device_id)
    identities["cam-revoked"], revoked_serial = _device_identity(ca, ids, "cam-revoked")
    ca.revoke([revoked_serial])
    identities["self-signed"] = _self_signed_identity(ids, "cam-a")
    _, cp_cert, cp_key = write_control_plane_identity(workdir / "control-plane", ca)
    files = write_broker_config(workdir / "mosquitto", ca, prefix=PREFIX, port=free_port(), bind="127.0.0.1",
                                server_names=["127.0.0.1", "localhost"], user=getpass.getuser())
    lines = files.config.read_text().splitlines()
    process = MosquittoProcess(config_lines=lines, port=files.port, workdir=workdir / "mosquitto").start()
    yield Broker(process, ca, identities, Identity(cp_cert, cp_key))
    process.stop()


class Client:
    """A raw paho client over TLS; records what it receives and whether it got a CONNACK."""

    def __init__(self, broker: Broker, identity: Identity | None, *, client_id: str | None = None,
                 username: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.granted: list[int] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"c-{uuid.uuid4().hex[:8]}")
        self.client.tls_set(ca_certs=str(broker.ca.broker_ca_cert),
                            certfile=str(identity.cert) if identity else None,
                            keyfile=str(identity.key) if identity else None)
        if username:
            self.client.username_pw_set(username)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, codes, props: self.granted.extend(int(rc.value) for rc in codes)
        self._broker = broker

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: mqtt.ReasonCode,
                    properties: object) -> None:
        if not reason_code.is_failure:
            self.connected.set()

    def connect(self, timeout_s: float = 5.0) -> bool:
        try:
            self.client.connect("127.0.0.1", self._broker.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.client.loop_start()
        # A refused TLS handshake ends in a disconnect, not a CONNACK: stop waiting at either.
        wait_for(lambda: self.connected.is_set() or self.disconnected.is_set(), timeout_s, interval_s=0.05,
                 what="CONNACK or disconnect")
        return self.connected.is_set()

    def subscribe(self, *topics: str) -> None:
        before = len(self.granted)
        self.client.subscribe([(t, 1) for t in topics])
        wait_for(lambda: len(self.granted) >= before + len(topics), 10, what="SUBACK")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def cloud(broker: Broker) -> Iterator[tuple[CloudMqtt, list[tuple[str, bytes]]]]:
    reports: list[tuple[str, bytes]] = []
    bridge = CloudMqtt(f"mqtts://127.0.0.1:{broker.port}", Topics(PREFIX), lambda t, p: reports.append((t, p)),
                       tls_ca_file=str(broker.ca.broker_ca_cert), tls_cert_file=str(broker.control_plane.cert),
                       tls_key_file=str(broker.control_plane.key))
    bridge.start()
    yield bridge, reports
    bridge.stop()


def _command(device_id: str) -> DeployCommand:
    return DeployCommand(device_id=device_id, job_id=f"job-{uuid.uuid4().hex[:8]}", package_id="p", model_version="m",
                         manifest_url="http://x/manifest.json", manifest_sha256="0" * 64, seq=1,
                         expires_at=datetime.now(UTC) + timedelta(hours=1))


def test_device_cannot_publish_to_another_device_or_read_everything(broker: Broker, cloud) -> None:
    bridge, reports = cloud
    topics = Topics(PREFIX)
    device_a = Client(broker, broker.identities["cam-a"])
    device_b = Client(broker, broker.identities["cam-b"])
    try:
        assert device_a.connect() and device_b.connect()
        device_b.subscribe(topics.commands("cam-b"))
        device_a.subscribe("#", f"{PREFIX}/+/telemetry", topics.commands("cam-b"))
        # Mosquitto 2.0 may grant these subscriptions; its ACL is enforced on every delivery (checked below).

        for topic in (topics.telemetry("cam-b"), topics.status("cam-b"), topics.job("cam-b", "job-x")):
            device_a.publish(topic, b'{"forged": true}')
        device_b.publish(topics.telemetry("cam-b"), b'{"from": "b"}')
        bridge.publish_command(_command("cam-b"))
        device_a.publish(topics.telemetry("cam-a"), b'{"from": "a"}')  # arrives last: the sync point

        wait_for(lambda: (topics.telemetry("cam-a"), b'{"from": "a"}') in reports, 10, what="A's own telemetry")
        wait_for(lambda: device_b.received, 10, what="B's command")
        time.sleep(0.5)  # let any stray delivery land before asserting that none came
        assert not [r for r in reports if b"forged" in r[1]], "a report forged by A reached the control plane"
        assert (topics.telemetry("cam-b"), b'{"from": "b"}') in reports
        assert device_a.received == [], f"device A read other devices' traffic: {device_a.received}"
    finally:
        device_a.stop()
        device_b.stop()


@pytest.mark.parametrize("credentials", ["no certificate", "self-signed certificate", "revoked certificate"])
def test_client_without_a_valid_certificate_cannot_connect(broker: Broker, credentials: str) -> None:
    identity = {"no certificate": None, "self-signed certificate": broker.identities["self-signed"],
                "revoked certificate": broker.identities["cam-revoked"]}[credentials]
    intruder = Client(broker, identity)
    try:
        assert not intruder.connect(), f"a client with {credentials} connected"
    finally:
        intruder.stop()
    # The broker is up and a valid device still gets in: the refusal was about the credentials.
    genuine = Client(broker, broker.identities["cam-a"])
    try:
        assert genuine.connect()
    finally:
        genuine.stop()


def test_second_client_with_a_certificate_cannot_take_over_another_identity(broker: Broker, cloud) -> None:
    bridge, reports = cloud
    topics = Topics(PREFIX)
    device_b = Client(broker, broker.identities["cam-b"], client_id="ef-agent-cam-b")
    # A's certificate, claiming B's client id and username.
    impostor = Client(broker, broker.identities["cam-a"], client_id="ef-agent-cam-b", username="cam-b")
    try:
        assert device_b.connect()
        device_b.subscribe(topics.commands("cam-b"))
        assert impostor.connect()
        impostor.subscribe(topics.commands("cam-b"))
        impostor.publish(topics.status("cam-b"), b'{"impostor": true}')
        bridge.publish_command(_command("cam-b"))

        wait_for(lambda: device_b.received, 10, what="B's command to reach B")
        time.sleep(0.5)
        assert not device_b.disconnected.is_set(), "the impostor kicked device B off the broker"
        assert impostor.received == [], "the impostor read B's commands"
        assert not [r for r in reports if b"impostor" in r[1]], "the impostor published as B"
    finally:
        impostor.stop()
        device_b.stop()
