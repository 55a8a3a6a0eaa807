"""The loop end to end on the real broker and database, with real agent processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from cloud.fleet import crud
from tests.support.fleet import publish_model, start_agent, stop_agents
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


def _register(api, device_ids: list[str]) -> None:
    for device_id in device_ids:
        assert api.post("/api/v1/devices", json={"id": device_id, "hardware_profile": "x86-64-avx2"}).status_code == 201


def test_three_agents_install_and_report_the_new_version(control_plane, api, trained_model, tmp_path: Path) -> None:
    release = publish_model(control_plane, trained_model)
    device_ids = ["cam-a", "cam-b", "cam-c"]
    _register(api, device_ids)
    agents = [start_agent(control_plane, tmp_path, d) for d in device_ids]
    try:
        wait_for(lambda: all(d["online"] for d in api.get("/api/v1/devices").json()), 60, what="agents online")
        response = api.post("/api/v1/deployments", json={"package_id": release.package_id, "device_ids": device_ids})
        assert response.status_code == 201, response.text
        deployment_id = response.json()["id"]
        wait_for(lambda: api.get(f"/api/v1/deployments/{deployment_id}").json()["state"] == "succeeded", 90,
                 what="deployment to succeed")

        def all_reporting() -> bool:
            with Session(control_plane.engine) as session:
                return crud.devices_reporting(session, release.model_version) == 3

        wait_for(all_reporting, 60, what="telemetry for the new version from all 3 devices")
        for device_id in device_ids:
            device = api.get(f"/api/v1/devices/{device_id}").json()
            assert device["running_model_version"] == release.model_version
            windows = api.get(f"/api/v1/devices/{device_id}/telemetry").json()
            served = [w for w in windows if w["model_version"] == release.model_version and w["frames"] > 0]
            assert served and served[0]["p95_latency_ms"] is not None
            assert sum(served[0]["class_counts"].values()) == served[0]["frames"]
    finally:
        stop_agents(agents)
    # A clean stop publishes the retained offline status.
    wait_for(lambda: not any(d["online"] for d in api.get("/api/v1/devices").json()), 30, what="agents offline")


def _running_version(api, device_id: str) -> str | None:
    return api.get(f"/api/v1/devices/{device_id}").json()["running_model_version"]


def _deploy_and_wait(api, package_id: str, device_ids: list[str]) -> dict:
    response = api.post("/api/v1/deployments", json={"package_id": package_id, "device_ids": device_ids})
    assert response.status_code == 201, response.text
    deployment_id = response.json()["id"]
    return wait_for(
        lambda: (d := api.get(f"/api/v1/deployments/{deployment_id}").json())["state"] != "in_progress" and d,
        90, what="deployment to finish",
    )


def test_tampered_package_is_refused_and_old_model_keeps_running(control_plane, api, trained_model,
                                                                  tmp_path: Path) -> None:
    good = publish_model(control_plane, trained_model)
    bad = publish_model(control_plane, trained_model, name="tampered")
    # Flip one byte of the served model file after the manifest pinned its hash.
    model_file = Path(crud_package_path(control_plane, bad.package_id)) / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))

    _register(api, ["cam-t"])
    agent = start_agent(control_plane, tmp_path, "cam-t")
    try:
        wait_for(lambda: api.get("/api/v1/devices/cam-t").json()["online"], 60, what="agent online")
        assert _deploy_and_wait(api, good.package_id, ["cam-t"])["state"] == "succeeded"
        wait_for(lambda: _running_version(api, "cam-t") == good.model_version, 30, what="good version running")

        outcome = _deploy_and_wait(api, bad.package_id, ["cam-t"])
        assert outcome["state"] == "failed"
        job = outcome["jobs"][0]
        assert job["error_code"] == "digest_mismatch"
        assert "model.onnx" in job["error"] and "sha256" in job["error"]
        wait_for(lambda: "digest_mismatch" in agent.log, 10, what="the refusal in the agent log")
        # The old model keeps serving: fresh telemetry windows still carry the good version.
        before = len(api.get("/api/v1/devices/cam-t/telemetry").json())
        wait_for(lambda: len(api.get("/api/v1/devices/cam-t/telemetry").json()) > before + 1, 30,
                 what="telemetry after the refusal")
        newest = api.get("/api/v1/devices/cam-t/telemetry", params={"limit": 1}).json()[0]
        assert newest["model_version"] == good.model_version and newest["frames"] > 0
        assert _running_version(api, "cam-t") == good.model_version
    finally:
        stop_agents([agent])


def crud_package_path(plane, package_id: str) -> str:
    with Session(plane.engine) as session:
        return crud.get_package(session, package_id).path
