"""Attacks on how a real agent process takes director-signed commands, and the defences.

Each test stages the attack against real processes (a control plane, the test Mosquitto,
agent processes enrolled with real Ed25519 director and TUF keys) and checks it now fails:

- a flood of forged commands must not crowd out a genuine one;
- one validly signed command with a huge ``seq`` must not silence a device for good,
  and a signed resync puts a device back in step after the control plane's counter went back;
- a replayed command is refused with a report, never dropped silently;
- an older package is refused unless the command is a signed rollback, and a withdrawn
  package is refused by the device.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session

from agent.contract import DeployCommand, ResyncCommand
from agent.contract.signing import command_signing_bytes
from agent.update.store import PackageStore
from cloud.core.config import Settings
from cloud.fleet.tables import Device, Package
from cloud.rollout.commands import deploy_command
from cloud.server import ControlPlane
from tests.conftest import control_plane_admin_headers
from tests.security.test_commands import Observer
from tests.support.fleet import AgentProcess, enroll_agent, publish_model, start_agent, stop_agents
from tests.support.services import (
    MosquittoProcess,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    mosquitto_available,
    wait_for,
)

pytestmark = pytest.mark.integration
FLOODED = "cam-flooded"
SEQ = "cam-seq"
DOWNGRADE = "cam-downgrade"
FORGED_COMMANDS = 4000


@dataclass
class Plant:
    plane: ControlPlane
    api: httpx.Client
    observer: Observer
    agents: dict[str, AgentProcess]
    releases: dict[str, Any]
    workdir: Path

    def running(self, device_id: str) -> str | None:
        return self.api.get(f"/api/v1/devices/{device_id}").json()["running_package_id"]

    def deploy(self, package_id: str, device_id: str, *, rollback: bool = False) -> dict[str, Any]:
        response = self.api.post("/api/v1/deployments", json={"package_id": package_id, "device_ids": [device_id],
                                                                "rollback": rollback})
        assert response.status_code == 201, response.text
        deployment_id = response.json()["id"]
        return wait_for(
            lambda: (d := self.api.get(f"/api/v1/deployments/{deployment_id}").json())["state"] != "in_progress" and d,
            120, what=f"deployment of {package_id} to {device_id} to finish")

    def publish_raw(self, device_id: str, payload: bytes) -> None:
        self.observer.client.publish(self.plane.topics.commands(device_id), payload, qos=1).wait_for_publish(5)

    def next_seq(self, device_id: str, *, ahead: int = 1) -> int:
        """Take seq numbers from the control plane's own counter, as it does for every command."""
        with Session(self.plane.engine) as session:
            device = session.get(Device, device_id)
            assert device is not None
            device.command_seq += ahead
            session.add(device)
            session.commit()
            return device.command_seq

    def set_counter(self, device_id: str, seq: int) -> None:
        with Session(self.plane.engine) as session:
            device = session.get(Device, device_id)
            assert device is not None
            device.command_seq = seq
            session.add(device)
            session.commit()

    def signed_deploy(self, package_id: str, device_id: str, seq: int, **fields: Any) -> DeployCommand:
        with Session(self.plane.engine) as session:
            package = session.get(Package, package_id)
            assert package is not None
            command = deploy_command(package, device_id=device_id, job_id=f"job-direct-{uuid.uuid4().hex[:8]}",
                                     seq=seq, base_url=self.plane.base_url,
                                     expires_at=datetime.now(UTC) + timedelta(minutes=10), **fields)
        return self.plane.security.sign_command(command)

    def final(self, job_id: str) -> dict[str, Any]:
        return wait_for(lambda: self.observer.final_job(job_id), 60, what=f"a final report for {job_id}")

    def reports(self, job_id: str) -> list[dict[str, Any]]:
        with self.observer._lock:
            return list(self.observer.jobs.get(job_id, []))

    def captured(self, job_id: str) -> bytes:
        """The signed command the control plane published for ``job_id``, as seen on the broker."""
        with self.observer._lock:
            return next(p for p in self.observer.commands if DeployCommand.model_validate_json(p).job_id == job_id)


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory, trained_model: Any) -> Iterator[Plant]:
    if not mosquitto_available():
        pytest.skip("needs the mosquitto binary")
    workdir = tmp_path_factory.mktemp("command-hardening")
    # A private broker that queues every message for a slow subscriber (the machine broker's
    # default drops past 1000), so what the flood test measures is the agent, not the broker.
    port = free_port()
    (workdir / "broker").mkdir()
    broker = MosquittoProcess([f"listener {port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 0"],
                              port=port, workdir=workdir / "broker").start()
    mqtt_url = broker.url
    admin_url = os.environ.get("EDGEFLEET_TEST_DATABASE_URL")
    database_url, db_name = (create_postgres_database(admin_url) if admin_url
                             else (f"sqlite:///{workdir / 'edgefleet.db'}", ""))
    prefix = f"t-{uuid.uuid4().hex[:10]}/ef/v1"
    plane = ControlPlane(Settings(data_dir=workdir / "cloud", database_url=database_url, mqtt_url=mqtt_url,
                                  topic_prefix=prefix, api_port=0))
    plane.start()
    plane.serve_http_in_thread()
    observer = Observer(mqtt_url, prefix)
    api = httpx.Client(base_url=plane.base_url, timeout=30, headers=control_plane_admin_headers(plane))
    # Three versions of one model line: each build gets the next, higher release.
    releases = {name: publish_model(plane, trained_model) for name in ("v1", "v2", "v3")}
    for release in releases.values():
        plane.security.publish_package(plane.settings.packages_dir / release.package_id)
    agents: dict[str, AgentProcess] = {}
    try:
        for device_id in (FLOODED, SEQ, DOWNGRADE):
            assert api.post("/api/v1/devices", json={"id": device_id}).status_code == 201
            agents[device_id] = start_agent(plane, workdir, device_id)
        wait_for(lambda: all(d["online"] for d in api.get("/api/v1/devices").json()), 60, what="agents online")
        plant = Plant(plane, api, observer, agents, releases, workdir)
        for device_id in (SEQ, DOWNGRADE):
            assert plant.deploy(releases["v1"].package_id, device_id)["state"] == "succeeded"
        yield plant
    finally:
        stop_agents(list(agents.values()))
        observer.stop()
        api.close()
        plane.stop()
        broker.stop()
        if admin_url:
            drop_postgres_database(admin_url, db_name)


