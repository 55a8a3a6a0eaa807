"""Each camera learns its own baseline: a steady scene unlike the training images stops alarming once an
operator confirms it, and a camera whose scene changes after its baseline still alarms.

Real Mosquitto, a real database and a running control plane; the cameras are the simulated
devices of the drift tests (real device code for the model, windows and reports).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from agent.contract.drift import DEFAULT_WINDOW_FRAMES
from cloud.monitor.tables import DriftWindowRecord
from tests.drift.simdevice import (
    CLEAN,
    DARK_AND_BLURRED,
    SimDevice,
    World,
    colour_release,
    dump,
    installed_device,
)
from tests.support.services import wait_for

pytestmark = pytest.mark.integration


def _stored(plane, device_id: str) -> int:
    with Session(plane.engine) as session:
        return len(list(session.exec(select(DriftWindowRecord.id).where(col(DriftWindowRecord.device_id) == device_id))))


def _run(plane, device: SimDevice, windows: int) -> None:
    before = _stored(plane, device.device_id)
    device.run_windows(windows)
    device.flush()
    wait_for(lambda: _stored(plane, device.device_id) >= before + windows, 60,
             what=f"{windows} more windows of {device.device_id} stored")


def _open_alerts(api, device_id: str) -> list[dict]:
    return api.get("/api/v1/drift/alerts", params={"state": "open", "device_id": device_id}).json()


def test_a_confirmed_camera_baseline_silences_a_steady_scene_and_still_catches_a_change(
        control_plane, api, tmp_path: Path) -> None:
    plane = control_plane
    settings = plane.settings
    needed = settings.monitor.baseline_windows
    package_id = colour_release(plane, tmp_path / "model")

    def camera(device_id: str, seed: int, world: World) -> SimDevice:
        return installed_device(plane, device_id, package_id, world=world, seed=seed,
                                window_frames=DEFAULT_WINDOW_FRAMES)

    # A camera that always films a darker, blurrier scene than the training images, and one that
    # films scenes like them until something changes.
    steady = camera("cam-dim-corner", 1, World(seed=201, shift=DARK_AND_BLURRED))
    changing = camera("cam-door", 2, World(seed=202, shift=CLEAN))
    try:
        refused = api.post("/api/v1/devices/cam-dim-corner/drift/baseline/confirm")
        assert refused.status_code == 409 and "no drift windows" in refused.json()["detail"], refused.text
        _run(plane, steady, needed - 1)
        early = api.post("/api/v1/devices/cam-dim-corner/drift/baseline/confirm")
        assert early.status_code == 409 and f"{needed - 1} of {needed} windows" in early.json()["detail"], early.text
        _run(plane, steady, 2)
        _run(plane, changing, needed + 1)

        # Against the training reference the steady camera alarms: the false alarm a baseline removes.
        assert _open_alerts(api, "cam-dim-corner"), dump(api.get("/api/v1/drift/devices/cam-dim-corner/windows").json())
        assert not _open_alerts(api, "cam-door")
        baselines = api.get("/api/v1/devices/cam-dim-corner/drift/baseline").json()
        assert [(b["state"], b["windows"], b["package_id"]) for b in baselines] == [("proposed", needed, package_id)]

        for device_id in ("cam-dim-corner", "cam-door"):
            confirmed = api.post(f"/api/v1/devices/{device_id}/drift/baseline/confirm")
            assert confirmed.status_code == 200, confirmed.text
            assert confirmed.json()["state"] == "confirmed" and confirmed.json()["confirmed_by"].startswith("operator")
        assert api.post("/api/v1/devices/cam-door/drift/baseline/confirm").status_code == 409  # once
        assert api.post("/api/v1/devices/no-such-cam/drift/baseline/confirm").status_code == 404
        # Confirming says the scene is normal: the steady camera's alert is cleared, with the reason.
        cleared = api.get("/api/v1/drift/alerts", params={"device_id": "cam-dim-corner"}).json()
        assert cleared and all(a["state"] == "cleared" and "baseline confirmed" in a["cleared_reason"]
                               for a in cleared), dump(cleared)

        # From now on each camera is compared with its own baseline.
        _run(plane, steady, 10)
        _run(plane, changing, 3)
        windows = api.get("/api/v1/drift/devices/cam-dim-corner/windows", params={"limit": 10}).json()
        assert all(w["evidence"]["compared_with"] == "camera baseline" for w in windows), dump(windows)
        assert not _open_alerts(api, "cam-dim-corner"), dump(windows)
        assert not _open_alerts(api, "cam-door")

        changing.world.shift = DARK_AND_BLURRED  # someone dims the lights at the door
        _run(plane, changing, 6)
        alerts = _open_alerts(api, "cam-door")
        assert len(alerts) == 1, dump(api.get("/api/v1/drift/devices/cam-door/windows").json())
        assert {f["name"] for f in alerts[0]["evidence"]["features"]} & {"luma_mean", "luma_std",
                                                                          "sharpness_log_lapvar"}
        assert not _open_alerts(api, "cam-dim-corner")
    finally:
        steady.close()
        changing.close()


def test_cli_shows_and_confirms_a_proposed_baseline(control_plane, api) -> None:
    import json

    from typer.testing import CliRunner

    from cloud.cli import app
    from cloud.cli.client import Exit
    from cloud.monitor.tables import DriftBaseline
    from cloud.security.tables import Role
    from tests.ui.helpers import make_token

    assert api.post("/api/v1/devices", json={"id": "cam-cli"}).status_code == 201
    with Session(control_plane.engine) as session:
        session.add(DriftBaseline(device_id="cam-cli", camera="main", package_id="pkg-1", state="proposed", windows=5,
                                  frames=150, k=2.5))
        session.commit()
    runner = CliRunner()
    env = {"EDGEFLEET_SERVER": control_plane.base_url, "COLUMNS": "200"}
    viewer = {**env, "EDGEFLEET_TOKEN": make_token(control_plane, Role.VIEWER)}
    operator = {**env, "EDGEFLEET_TOKEN": make_token(control_plane, Role.OPERATOR)}
    shown = runner.invoke(app, ["drift", "baseline", "show", "cam-cli"], env=viewer)
    assert shown.exit_code == 0 and "proposed" in shown.stdout and "5/" in shown.stdout, shown.output
    assert runner.invoke(app, ["drift", "baseline", "confirm", "cam-cli"], env=viewer).exit_code == Exit.AUTH
    wrong = runner.invoke(app, ["drift", "baseline", "confirm", "cam-cli", "--camera", "side"], env=operator)
    assert wrong.exit_code != 0 and "no drift windows" in wrong.stderr, wrong.output
    confirmed = runner.invoke(app, ["drift", "baseline", "confirm", "cam-cli", "--json"], env=operator)
    assert confirmed.exit_code == 0, confirmed.output
    assert json.loads(confirmed.stdout)["state"] == "confirmed"
    assert json.loads(runner.invoke(app, ["drift", "baseline", "show", "cam-cli", "--json"], env=viewer).stdout)[0][
        "confirmed_by"].startswith("operator:")
