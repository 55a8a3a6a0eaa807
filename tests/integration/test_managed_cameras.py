"""Cameras managed from the control plane, end to end: real agent process, Mosquitto, PostgreSQL.

One agent runs its config file's camera; a camera added through the API starts serving
(its own telemetry) in the same process, the first camera never restarts (its cumulative
frame counter keeps growing), bad sets are refused at the API (4xx) and, when signed and
sent anyway, by the agent (reason in its status) while both cameras keep running; a changed
camera restarts alone; two cameras assigned one package share one loaded instance of it;
a removed one stops; after a restart the agent runs the applied set, not its config file's.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from sqlmodel import Session

from agent.contract import CameraConfigCommand, CameraSpec
from agent.contract.broker_url import parse_broker_url
from cloud.demo import spawn_agent
from cloud.fleet import crud
from cloud.governance import audit
from tests.support.fleet import AgentProcess, publish_model, start_agent, stop_agents
from tests.support.services import wait_for

pytestmark = pytest.mark.integration

DEVICE = "cam-managed"
FAST_INSTALL = {"probation_window_s": 0.5, "probation_min_frames": 2, "runtime_timing_runs": 2,
                "update_check_interval_s": 0}


class TelemetryWatch:
    """The newest cumulative ``processed`` count per pipeline, from the device's telemetry on the broker,
    and how often a pipeline's count went down (a restarted pipeline counts from zero again)."""

    def __init__(self, broker_url: str, topic: str) -> None:
        self.processed: dict[str, int] = {}
        self.resets: dict[str, int] = {}
        # The newest (model_group, loaded_models) per pipeline: which model serves it, how many are loaded.
        self.models: dict[str, tuple[str | None, int | None]] = {}
        self._lock = threading.Lock()
        address = parse_broker_url(broker_url)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = self._message
        self._client.connect(address.host, address.port)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        report = json.loads(message.payload)
        if report.get("pipeline") and report.get("frame_totals"):
            name, processed = report["pipeline"], report["frame_totals"]["processed"]
            with self._lock:
                if processed < self.processed.get(name, 0):
                    self.resets[name] = self.resets.get(name, 0) + 1
                self.processed[name] = processed
                self.models[name] = (report.get("model_group"), report.get("loaded_models"))

    def count(self, pipeline: str) -> int:
        with self._lock:
            return self.processed.get(pipeline, -1)

    def grows(self, pipeline: str, beyond: int) -> bool:
        return self.count(pipeline) > beyond

    def shared(self, pipelines: list[str], model_group: str, loaded_models: int) -> bool:
        """Every one of ``pipelines`` last reported ``model_group`` with ``loaded_models`` loaded."""
        with self._lock:
            return all(self.models.get(name) == (model_group, loaded_models) for name in pipelines)

    def forget(self) -> None:
        with self._lock:
            self.processed.clear()
            self.models.clear()

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _cameras(api) -> dict:
    response = api.get(f"/api/v1/devices/{DEVICE}/cameras")
    assert response.status_code == 200, response.text
    return response.json()


