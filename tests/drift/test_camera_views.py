"""Drift is per camera: two cameras of one device keep their own windows, samples, sequential test and
alert, and the drift API and CLI show each camera under its device.

Real Mosquitto, a real database and a running control plane; the two cameras are the simulated
devices of the drift tests (real device code for the model, windows and samples) sharing one
device id, each naming its pipeline as an agent running two cameras does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from typer.testing import CliRunner

from agent.contract.drift import DEFAULT_WINDOW_FRAMES
from cloud.cli import app
from cloud.monitor.tables import DriftWindowRecord, SampleRecord
from cloud.security.tables import Role
from tests.drift.simdevice import (
    CLEAN,
    DARK_AND_BLURRED,
    SimDevice,
    World,
    colour_release,
    dump,
    installed_device,
    register_device,
)
from tests.support.services import wait_for
from tests.ui.helpers import make_token

pytestmark = pytest.mark.integration

DEVICE = "cam-two"


def _stored(plane, camera: str) -> int:
    with Session(plane.engine) as session:
        return len(list(session.exec(select(DriftWindowRecord.id).where(
            col(DriftWindowRecord.device_id) == DEVICE, col(DriftWindowRecord.camera) == camera))))


def test_two_cameras_of_one_device_drift_apart_and_are_shown_apart(control_plane, api, tmp_path: Path) -> None:
    plane = control_plane
    settings = plane.settings
    package_id = colour_release(plane, tmp_path / "model")
    token = register_device(plane, DEVICE)

    def camera(name: str, seed: int, world: World) -> SimDevice:
        return installed_device(plane, DEVICE, package_id, world=world, seed=seed,
                                window_frames=DEFAULT_WINDOW_FRAMES, token=token, pipeline=name)

    # One camera films a dim, blurred yard all day; the other a door lit like the training images.
    yard = camera("yard", 1, World(seed=301, shift=DARK_AND_BLURRED))
    door = camera("door", 2, World(seed=302, shift=CLEAN))
    windows = settings.monitor.baseline_windows + 1
    try:
        for name, device in (("yard", yard), ("door", door)):
            device.run_windows(windows)
            device.flush()
            wait_for(lambda name=name: _stored(plane, name) >= windows, 60, what=f"{windows} windows of {name} stored")
    finally:
        yard.close()
        door.close()

    # Stored per camera end to end: windows, samples and the alert name their camera.
    with Session(plane.engine) as session:
        cameras_of_samples = set(session.exec(select(SampleRecord.camera).where(col(SampleRecord.device_id) == DEVICE)))
    assert cameras_of_samples == {"yard", "door"}, cameras_of_samples
    alerts = api.get("/api/v1/drift/alerts", params={"state": "open", "device_id": DEVICE}).json()
    # Only the yard's own test alarmed: the door's clean windows neither share its statistic nor its alert.
    assert [a["camera"] for a in alerts] == ["yard"], dump(alerts)
    yard_windows = api.get(f"/api/v1/drift/devices/{DEVICE}/windows", params={"camera": "yard"}).json()
    assert len(yard_windows) == windows and {w["camera"] for w in yard_windows} == {"yard"}

    rows = api.get("/api/v1/drift/devices").json()
    row = next(r for r in rows if r["device_id"] == DEVICE)
    assert row["state"] == "alert" and row["open_alerts"] == 1
    by_camera = {c["camera"]: c for c in row["cameras"]}
    assert sorted(by_camera) == ["door", "yard"], dump(row)
    assert by_camera["yard"]["state"] == "alert" and by_camera["yard"]["alert_ids"] == [alerts[0]["id"]]
    assert by_camera["door"]["state"] != "alert" and by_camera["door"]["open_alerts"] == 0, dump(row)
    for shown in by_camera.values():
        assert shown["last_window_tested"] is True and shown["package_id"] == package_id
        assert shown["baseline"] == ["proposed"]  # each camera learnt its own scene from its own windows
    assert by_camera["yard"]["last_window_score"] > by_camera["door"]["last_window_score"]

    runner = CliRunner()
    env = {"EDGEFLEET_SERVER": plane.base_url, "EDGEFLEET_TOKEN": make_token(plane, Role.VIEWER), "COLUMNS": "200"}
    listed = runner.invoke(app, ["drift", "devices", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    cli_row = next(r for r in json.loads(listed.stdout) if r["device_id"] == DEVICE)
    assert [(c["camera"], c["state"]) for c in cli_row["cameras"]] == [(c, by_camera[c]["state"]) for c in
                                                                       ("door", "yard")]
    text = runner.invoke(app, ["drift", "devices"], env=env)
    assert text.exit_code == 0 and f"{DEVICE} / yard" in text.stdout and f"{DEVICE} / door" in text.stdout, text.output
