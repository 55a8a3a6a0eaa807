"""The rollout API and CLI show each device of a stage with its cameras beneath it, each camera with
the model it runs and its own figures, from telemetry published as an agent with two cameras sends it.

Real Mosquitto and PostgreSQL, a running control plane; reports go through the real ingest path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from cloud.cli import app
from cloud.fleet.tables import TelemetryRecord
from cloud.security.tables import Role
from tests.support.services import wait_for
from tests.ui.helpers import make_release, make_token, publish_camera_windows

pytestmark = pytest.mark.integration

DEVICE = "edge-cams"


def _cameras_stored(plane) -> list[str | None]:
    with Session(plane.engine) as session:
        return list(session.exec(select(TelemetryRecord.camera).where(col(TelemetryRecord.device_id) == DEVICE)))


def _check_cameras(cameras: list[dict[str, Any]], model_version: str, package_id: str) -> None:
    by_name = {c["camera"]: c for c in cameras}
    assert [c["camera"] for c in cameras] == ["dock", "gate"]
    dock, gate = by_name["dock"], by_name["gate"]
    for camera in (dock, gate):
        assert camera["model_version"] == model_version and camera["package_id"] == package_id
    # gate: a classifying camera, two windows of 20 and 21 frames over 4 s, one error in each.
    assert (gate["windows"], gate["frames"], gate["errors"], gate["fps"]) == (2, 41, 2, 10.25)
    assert gate["error_rate"] == round(2 / 43, 4) and gate["mean_confidence"] == 0.9
    assert gate["median_p95_latency_ms"] == 6.0 and gate["capture_to_result_p95_ms"] == 13.0
    assert gate["stale_frames_dropped"] == 8  # its newest window's cumulative count
    assert gate["class_counts"] == {"circle": 41} and "object_counts" not in gate
    # dock: a detecting camera, objects per class over its three windows.
    assert (dock["windows"], dock["frames"], dock["errors"]) == (3, 33, 0)
    assert dock["object_counts"] == {"car": 33, "person": 66} and dock["boxes"] == 99
    assert dock["mean_box_score"] == 0.8 and dock["capture_to_result_p95_ms"] == 12.0
    assert dock["stale_frames_dropped"] == 2


def test_rollout_api_and_cli_show_cameras_under_their_device(control_plane, api, tmp_path: Path) -> None:
    plane = control_plane
    assert api.post("/api/v1/devices", json={"id": DEVICE, "hardware_profile": "x86-64-avx2"}).status_code == 201
    assert api.post("/api/v1/devices", json={"id": "edge-quiet", "hardware_profile": "x86-64-avx2"}).status_code == 201
    release = make_release(plane, tmp_path / "release")
    created = api.post("/api/v1/rollouts", json={
        "name": "cameras", "release": {"package_id": release.package_id},
        "target": {"device_ids": [DEVICE, "edge-quiet"]}, "stages": [{"percent": 100}], "soak_s": 3600})
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]

    publish_camera_windows(plane, DEVICE, package_id=release.package_id, model_version=release.model_version,
                           windows={"dock": 3, "gate": 2}, detecting=frozenset({"dock"}))
    wait_for(lambda: len(_cameras_stored(plane)) >= 5, 20, what="five camera windows stored")
    assert sorted(c or "" for c in _cameras_stored(plane)) == ["dock"] * 3 + ["gate"] * 2

    detail = api.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert [s["stage"] for s in detail["stage_devices"]] == [0]
    devices = {d["device_id"]: d for d in detail["stage_devices"][0]["devices"]}
    assert sorted(devices) == [DEVICE, "edge-quiet"]
    assert devices["edge-quiet"]["cameras"] == []  # no camera reported: nothing invented
    _check_cameras(devices[DEVICE]["cameras"], release.model_version, release.package_id)

    # A poller that follows only the state asks without the figures.
    assert "stage_devices" not in api.get(f"/api/v1/rollouts/{rollout_id}", params={"cameras": "false"}).json()

    listed = {d["device_id"]: d for d in api.get(f"/api/v1/rollouts/{rollout_id}/devices").json()}
    _check_cameras(listed[DEVICE]["cameras"], release.model_version, release.package_id)

    runner = CliRunner()
    env = {"EDGEFLEET_SERVER": plane.base_url, "EDGEFLEET_TOKEN": make_token(plane, Role.VIEWER), "COLUMNS": "220"}
    shown = runner.invoke(app, ["rollout", "show", rollout_id, "--json"], env=env)
    assert shown.exit_code == 0, shown.output
    cli_devices = {d["device_id"]: d for d in json.loads(shown.stdout)["stage_devices"][0]["devices"]}
    _check_cameras(cli_devices[DEVICE]["cameras"], release.model_version, release.package_id)
    text = runner.invoke(app, ["rollout", "show", rollout_id], env=env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    device_line = next(i for i, line in enumerate(lines) if f" {DEVICE} " in line)
    # The cameras are listed beneath their device, each with its own figures.
    assert "dock" in lines[device_line + 1] and "99 boxes" in lines[device_line + 1], text.stdout
    assert "gate" in lines[device_line + 2] and "0.90" in lines[device_line + 2], text.stdout
