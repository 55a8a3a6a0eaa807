"""Issue 2: the loop end to end on the real broker and database, with real agent processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session

from cloud import crud
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