def _forged(device_id: str, package_id: str, key: Ed25519PrivateKey, index: int) -> bytes:
    command = DeployCommand(
        device_id=device_id, job_id=f"job-forged-{index}", package_id=package_id, model_version="forged",
        manifest_url="http://attacker.invalid/manifest.json", manifest_sha256="0" * 64, seq=10 + index,
        expires_at=datetime.now(UTC) + timedelta(hours=1))
    signature = base64.b64encode(key.sign(command_signing_bytes(command))).decode()
    return command.model_copy(update={"signature": signature}).to_bytes()


# --- forged commands crowding out a genuine one -----------------------------------
def test_a_flood_of_forged_commands_does_not_crowd_out_a_genuine_one(plant: Plant) -> None:
    """The flood lands while the device is busy installing, as an attacker would time it.

    A genuine deploy goes first, so the agent's command thread is downloading, verifying and
    loading a package when the forgeries arrive. Anything that queues commands before their
    signature is checked fills up with forgeries then, and the second genuine command, sent in
    the middle of the flood, is dropped. Checked on receipt, forgeries never take a place.
    """
    v1, v2 = plant.releases["v1"].package_id, plant.releases["v2"].package_id
    attacker = Ed25519PrivateKey.generate()
    flood = [_forged(FLOODED, v1, attacker, index) for index in range(FORGED_COMMANDS)]
    # Genuine commands, signed by the director with the control plane's next seq numbers.
    busy = plant.signed_deploy(v1, FLOODED, seq=plant.next_seq(FLOODED))
    genuine = plant.signed_deploy(v2, FLOODED, seq=plant.next_seq(FLOODED))
    half = FORGED_COMMANDS // 2
    # One connection, so the broker delivers them in this order: the install first, then the
    # genuine command in the middle of the flood. The attacker does not wait for acknowledgements (QoS 0).
    topic = plant.plane.topics.commands(FLOODED)
    plant.observer.client.publish(topic, busy.to_bytes(), qos=1).wait_for_publish(5)
    for payload in [*flood[:half], genuine.to_bytes(), *flood[half:]]:
        sent = plant.observer.client.publish(topic, payload, qos=0)
    sent.wait_for_publish(60)

    first = wait_for(lambda: plant.observer.final_job(busy.job_id), 120, what="the first install's final report")
    assert first["state"] == "succeeded", (first, plant.agents[FLOODED].log[-3000:])
    report = wait_for(lambda: plant.observer.final_job(genuine.job_id), 120,
                      what="the genuine command's final report despite the flood")
    assert report["state"] == "succeeded", (report, plant.agents[FLOODED].log[-3000:])
    assert plant.agents[FLOODED].process.poll() is None, "the agent died under the flood"
    # Every forgery is counted in telemetry, none of them was installed.
    wait_for(lambda: (t := plant.observer.latest_telemetry(FLOODED)) and t["rejected_commands"] >= FORGED_COMMANDS,
             60, what=f"telemetry counting {FORGED_COMMANDS} rejected commands")
    wait_for(lambda: plant.running(FLOODED) == v2, 30, what="the genuine package running")


# --- seq window, resync, replay ----------------------------------------------------
def test_a_command_with_a_huge_seq_is_refused_and_does_not_silence_the_device(plant: Plant) -> None:
    current = plant.running(SEQ)
    assert current is not None
    # Validly signed (a stolen director key, or a control plane numbering from a bad restore).
    huge = plant.signed_deploy(current, SEQ, seq=plant.next_seq(SEQ) + 10**12)
    plant.publish_raw(SEQ, huge.to_bytes())
    report = plant.final(huge.job_id)
    assert (report["state"], report["error_code"]) == ("rejected", "seq_out_of_window"), report

    # The control plane's next ordinary command still gets through.
    assert plant.deploy(current, SEQ)["state"] == "succeeded"


