"""Hostile commands against a real agent process, and a frozen repository.

The broker is assumed hostile (docs/security.md), so the attacker here simply
publishes to the device's command topic. Each rejection must come back as a job
report (REJECTED with an error code) and in telemetry, and the device must keep
serving the model it ran before.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.contract import DeployCommand, DeviceState, StatusReport
from agent.contract.signing import command_signing_bytes
from cloud.core.config import Settings
from cloud.server import ControlPlane
from tests.conftest import control_plane_admin_headers
from tests.security.hostile import Mirror
from tests.support.fleet import AgentProcess, publish_model, start_agent, stop_agents
from tests.support.services import create_postgres_database, drop_postgres_database, wait_for

pytestmark = pytest.mark.integration
DEVICE = "cam-sec"
FROZEN = "cam-frozen"
# Short-lived timestamps so the freeze test does not wait long; the control plane re-signs on demand.
TIMESTAMP_EXPIRY_S = 12


class Observer:
    """Listens to every report and command under the test's prefix (no ACL on the test broker)."""

    def __init__(self, mqtt_url: str, prefix: str) -> None:
        self.jobs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.telemetry: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.commands: list[bytes] = []
        self._lock = threading.Lock()
        address = mqtt_url.split("://", 1)[1]
        host, port = address.rsplit(":", 1)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *args: ready.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        self.client.subscribe([(f"{prefix}/+/jobs/+", 1), (f"{prefix}/+/telemetry", 1), (f"{prefix}/+/commands", 1)])
        assert ready.wait(10), "observer could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            if message.topic.endswith("/commands"):
                self.commands.append(bytes(message.payload))
                return
            document = json.loads(message.payload)
            if document.get("kind") == "job":
                self.jobs[document["job_id"]].append(document)
            elif document.get("kind") == "telemetry":
                self.telemetry[document["device_id"]].append(document)

    def final_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            finals = [r for r in self.jobs.get(job_id, []) if r["state"] in ("succeeded", "failed", "rejected")]
        return finals[-1] if finals else None

    def latest_telemetry(self, device_id: str) -> dict[str, Any] | None:
        with self._lock:
            windows = self.telemetry.get(device_id, [])
            return windows[-1] if windows else None

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Fleet:
    plane: ControlPlane
    api: httpx.Client
    observer: Observer
    agents: dict[str, AgentProcess]
    releases: dict[str, Any]
    mirror: Mirror
    workdir: Path
    attacker: Any = field(default=None)

    def running(self, device_id: str) -> str | None:
        return self.api.get(f"/api/v1/devices/{device_id}").json()["running_model_version"]

    def deploy(self, package_id: str, device_id: str) -> dict[str, Any]:
        response = self.api.post("/api/v1/deployments", json={"package_id": package_id, "device_ids": [device_id]})
        assert response.status_code == 201, response.text
        deployment_id = response.json()["id"]
        return wait_for(
            lambda: (d := self.api.get(f"/api/v1/deployments/{deployment_id}").json())["state"] != "in_progress" and d,
            90, what=f"deployment of {package_id} to {device_id} to finish")

    def publish_raw(self, device_id: str, payload: bytes) -> None:
        self.observer.client.publish(self.plane.topics.commands(device_id), payload, qos=1).wait_for_publish(5)

    def command(self, **overrides: Any) -> DeployCommand:
        v2 = self.releases["v2"]
        fields: dict[str, Any] = {
            "device_id": DEVICE, "job_id": f"job-attack-{uuid.uuid4().hex[:8]}", "package_id": v2.package_id,
            "model_version": v2.model_version, "manifest_url": "http://attacker.invalid/manifest.json",
            "manifest_sha256": "0" * 64, "seq": 1_000_000, "expires_at": datetime.now(UTC) + timedelta(hours=1),
        }
        fields.update(overrides)
        return DeployCommand(**fields)

    def expect_rejected(self, job_id: str, error_code: str, device_id: str = DEVICE) -> dict[str, Any]:
        report = wait_for(lambda: self.observer.final_job(job_id), 30, what=f"a final report for {job_id}")
        assert report["state"] == "rejected", report
        assert report["error_code"] == error_code, report
        return report

    def sync_mirror_fresh(self) -> None:
        """Give the mirror freshly signed metadata, which then expires in TIMESTAMP_EXPIRY_S."""
        repo = self.plane.security.tuf
        repo.refresh_expiring(datetime.now(UTC) + timedelta(seconds=TIMESTAMP_EXPIRY_S))
        self.mirror.sync(repo)

    def wait_for_mirror_to_expire(self) -> None:
        """The frozen mirror keeps serving its metadata until the timestamp has expired."""
        from tuf.api.metadata import Metadata

        expires = Metadata.from_file(str(self.mirror.metadata("timestamp.json"))).signed.expires
        wait_for(lambda: datetime.now(UTC) > expires, TIMESTAMP_EXPIRY_S + 5, what="the frozen timestamp to expire")

    def wait_for_update_check_error(self, device_id: str, code: str | None, what: str) -> None:
        wait_for(lambda: (t := self.observer.latest_telemetry(device_id)) is not None
                 and t.get("update_check_error") == code, 30, what=what)

    def rejected_in_telemetry(self, at_least: int, device_id: str = DEVICE) -> None:
        wait_for(lambda: (t := self.observer.latest_telemetry(device_id)) and t["rejected_commands"] >= at_least,
                 30, what=f"telemetry counting {at_least} rejected commands")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, mqtt_url: str, trained_model: Any) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("security-fleet")
    admin_url = os.environ.get("EDGEFLEET_TEST_DATABASE_URL")
    database_url, db_name = (create_postgres_database(admin_url) if admin_url
                             else (f"sqlite:///{workdir / 'edgefleet.db'}", ""))
    prefix = f"t-{uuid.uuid4().hex[:10]}/ef/v1"
    plane = ControlPlane(Settings(data_dir=workdir / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                                  topic_prefix=prefix, api_port=0, tuf_timestamp_expiry_s=TIMESTAMP_EXPIRY_S))
    plane.start()
    plane.serve_http_in_thread()
    observer = Observer(mqtt_url, prefix)
    api = httpx.Client(base_url=plane.base_url, timeout=15, headers=control_plane_admin_headers(plane))
    mirror = Mirror(workdir / "mirror")
    releases = {"v1": publish_model(plane, trained_model), "v2": publish_model(plane, trained_model)}
    for release in releases.values():
        plane.security.publish_package(plane.settings.packages_dir / release.package_id)
    agents: dict[str, AgentProcess] = {}
    try:
        for device_id in (DEVICE, FROZEN):
            assert api.post("/api/v1/devices", json={"id": device_id}).status_code == 201
        agents[DEVICE] = start_agent(plane, workdir, DEVICE)
        # The frozen device fetches metadata from a mirror the attacker will stop updating.
        agents[FROZEN] = start_agent(plane, workdir, FROZEN, extra={
            "tuf_metadata_url": f"{mirror.url}/metadata/", "tuf_targets_url": f"{mirror.url}/targets/",
            "update_check_interval_s": 1})
        wait_for(lambda: all(d["online"] for d in api.get("/api/v1/devices").json()), 60, what="agents online")
        assert Fleet(plane, api, observer, agents, releases, mirror, workdir).deploy(
            releases["v1"].package_id, DEVICE)["state"] == "succeeded"
        wait_for(lambda: api.get(f"/api/v1/devices/{DEVICE}").json()["running_model_version"]
                 == releases["v1"].model_version, 30, what="v1 running")
        yield Fleet(plane, api, observer, agents, releases, mirror, workdir)
    finally:
        stop_agents(list(agents.values()))
        observer.stop()
        api.close()
        mirror.stop()
        plane.stop()
        if admin_url:
            drop_postgres_database(admin_url, db_name)


