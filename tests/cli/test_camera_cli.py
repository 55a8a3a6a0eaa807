"""`edgefleet camera add|set|remove|list` over HTTP: checked input, revisions, audit, exit codes."""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from cloud.cli import app
from cloud.cli.client import Exit
from cloud.governance import audit
from cloud.security.tables import Role
from tests.ui.helpers import make_token

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
    assert runner.invoke(app, ["camera", "add", "yard", *device, "--source", "synthetic:2"], env=operator).exit_code == 0
    changed = runner.invoke(app, ["camera", "set", "yard", *device, "--source", "synthetic:3", "--region",
                                  "0,0,0.5,0.5"], env=operator)
    assert changed.exit_code == 0 and "revision 3" in _text(changed.output), changed.output
    assert runner.invoke(app, ["camera", "remove", "door", *device], env=operator).exit_code == 0
    last = runner.invoke(app, ["camera", "remove", "yard", *device], env=operator)
    assert last.exit_code == Exit.BAD_INPUT and "is the last camera" in _text(last.output), last.output
    assert runner.invoke(app, ["camera", "remove", "gone", *device], env=operator).exit_code == Exit.NOT_FOUND

    listed = runner.invoke(app, ["camera", "list", *device, "--json"], env=viewer)
    assert listed.exit_code == 0, listed.output
    cameras = json.loads(listed.stdout)
    assert cameras["desired_revision"] == 4 and cameras["applied_revision"] is None and not cameras["in_sync"]
    assert [(c["name"], c["source"], c["region"]) for c in cameras["cameras"]] == [
        ("yard", "synthetic:3", {"x": 0.0, "y": 0.0, "width": 0.5, "height": 0.5})]
    table = runner.invoke(app, ["camera", "list", *device], env=viewer)
    assert table.exit_code == 0 and "desired revision 4, applied -" in _text(table.stdout), table.output
    assert "yard" in table.stdout and "synthetic" in table.stdout
    with Session(control_plane.engine) as session:
        actions = [e.action for e in audit.list_events(session, subject_id="cam-cli")]
    assert actions == ["camera.added", "camera.added", "camera.changed", "camera.removed"]