def test_a_signed_resync_puts_the_device_back_in_step_after_a_restore(plant: Plant) -> None:
    current = plant.running(SEQ)
    assert current is not None
    # The control plane's database is restored from an old backup: its counter goes back.
    plant.set_counter(SEQ, 0)
    refused = plant.deploy(current, SEQ)
    assert (refused["jobs"][0]["state"], refused["jobs"][0]["error_code"]) == ("rejected", "replayed_command")

    response = plant.api.post(f"/api/v1/devices/{SEQ}/resync")
    assert response.status_code == 202, response.text
    resync = response.json()
    assert plant.final(resync["job_id"])["state"] == "succeeded"
    assert plant.deploy(current, SEQ)["state"] == "succeeded"

    # A captured resync replayed later (to wind the base back again) is refused.
    with plant.observer._lock:
        payload = next(p for p in plant.observer.commands if b'"resync"' in p
                       and ResyncCommand.model_validate_json(p).job_id == resync["job_id"])
    replay_job = resync["job_id"]
    before = len([r for r in plant.reports(replay_job) if r["state"] == "rejected"])
    plant.publish_raw(SEQ, payload)
    report = wait_for(lambda: [r for r in plant.reports(replay_job) if r["state"] == "rejected"][before:],
                      30, what="the replayed resync to be refused")[-1]
    assert report["error_code"] == "replayed_command"


def test_a_replayed_command_for_a_finished_job_is_refused_with_a_report(plant: Plant) -> None:
    # The last install this device finished (v1, in the fixture), replayed off the broker.
    v1_job = next(job_id for job_id, reports in plant.observer.jobs.items()
                  if any(r["device_id"] == SEQ and r.get("package_id") == plant.releases["v1"].package_id
                         and r["state"] == "succeeded" for r in reports))
    plant.publish_raw(SEQ, plant.captured(v1_job))
    report = wait_for(lambda: [r for r in plant.reports(v1_job) if r["state"] == "rejected"],
                      30, what="the replay to be refused with a report")[-1]
    assert report["error_code"] == "replayed_command"
    assert plant.running(SEQ) == plant.releases["v1"].package_id


def test_re_enrolment_resets_the_accepted_command_seq(plant: Plant, tmp_path: Path) -> None:
    store = PackageStore(tmp_path)
    store.set_last_command_seq(10**9)
    enroll_agent(plant.plane, tmp_path, "cam-reenrolled-" + uuid.uuid4().hex[:6])
    assert PackageStore(tmp_path).last_command_seq() == -1


# --- package downgrade and withdrawal -----------------------------------------------
def test_an_older_package_is_refused_unless_the_command_is_a_signed_rollback(plant: Plant) -> None:
    v1, v2 = plant.releases["v1"].package_id, plant.releases["v2"].package_id
    assert plant.deploy(v2, DOWNGRADE)["state"] == "succeeded"
    wait_for(lambda: plant.running(DOWNGRADE) == v2, 30, what="v2 running")

    plain = plant.deploy(v1, DOWNGRADE)
    assert (plain["jobs"][0]["state"], plain["jobs"][0]["error_code"]) == ("rejected", "package_downgrade"), plain
    assert plant.running(DOWNGRADE) == v2

    # The same command with the rollback bit flipped by whoever relays it: the signature breaks.
    relayed = plant.signed_deploy(v1, DOWNGRADE, seq=plant.next_seq(DOWNGRADE))
    tampered = relayed.model_copy(update={"rollback": True})
    plant.publish_raw(DOWNGRADE, tampered.to_bytes())
    assert (plant.final(tampered.job_id)["error_code"]) == "bad_signature"
    assert plant.running(DOWNGRADE) == v2

    rollback = plant.deploy(v1, DOWNGRADE, rollback=True)
    assert rollback["state"] == "succeeded", rollback
    wait_for(lambda: plant.running(DOWNGRADE) == v1, 30, what="v1 running after the rollback")


def test_a_withdrawn_package_is_refused_by_the_device(plant: Plant) -> None:
    v3 = plant.releases["v3"].package_id
    response = plant.api.post(f"/api/v1/packages/{v3}/withdraw")
    assert response.status_code == 200, response.text
    assert response.json()["targets_removed"] >= 2  # its manifest and model file at least
    # The control plane no longer deploys it ...
    refused = plant.api.post("/api/v1/deployments", json={"package_id": v3, "device_ids": [DOWNGRADE]})
    assert refused.status_code == 409, refused.text
    assert "withdrawn" in refused.json()["detail"]
    # ... and a device told to install it anyway (a stale node, a stolen director key) refuses.
    before = plant.running(DOWNGRADE)
    command = plant.signed_deploy(v3, DOWNGRADE, seq=plant.next_seq(DOWNGRADE))
    plant.publish_raw(DOWNGRADE, command.to_bytes())
    report = plant.final(command.job_id)
    assert (report["state"], report["error_code"]) == ("rejected", "unknown_target"), report
    assert plant.running(DOWNGRADE) == before