def _forge(command: DeployCommand, key: Ed25519PrivateKey) -> bytes:
    signature = base64.b64encode(key.sign(command_signing_bytes(command))).decode()
    return command.model_copy(update={"signature": signature}).to_bytes()


def test_forged_command_is_rejected_and_reported(fleet: Fleet) -> None:
    v1 = fleet.releases["v1"].model_version
    forged = fleet.command()
    fleet.publish_raw(DEVICE, _forge(forged, Ed25519PrivateKey.generate()))
    unsigned = fleet.command()
    fleet.publish_raw(DEVICE, unsigned.to_bytes())

    fleet.expect_rejected(forged.job_id, "bad_signature")
    fleet.expect_rejected(unsigned.job_id, "unsigned_command")
    fleet.rejected_in_telemetry(2)
    assert fleet.running(DEVICE) == v1
    assert fleet.observer.latest_telemetry(DEVICE)["model_version"] == v1


def test_command_for_another_device_is_rejected(fleet: Fleet) -> None:
    # Genuinely signed by the director, but for another device: replayed onto our topic.
    command = fleet.plane.security.sign_command(fleet.command(device_id="cam-elsewhere"))
    fleet.publish_raw(DEVICE, command.to_bytes())

    fleet.expect_rejected(command.job_id, "misaddressed_command")
    assert fleet.running(DEVICE) == fleet.releases["v1"].model_version


