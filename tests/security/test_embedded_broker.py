"""The embedded broker `edgefleet serve` starts without EDGEFLEET_MQTT_URL: devices log in with
their device id and API token, see only their own topics, and never get other devices'
retained messages (a real control plane, the real amqtt broker, real agents and uplinks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session

from agent.contract import DeployCommand, StatusReport, Topics
from agent.contract.broker_url import parse_broker_url
from agent.contract.topics import device_client_id
from agent.uplink.mqtt import MqttUplink
from agent.uplink.outbox import Outbox
from cloud.core.config import Settings
from cloud.security.tables import Role
from cloud.security.tokens import create_api_token
from cloud.server import ControlPlane
from tests.conftest import control_plane_admin_headers
from tests.support.fleet import start_agent, stop_agents
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def embedded_plane(tmp_path: Path, database_url: str, topic_prefix: str) -> Iterator[ControlPlane]:
    plane = ControlPlane(Settings(data_dir=tmp_path / "cloud", database_url=database_url, topic_prefix=topic_prefix,
                                  api_port=0))
    plane.start()
    plane.serve_http_in_thread()
    try:
        assert plane.broker is not None, "no EDGEFLEET_MQTT_URL: the plane must start its embedded broker"
        yield plane
    finally:
        plane.stop()


def sentinel_command(device_id: str) -> DeployCommand:
    """A command to ``device_id``; once it arrives, whatever the broker sent before it has arrived."""
    return DeployCommand(device_id=device_id, job_id="sentinel", package_id="p", model_version="m",
                         manifest_url="http://127.0.0.1/manifest.json", manifest_sha256="0" * 64, seq=1,
                         expires_at=datetime.now(UTC) + timedelta(minutes=5))


def device_token(plane: ControlPlane, device_id: str) -> str:
    with Session(plane.engine) as session:
        token, _ = create_api_token(session, name=f"device {device_id}", role=Role.DEVICE, device_id=device_id)
    return token


class Probe:
    """A raw MQTT client that records what the broker says and sends it."""

    def __init__(self, plane: ControlPlane, *, client_id: str, username: str | None = None,
                 password: str | None = None, clean_session: bool = True) -> None:
        address = parse_broker_url(plane.broker_url)
        self.connack: int | None = None
        self.connects = 0
        self.granted: list[int] = []
        self.received: list[mqtt.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.answered = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                                  clean_session=clean_session)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda client, userdata, message: self.received.append(message)
        self.client.connect_async(address.host, address.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object,
                    properties: object) -> None:
        self.connack = int(reason_code.value)  # type: ignore[attr-defined]
        self.connects += self.connack == 0
        self.answered.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes: list[object],
                      properties: object) -> None:
        self.granted = [int(code.value) for code in reason_codes]  # type: ignore[attr-defined]
        self.subscribed.set()

    def subscribe(self, topic: str) -> list[int]:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10), "no SUBACK"
        return self.granted

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_anonymous_and_wrong_credentials_are_refused(embedded_plane: ControlPlane) -> None:
    token = device_token(embedded_plane, "cam-a")
    for attempt in (
        Probe(embedded_plane, client_id=device_client_id("cam-a")),  # anonymous
        Probe(embedded_plane, client_id=device_client_id("cam-a"), username="cam-a", password="efd_wrong"),
        Probe(embedded_plane, client_id=device_client_id("cam-b"), username="cam-b", password=token),  # A's token
        # A's own credentials, but B's client id: would take over B's persistent session.
        Probe(embedded_plane, client_id=device_client_id("cam-b"), username="cam-a", password=token),
    ):
        try:
            assert attempt.answered.wait(10), "the broker did not answer the CONNECT"
            assert attempt.connack != 0, "the broker let a client in without valid credentials"
        finally:
            attempt.close()


def test_a_device_reads_only_its_own_commands(embedded_plane: ControlPlane) -> None:
    topics = embedded_plane.topics
    token_a, token_b = device_token(embedded_plane, "cam-a"), device_token(embedded_plane, "cam-b")
    device_a = Probe(embedded_plane, client_id=device_client_id("cam-a"), username="cam-a", password=token_a)
    device_b = Probe(embedded_plane, client_id=device_client_id("cam-b"), username="cam-b", password=token_b)
    try:
        assert device_a.answered.wait(10) and device_a.connack == 0
        assert device_b.answered.wait(10) and device_b.connack == 0
        # A publishes a retained status, as every agent does.
        status = StatusReport(device_id="cam-a", state="online").to_bytes()
        device_a.client.publish(topics.status("cam-a"), status, qos=1, retain=True).wait_for_publish(10)
        # B may not read A's commands, A's reports, or everything.
        for forbidden in (topics.commands("cam-a"), topics.status("cam-a"), f"{topics.prefix}/+/status",
                          f"{topics.prefix}/#", "#"):
            assert device_b.subscribe(forbidden) == [0x80], f"cam-b may subscribe to {forbidden}"
        assert device_b.subscribe(topics.commands("cam-b")) == [1]
        assert device_a.subscribe(topics.commands("cam-a")) == [1]
        # B may not write anyone's commands: the broker drops its publish on A's command topic.
        device_b.client.publish(topics.commands("cam-a"), b'{"kind": "deploy"}', qos=1).wait_for_publish(10)
        # The control plane's commands arrive after anything the broker sent before them.
        assert embedded_plane.mqtt is not None
        embedded_plane.mqtt.publish_command(sentinel_command("cam-b"))
        embedded_plane.mqtt.publish_command(sentinel_command("cam-a"))
        wait_for(lambda: device_b.received and device_a.received, 15, what="each device's own command")
        assert [m.topic for m in device_b.received] == [topics.commands("cam-b")]
        assert [b'"sentinel"' in m.payload for m in device_a.received] == [True], "cam-b wrote to cam-a's commands"
    finally:
        device_a.close()
        device_b.close()


def test_another_devices_retained_status_never_reaches_an_uplink(embedded_plane: ControlPlane,
                                                                  tmp_path: Path) -> None:
    topics: Topics = embedded_plane.topics
    token_a, token_b = device_token(embedded_plane, "cam-a"), device_token(embedded_plane, "cam-b")
    device_a = Probe(embedded_plane, client_id=device_client_id("cam-a"), username="cam-a", password=token_a)
    try:
        assert device_a.answered.wait(10) and device_a.connack == 0
        status = StatusReport(device_id="cam-a", state="online").to_bytes()
        device_a.client.publish(topics.status("cam-a"), status, qos=1, retain=True).wait_for_publish(10)
    finally:
        device_a.close()
    # cam-b's real uplink connects with the control plane's `+/status` subscription in place.
    received: list[bytes] = []
    uplink = MqttUplink(device_id="cam-b", broker_url=embedded_plane.broker_url, topics=topics,
                        status_provider=lambda: StatusReport(device_id="cam-b", state="online"),
                        on_command=received.append, outbox=Outbox(tmp_path / "outbox.sqlite", max_reports=100), password=token_b)
    uplink.start()
    try:
        assert uplink.connected.wait(15), "cam-b's uplink did not connect with its device token"
        wait_for(lambda: embedded_plane.mqtt is not None and embedded_plane.mqtt.connected.is_set(), 10,
                 what="control plane connected")
        assert embedded_plane.mqtt is not None
        # Subscribing happens on connect; a command sent now arrives after any retained replay.
        bridge = embedded_plane.mqtt
        # Resent until it arrives: the uplink subscribes in its connect callback.
        wait_for(lambda: bridge.publish_command(sentinel_command("cam-b")) or bool(received), 15, interval_s=1.0,
                 what="cam-b's own command")
        assert uplink.ignored_messages == 0, "the broker delivered another topic's message to cam-b"
        assert all(b'"kind":"deploy"' in payload.replace(b" ", b"") for payload in received)
    finally:
        uplink.stop()


def test_agents_connect_without_errors(embedded_plane: ControlPlane, tmp_path: Path) -> None:
    """Two real agent processes on the embedded broker: the second sees none of the first's status."""
    with httpx.Client(base_url=embedded_plane.base_url, timeout=15,
                      headers=control_plane_admin_headers(embedded_plane)) as api:
        for device_id in ("cam-a", "cam-b"):
            assert api.post("/api/v1/devices", json={"id": device_id}).status_code == 201
        agents = [start_agent(embedded_plane, tmp_path, "cam-a")]
        try:
            wait_for(lambda: api.get("/api/v1/devices/cam-a").json()["online"], 60, what="cam-a online")
            agents.append(start_agent(embedded_plane, tmp_path, "cam-b"))
            wait_for(lambda: api.get("/api/v1/devices/cam-b").json()["online"], 60, what="cam-b online")
            # Telemetry windows come after the connect; the one stored says what the agent rejected.
            wait_for(lambda: api.get("/api/v1/devices/cam-b/telemetry").status_code == 200
                     and bool(api.get("/api/v1/devices/cam-b/telemetry").json()), 60, what="cam-b telemetry")
            for agent in agents:
                assert " ERROR " not in agent.log and "rejected malformed command" not in agent.log, agent.log
        finally:
            stop_agents(agents)


def test_a_refused_client_cannot_take_over_a_devices_session(embedded_plane: ControlPlane) -> None:
    token_b = device_token(embedded_plane, "cam-b")
    device_b = Probe(embedded_plane, client_id=device_client_id("cam-b"), username="cam-b", password=token_b,
                     clean_session=False)
    try:
        assert device_b.answered.wait(10) and device_b.connack == 0
        assert device_b.subscribe(embedded_plane.topics.commands("cam-b")) == [1]
        # Same client id, no credentials, once keeping and once discarding the stored session.
        for clean_session in (False, True):
            intruder = Probe(embedded_plane, client_id=device_client_id("cam-b"), clean_session=clean_session)
            try:
                assert intruder.answered.wait(10) and intruder.connack != 0
            finally:
                intruder.close()
        assert embedded_plane.mqtt is not None
        embedded_plane.mqtt.publish_command(sentinel_command("cam-b"))
        wait_for(lambda: device_b.received, 15, what="cam-b's command")
        assert device_b.connects == 1, "the refused client disconnected cam-b"
    finally:
        device_b.close()
