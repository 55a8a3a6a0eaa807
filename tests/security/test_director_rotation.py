"""Director key rotation through the root of trust, with a device that stays enrolled.

A real agent enrolled before the rotation installs a package commanded with the new
key (it learns the key from a root update it verifies against the root it already
trusts) and refuses a command signed with the old key afterwards.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session
from typer.testing import CliRunner

from agent.contract import DeployCommand
from agent.contract.signing import command_signing_bytes
from cloud.cli import app
from cloud.fleet.tables import Device
from cloud.security.keys import load_private_key
from tests.conftest import control_plane_admin_headers
from tests.security.test_commands import Observer
from tests.support.fleet import publish_model, start_agent, stop_agents
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


def _deploy(api: httpx.Client, package_id: str, device_id: str) -> dict[str, Any]:
    response = api.post("/api/v1/deployments", json={"package_id": package_id, "device_ids": [device_id]})
    assert response.status_code == 201, response.text
    deployment_id = response.json()["id"]
    return wait_for(lambda: (d := api.get(f"/api/v1/deployments/{deployment_id}").json())["state"] != "in_progress"
                    and d, 120, what=f"deployment of {package_id}")


def test_director_key_rotation_keeps_devices_enrolled(control_plane, trained_model: Any, mqtt_url: str,
                                                      tmp_path: Path) -> None:
    plane = control_plane
    v1, v2 = publish_model(plane, trained_model), publish_model(plane, trained_model)
    env = {"EDGEFLEET_DATA_DIR": str(plane.settings.data_dir), "EDGEFLEET_DATABASE_URL": plane.settings.resolved_database_url}
    observer = Observer(mqtt_url, plane.settings.topic_prefix)
    with httpx.Client(base_url=plane.base_url, timeout=30, headers=control_plane_admin_headers(plane)) as api:
        agent = start_agent(plane, tmp_path, "cam-rot")
        try:
            wait_for(lambda: api.get("/api/v1/devices/cam-rot").json()["online"], 60, what="agent online")
            assert _deploy(api, v1.package_id, "cam-rot")["state"] == "succeeded"
            old_key = load_private_key(plane.security.director.path)
            assert isinstance(old_key, Ed25519PrivateKey)
            root_before = plane.security.tuf.root().version

            rotated = CliRunner().invoke(app, ["keys", "rotate-director"], env=env)
            assert rotated.exit_code == 0, rotated.output
            assert plane.security.tuf.root().version == root_before + 1

            # Signed with the new key: the device has never seen it, refreshes root, and installs.
            outcome = _deploy(api, v2.package_id, "cam-rot")
            assert outcome["state"] == "succeeded", outcome
            wait_for(lambda: api.get("/api/v1/devices/cam-rot").json()["running_model_version"] == v2.model_version,
                     30, what="v2 running after the rotation")

            # The old key no longer commands the device.
            with Session(plane.engine) as session:
                device = session.get(Device, "cam-rot")
                assert device is not None
                next_seq = device.command_seq + 1
            forged = DeployCommand(device_id="cam-rot", job_id=f"job-old-key-{uuid.uuid4().hex[:6]}",
                                   package_id=v1.package_id, model_version=v1.model_version,
                                   manifest_url=f"{plane.base_url}/tuf/targets/x", manifest_sha256="0" * 64,
                                   seq=next_seq, expires_at=datetime.now(UTC) + timedelta(hours=1))
            signature = base64.b64encode(old_key.sign(command_signing_bytes(forged))).decode()
            observer.client.publish(plane.topics.commands("cam-rot"),
                                    forged.model_copy(update={"signature": signature}).to_bytes(), qos=1)
            report = wait_for(lambda: observer.final_job(forged.job_id), 60, what="the old-key command's refusal")
            assert report["state"] == "rejected" and report["error_code"] == "bad_signature", report
            assert api.get("/api/v1/devices/cam-rot").json()["running_model_version"] == v2.model_version
        finally:
            stop_agents([agent])
            observer.stop()