def _refused(api, method: str, path: str, body: dict, status: int, fragment: str) -> None:
    response = api.request(method, f"/api/v1/devices/{DEVICE}{path}", json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"], response.json()["detail"]


def _restart(agent: AgentProcess) -> AgentProcess:
    stop_agents([agent])
    config_path = agent.state_dir / "agent.yaml"
    config = yaml.safe_load(config_path.read_text())
    return AgentProcess(agent.device_id, agent.state_dir, spawn_agent(config, config_path, agent.state_dir / "agent.log"))


def test_cameras_added_refused_and_kept_without_restarting_the_agent(control_plane, api, trained_model,
                                                                    tmp_path: Path) -> None:
    release = publish_model(control_plane, trained_model)
    assert api.post("/api/v1/devices", json={"id": DEVICE, "hardware_profile": "x86-64-avx2"}).status_code == 201
    watch = TelemetryWatch(control_plane.broker_url, control_plane.topics.telemetry(DEVICE))
    agent = start_agent(control_plane, tmp_path, DEVICE, source="synthetic:1", fps=10.0, extra=FAST_INSTALL)
    try:
        wait_for(lambda: api.get(f"/api/v1/devices/{DEVICE}").json()["online"], 60, what="agent online")
        response = api.post("/api/v1/deployments", json={"package_id": release.package_id, "device_ids": [DEVICE]})
        assert response.status_code == 201, response.text
        deployment = f"/api/v1/deployments/{response.json()['id']}"
        wait_for(lambda: api.get(deployment).json()["state"] == "succeeded", 90, what="the deployment")
        wait_for(lambda: watch.grows("main", 0), 30, what="the config file's camera serving")
        # Before any change the device's config-file camera is its camera set (revision 0).
        listed = wait_for(lambda: (c := _cameras(api))["cameras"] and c, 30, what="the reported camera set")
        assert listed["desired_revision"] == 0 and listed["applied_revision"] == 0
        assert [c["name"] for c in listed["cameras"]] == ["main"]

        # What the API can check is refused before anything is sent, with what to fix.
        good = {"name": "yard", "source": "synthetic:2", "target_fps": 5, "package_id": release.package_id,
                "region": {"x": 0.25, "y": 0.0, "width": 0.5, "height": 1.0}}
        _refused(api, "POST", "/cameras", {**good, "source": "rtsp://admin:hunter2@10.0.0.5/live"}, 422,
                 "{secret:NAME}")
        _refused(api, "POST", "/cameras", {**good, "source": "rtsp://10.0.0.5:port/live"}, 422, "cannot be parsed")
        _refused(api, "POST", "/cameras", {**good, "package_id": "pkg-missing"}, 422, "'pkg-missing' does not exist")
        _refused(api, "POST", "/cameras", {**good, "rtsp_transport": "quic"}, 422, "rtsp_transport")
        _refused(api, "POST", "/cameras", {**good, "name": "main"}, 409, "already has a camera 'main'")
        _refused(api, "DELETE", "/cameras/nope", {}, 404, "no camera 'nope'")
        assert _cameras(api)["desired_revision"] == 0  # nothing was stored or sent

        pid = agent.process.pid
        main_before = watch.count("main")
        response = api.post(f"/api/v1/devices/{DEVICE}/cameras", json=good)
        assert response.status_code == 202, response.text
        assert response.json()["revision"] == 1
        # The new camera serves the assigned package and reports its own telemetry; the agent
        # process is the same and the first camera was never restarted (its counter kept growing).
        wait_for(lambda: watch.grows("yard", 0), 45, what="telemetry from the added camera")
        wait_for(lambda: (c := _cameras(api))["applied_revision"] == 1 and c["in_sync"], 30,
                 what="applied revision 1 reported")
        assert agent.process.poll() is None and agent.process.pid == pid
        assert watch.count("main") > main_before and watch.resets == {}
        listed = wait_for(lambda: (c := _cameras(api))["cameras"][-1]["reported"] and c, 30, what="yard's state")
        yard = listed["cameras"][-1]
        assert yard["name"] == "yard" and yard["applied"] and yard["reported"]["serving_package_id"] == release.package_id
        with Session(control_plane.engine) as session:
            actions = [e.action for e in audit.list_events(session, subject_id=DEVICE)]
        assert "camera.added" in actions

        # Signed, addressed and fresh, but a set the device cannot run: refused whole, reason reported.
        with Session(control_plane.engine) as session:
            device = crud.get_device(session, DEVICE)
            device.command_seq += 1
            seq = device.command_seq
            session.add(device)
            session.commit()
        bad = CameraConfigCommand(
            device_id=DEVICE, job_id="cams-bad", revision=2, seq=seq,
            expires_at=datetime.now(UTC) + timedelta(minutes=5),
            cameras=[CameraSpec(name="main", source="synthetic:1", target_fps=10),
                     CameraSpec(name="main", source="rtsp://admin:hunter2@10.0.0.5/live"),
                     CameraSpec(name="gate", source="synthetic:3", package_id="pkg-elsewhere")])
        counts = {name: watch.count(name) for name in ("main", "yard")}
        assert control_plane.mqtt is not None
        control_plane.mqtt.publish_command(control_plane.security.director.sign(bad))
        refused = wait_for(lambda: (c := _cameras(api))["rejected_revision"] == 2 and c, 30, what="the refusal")
        assert refused["error_code"] == "bad_camera_config"
        for fragment in ("used more than once: 'main'", "literal credentials", "'pkg-elsewhere' is not on this device"):
            assert fragment in refused["error"], refused["error"]
        assert refused["applied_revision"] == 1 and [c["name"] for c in refused["cameras"]] == ["main", "yard"]
        for name, count in counts.items():
            wait_for(lambda name=name, count=count: watch.grows(name, count), 20,
                     what=f"{name} still serving after the refusal")
        assert agent.process.poll() is None and agent.process.pid == pid and watch.resets == {}

        # A changed camera restarts (its counter starts again); the other one does not.
        changed = api.put(f"/api/v1/devices/{DEVICE}/cameras/yard", json={**good, "target_fps": 4})
        assert changed.status_code == 202 and changed.json()["revision"] == 2, changed.text
        wait_for(lambda: watch.resets.get("yard", 0) >= 1, 30, what="the changed camera restarting")
        wait_for(lambda: (c := _cameras(api))["applied_revision"] == 2 and c["rejected_revision"] is None, 30,
                 what="applied revision 2")
        assert "main" not in watch.resets and agent.process.pid == pid
        # A second camera assigned the same package joins the instance serving it: one model for
        # both (named after the package), beside the config file's camera's own.
        package_model = f"package.{release.package_id}"
        gate = {"name": "gate", "source": "synthetic:3", "target_fps": 5, "package_id": release.package_id}
        assert api.post(f"/api/v1/devices/{DEVICE}/cameras", json=gate).status_code == 202
        wait_for(lambda: watch.grows("gate", 0) and watch.shared(["yard", "gate"], package_model, 2), 45,
                 what="the second camera served by the package's shared instance")
        wait_for(lambda: (c := _cameras(api))["applied_revision"] == 3 and c["in_sync"], 30,
                 what="applied revision 3")
        # Removing the config file's camera stops it, and it stays removed across a restart:
        # the config file's cameras are only the initial set.
        assert api.delete(f"/api/v1/devices/{DEVICE}/cameras/main").status_code == 202
        wait_for(lambda: (c := _cameras(api))["applied_revision"] == 4 and c["in_sync"], 30,
                 what="applied revision 4")
        assert [c["name"] for c in _cameras(api)["cameras"]] == ["yard", "gate"] and not _cameras(api)["not_desired"]
        agent = _restart(agent)
        watch.forget()
        wait_for(lambda: watch.grows("yard", 0) and watch.grows("gate", 0), 60,
                 what="the applied set serving after a restart")
        # After the restart the two cameras still share one instance, and it is the only one loaded.
        wait_for(lambda: watch.shared(["yard", "gate"], package_model, 1), 30, what="one shared instance")
        after = wait_for(lambda: (c := _cameras(api))["cameras"][0]["reported"] and c, 30, what="status after restart")
        assert after["applied_revision"] == 4 and after["in_sync"] and not after["not_desired"]
        assert watch.count("main") == -1  # the config file's camera did not come back
    finally:
        watch.stop()
        stop_agents([agent])
