"""Cameras changed from the CLI (`edgefleet camera add|set|remove|list`) and the dashboard's device
page: checked input with what to fix, revisions, audit, exit codes, CSRF."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_plus

import httpx
import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from agent.contract import CameraSetStatus, DeviceState, StatusReport
from cloud.cli import app
from cloud.cli.client import Exit
from cloud.fleet import crud
from cloud.fleet.camera_tables import DeviceCameraSet
from cloud.governance import audit
from cloud.security.tables import Role
from tests.ui.helpers import dashboard_login, make_token, page_csrf

pytestmark = pytest.mark.integration


def _text(output: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(output.split())


def test_camera_commands_change_the_desired_set_and_refuse_what_cannot_run(control_plane, api) -> None:
    runner = CliRunner()
    assert api.post("/api/v1/devices", json={"id": "cam-cli"}).status_code == 201
    operator = {"EDGEFLEET_SERVER": control_plane.base_url, "EDGEFLEET_TOKEN": make_token(control_plane, Role.OPERATOR)}
    viewer = {**operator, "EDGEFLEET_TOKEN": make_token(control_plane, Role.VIEWER)}
    device = ["--device", "cam-cli"]

    literal = runner.invoke(app, ["camera", "add", "door", *device, "--source", "rtsp://admin:pw@10.0.0.5/s"],
                            env=operator)
    assert literal.exit_code == Exit.BAD_INPUT and "{secret:NAME}" in _text(literal.output), literal.output
    region = runner.invoke(app, ["camera", "add", "door", *device, "--source", "synthetic:1", "--region", "0.5,0,0.7,1"],
                           env=operator)
    assert region.exit_code == Exit.BAD_INPUT and "inside the frame" in _text(region.output), region.output
    assert runner.invoke(app, ["camera", "add", "door", *device, "--source", "synthetic:1"],
                         env=viewer).exit_code == Exit.AUTH

    added = runner.invoke(app, ["camera", "add", "door", *device, "--source", "rtsp://{secret:door}@10.0.0.5:554/s",
                                "--transport", "udp", "--fps", "4", "--json"], env=operator)
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["revision"] == 1
    assert runner.invoke(app, ["camera", "add", "yard", *device, "--source", "synthetic:2", "--fps", "3"],
                         env=operator).exit_code == 0
    changed = runner.invoke(app, ["camera", "set", "yard", *device, "--source", "synthetic:3", "--region",
                                  "0,0,0.5,0.5"], env=operator)
    assert changed.exit_code == 0 and "revision 3" in _text(changed.output), changed.output
    assert runner.invoke(app, ["camera", "set", "nope", *device, "--fps", "1"], env=operator).exit_code == Exit.NOT_FOUND
    assert runner.invoke(app, ["camera", "remove", "door", *device], env=operator).exit_code == 0
    last = runner.invoke(app, ["camera", "remove", "yard", *device], env=operator)
    assert last.exit_code == Exit.BAD_INPUT and "is the last camera" in _text(last.output), last.output
    assert runner.invoke(app, ["camera", "remove", "gone", *device], env=operator).exit_code == Exit.NOT_FOUND

    listed = runner.invoke(app, ["camera", "list", *device, "--json"], env=viewer)
    assert listed.exit_code == 0, listed.output
    cameras = json.loads(listed.stdout)
    assert cameras["desired_revision"] == 4 and cameras["applied_revision"] is None and not cameras["in_sync"]
    # `set` changed the source and the region; the settings it was not given stayed (fps 3 from `add`).
    assert [(c["name"], c["source"], c["region"], c["target_fps"]) for c in cameras["cameras"]] == [
        ("yard", "synthetic:3", {"x": 0.0, "y": 0.0, "width": 0.5, "height": 0.5}, 3.0)]
    table = runner.invoke(app, ["camera", "list", *device], env=viewer)
    assert table.exit_code == 0 and "desired revision 4, applied -" in _text(table.stdout), table.output
    assert "yard" in table.stdout and "synthetic" in table.stdout
    with Session(control_plane.engine) as session:
        actions = [e.action for e in audit.list_events(session, subject_id="cam-cli")]
    assert actions == ["camera.added", "camera.added", "camera.changed", "camera.removed"]

    # The device comes online still on its config file's cameras after the last command expired:
    # the control plane sends the desired set again, once, with a new seq.
    with Session(control_plane.engine) as session:
        row = session.get(DeviceCameraSet, "cam-cli")
        assert row is not None and row.last_job_id is not None
        expired_job, row.sent_at = row.last_job_id, datetime.now(UTC) - timedelta(days=2)
        session.add(row)
        session.commit()
        seq_before = crud.get_device(session, "cam-cli").command_seq
    status = StatusReport(device_id="cam-cli", state=DeviceState.ONLINE,
                          cameras=CameraSetStatus(applied_revision=0, cameras=[]))
    topic = control_plane.topics.status("cam-cli")
    control_plane.ingest.handle(topic, status.to_bytes())  # stored synchronously, listeners included
    control_plane.ingest.handle(topic, status.model_copy(update={"message_id": "second-status"}).to_bytes())
    with Session(control_plane.engine) as session:
        row = session.get(DeviceCameraSet, "cam-cli")
        assert row is not None and row.last_job_id != expired_job and row.applied_revision == 0
        assert crud.get_device(session, "cam-cli").command_seq == seq_before + 1  # the second status found it in flight


def _flash(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    return unquote_plus(response.headers["location"])


def test_device_page_lists_cameras_and_adds_and_removes_them(control_plane, api) -> None:
    assert api.post("/api/v1/devices", json={"id": "cam-ui"}).status_code == 201
    assert api.post("/api/v1/devices/cam-ui/cameras", json={"name": "door", "source": "synthetic:1"}).status_code == 202
    page = "/ui/devices/cam-ui"
    with httpx.Client(base_url=control_plane.base_url, timeout=15) as client:
        assert dashboard_login(client, make_token(control_plane, Role.OPERATOR), page).status_code == 303
        html = client.get(page).text
        assert 'id="h-cameras"' in html and 'data-camera="door"' in html and "Desired revision 1" in html
        csrf = page_csrf(client, page)
        stale = client.post(f"{page}/cameras", data={"csrf": "stale", "name": "yard", "source": "synthetic:2"})
        assert "reload the page" in _flash(stale)
        literal = client.post(f"{page}/cameras", data={"csrf": csrf, "name": "yard", "target_fps": "5",
                                                       "source": "rtsp://admin:pw@10.0.0.5/s", "rtsp_transport": "tcp"})
        assert "camera not added" in _flash(literal) and "{secret:NAME}" in _flash(literal)
        region = client.post(f"{page}/cameras", data={"csrf": csrf, "name": "yard", "source": "synthetic:2",
                                                      "region": "0,0,1"})
        assert "x,y,width,height" in _flash(region)
        added = client.post(f"{page}/cameras", data={"csrf": csrf, "name": "yard", "source": "synthetic:2",
                                                     "target_fps": "2", "region": "0.5, 0, 0.5, 1", "rtsp_transport": "udp"})
        assert "revision 2" in _flash(added)
        assert 'data-camera="yard"' in client.get(page).text
        confirm = client.post(f"{page}/cameras/door/remove", data={"csrf": csrf})
        assert confirm.status_code == 200 and "camera door of cam-ui" in confirm.text
        removed = client.post(f"{page}/cameras/door/remove", data={"csrf": csrf, "confirm": "yes"})
        assert "revision 3" in _flash(removed)
    listed = api.get("/api/v1/devices/cam-ui/cameras").json()
    assert [(c["name"], c["rtsp_transport"], c["region"]["x"]) for c in listed["cameras"]] == [("yard", "udp", 0.5)]


def test_camera_section_shows_refusals_and_cameras_being_removed() -> None:
    from cloud.dashboard.auth import DashboardUser
    from cloud.dashboard.routes import templates
    from cloud.security.tokens import Principal

    user = DashboardUser("ops", Role.OPERATOR, Principal(Role.OPERATOR, "ops"), csrf="c" * 32)
    reported = {"state": "streaming", "error_code": None, "frames_processed": 120, "serving_package_id": "p-1"}
    cameras = {"device_id": "d1", "desired_revision": 3, "applied_revision": 2, "in_sync": False,
               "rejected_revision": 3, "error_code": "bad_camera_config",
               "error": "camera 'gate': package 'p-9' is not on this device", "reported_at": None,
               "cameras": [{"name": "door", "source": "rtsp://{secret:door}@10.0.0.5/s", "target_fps": 5.0,
                            "region": {"x": 0.25, "y": 0.0, "width": 0.5, "height": 1.0}, "package_id": "p-1",
                            "rtsp_transport": "udp", "reported": reported, "applied": True}],
               "not_desired": [{"name": "old", "source": "synthetic:1", "target_fps": 5.0, "region": None,
                                "package_id": None, "rtsp_transport": "tcp", "reported": reported, "applied": False}]}
    html = templates.get_template("_device_cameras.html").render(
        user=user, device={"id": "d1"}, cameras=cameras, now=datetime.now(UTC))
    text = " ".join(html.split())
    assert "applied rev 2" in text and "refused revision 3 (bad_camera_config)" in text
    assert "'p-9' is not on this device" in html.replace("&#39;", "'")
    assert "old (being removed)" in text and "0.25, 0.00, 0.50 \u00d7 1.00" in text
    assert 'name="csrf" value="' + "c" * 32 in html