def test_expired_command_is_rejected(fleet: Fleet) -> None:
    command = fleet.plane.security.sign_command(fleet.command(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    fleet.publish_raw(DEVICE, command.to_bytes())

    fleet.expect_rejected(command.job_id, "expired_command")
    assert fleet.running(DEVICE) == fleet.releases["v1"].model_version


def test_replayed_command_is_rejected(fleet: Fleet) -> None:
    v1, v2 = fleet.releases["v1"], fleet.releases["v2"]
    # The genuine, signed v1 command the control plane sent earlier, as captured off the broker.
    v1_command = next(DeployCommand.model_validate_json(p) for p in fleet.observer.commands
                      if DeployCommand.model_validate_json(p).package_id == v1.package_id
                      and DeployCommand.model_validate_json(p).device_id == DEVICE)
    assert fleet.deploy(v2.package_id, DEVICE)["state"] == "succeeded"
    wait_for(lambda: fleet.running(DEVICE) == v2.model_version, 30, what="v2 running")

    fleet.publish_raw(DEVICE, v1_command.to_bytes())
    report = wait_for(lambda: [r for r in fleet.observer.jobs.get(v1_command.job_id, []) if r["state"] == "rejected"],
                      30, what="the replay to be rejected")[-1]
    assert report["error_code"] == "replayed_command"
    assert fleet.running(DEVICE) == v2.model_version


def test_expired_timestamp_freeze_is_refused_and_reported_in_telemetry(fleet: Fleet) -> None:
    v1, v2 = fleet.releases["v1"], fleet.releases["v2"]
    # Honest at first: the mirror serves freshly signed metadata, and the device installs v1 through it.
    fleet.sync_mirror_fresh()
    assert fleet.deploy(v1.package_id, FROZEN)["state"] == "succeeded"
    wait_for(lambda: fleet.running(FROZEN) == v1.model_version, 30, what="v1 running on the frozen device")
    # Then the mirror freezes.
    fleet.wait_for_mirror_to_expire()

    outcome = fleet.deploy(v2.package_id, FROZEN)
    assert outcome["jobs"][0]["state"] == "rejected"
    assert outcome["jobs"][0]["error_code"] == "expired_metadata"
    fleet.wait_for_update_check_error(FROZEN, "expired_metadata", "the freeze reported in telemetry")
    assert fleet.running(FROZEN) == v1.model_version


def test_a_frozen_mirror_is_noticed_without_any_command(fleet: Fleet) -> None:
    """The device checks its metadata on its own: no deploy has to arrive for a freeze to show."""
    fleet.sync_mirror_fresh()
    # Fresh metadata on the mirror: the periodic check succeeds (and clears any earlier error).
    fleet.wait_for_update_check_error(FROZEN, None, "a clean metadata check in telemetry")
    fleet.wait_for_mirror_to_expire()
    jobs_before = dict(fleet.observer.jobs)
    fleet.wait_for_update_check_error(FROZEN, "expired_metadata", "the freeze reported in telemetry without a command")
    assert dict(fleet.observer.jobs) == jobs_before  # nothing was deployed meanwhile
    # The control plane keeps it with the telemetry window, for the API and the device page.
    wait_for(lambda: fleet.api.get(f"/api/v1/devices/{FROZEN}/telemetry", params={"limit": 1}).json()[0]
             .get("update_check_error") == "expired_metadata", 30, what="the freeze stored with the telemetry")


def test_a_report_on_the_command_topic_is_ignored_without_an_error(fleet: Fleet) -> None:
    agent = fleet.agents[DEVICE]
    errors_before = agent.log.count(" ERROR ")
    # Another device's retained status, as a misbehaving broker would deliver it, then a truly malformed command.
    status = StatusReport(device_id="cam-elsewhere", state=DeviceState.ONLINE)
    fleet.publish_raw(DEVICE, status.to_bytes())
    fleet.publish_raw(DEVICE, b'{"kind": "deploy", "device_id": "' + DEVICE.encode() + b'"}')

    # Commands are handled in arrival order: once the malformed one is logged, the status was handled too.
    wait_for(lambda: agent.log.count("rejected malformed command") and "job_id" in agent.log.split(
        "rejected malformed command")[-1], 30, what="the malformed command rejected")
    new_errors = [line for line in agent.log.splitlines() if " ERROR " in line][errors_before:]
    assert len(new_errors) == 1 and "job_id" in new_errors[0], new_errors
