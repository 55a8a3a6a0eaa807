"""`edgefleet rollout watch` follows a rollout to its end, and its exit code says how it ended."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.cli import app
from cloud.cli.client import Exit
from cloud.security.tables import Role
from tests.support.services import wait_for
from tests.ui.helpers import Fleet, make_token

pytestmark = pytest.mark.integration

FAST_GATES = {"min_frames": 20, "min_latency_windows": 1, "probation_min_windows": 1, "gate_wait_s": 600,
              "control_window_s": 120}


@pytest.fixture
def fleet(control_plane, api, tmp_path: Path):
    simulated = Fleet(control_plane, api, tmp_path / "releases")
    try:
        yield simulated
    finally:
        simulated.stop()


def test_watch_exits_zero_when_the_rollout_completes(control_plane, api, fleet) -> None:
    created = api.post("/api/v1/rollouts", json={
        "name": "watched", "release": {"package_id": fleet.v2.package_id}, "target": {"all_devices": True},
        "stages": [{"count": 2}, {"percent": 100}], "soak_s": 1, "gates": FAST_GATES})
    assert created.status_code == 201, created.text
    env = {"EDGEFLEET_SERVER": control_plane.base_url, "EDGEFLEET_TOKEN": make_token(control_plane, Role.VIEWER)}
    result = CliRunner().invoke(app, ["rollout", "watch", created.json()["id"], "--interval", "0.5", "--timeout",
                                      "240", "--json"], env=env)
    assert result.exit_code == Exit.OK, result.output
    final = json.loads(result.stdout)
    assert final["state"] == "completed"
    assert {d["running_model_version"] for d in api.get("/api/v1/devices").json()} == {fleet.v2.model_version}


def test_watch_exits_one_when_the_rollout_is_aborted(control_plane, api, fleet) -> None:
    created = api.post("/api/v1/rollouts", json={
        "name": "to abort", "release": {"package_id": fleet.v2.package_id}, "target": {"all_devices": True},
        "stages": [{"count": 2, "require_approval": True}, {"percent": 100}], "soak_s": 1, "gates": FAST_GATES})
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    assert api.post(f"/api/v1/rollouts/{rollout_id}/abort").status_code == 200
    env = {"EDGEFLEET_SERVER": control_plane.base_url, "EDGEFLEET_TOKEN": make_token(control_plane, Role.VIEWER)}
    result = CliRunner().invoke(app, ["rollout", "watch", rollout_id, "--interval", "0.5", "--timeout", "240"],
                                env=env)
    assert result.exit_code == Exit.FAILED, result.output
    assert "operator_abort" in result.output and f"rollout {rollout_id}: aborted" in result.output


def test_plan_show_and_watch_number_stages_alike_and_watch_says_how_to_approve(control_plane, api, fleet,
                                                                               tmp_path: Path) -> None:
    spec = {"name": "approved", "release": {"package_id": fleet.v2.package_id}, "target": {"all_devices": True},
            "stages": [{"count": 2, "require_approval": True}, {"percent": 100}], "soak_s": 1, "gates": FAST_GATES}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))  # JSON is YAML
    env = {"EDGEFLEET_SERVER": control_plane.base_url, "EDGEFLEET_TOKEN": make_token(control_plane, Role.OPERATOR),
           "COLUMNS": "200"}
    runner = CliRunner()
    planned = runner.invoke(app, ["rollout", "plan", str(spec_path)], env=env)
    assert planned.exit_code == Exit.OK, planned.output
    stage_cells = [line.split()[1] for line in planned.output.splitlines() if line.startswith("│")]
    assert stage_cells == ["1", "2"], planned.output

    created = api.post("/api/v1/rollouts", json=spec)
    assert created.status_code == 201, created.text
    rollout_id = created.json()["id"]
    wait_for(lambda: api.get(f"/api/v1/rollouts/{rollout_id}").json()["state"] == "awaiting_approval", 120,
             what="the first stage to wait for approval")

    # Nobody approves: watch names the stage and the command that continues, then gives up at its timeout.
    waiting = runner.invoke(app, ["rollout", "watch", rollout_id, "--interval", "0.5", "--timeout", "1"], env=env)
    assert waiting.exit_code == Exit.TIMEOUT, waiting.output
    hint = f"waiting for approval: run `edgefleet rollout approve {rollout_id}`"
    assert f"stage 1: {hint}" in waiting.output, waiting.output
    assert "stage 1: await_approval" in waiting.output and "stage 1 passed; it requires approval" in waiting.output

    shown = runner.invoke(app, ["rollout", "show", rollout_id], env=env)
    assert shown.exit_code == Exit.OK, shown.output
    assert f"{rollout_id} approved: awaiting_approval, stage 1/2" in shown.output, shown.output
    assert "stage 1 await_approval" in shown.output and "stage 1 passed; it requires approval" in shown.output
    assert "stage 0" not in shown.output + waiting.output + planned.output

    approved = runner.invoke(app, ["rollout", "approve", rollout_id], env=env)
    assert approved.exit_code == Exit.OK, approved.output
    finished = runner.invoke(app, ["rollout", "watch", rollout_id, "--interval", "0.5", "--timeout", "240"], env=env)
    assert finished.exit_code == Exit.OK, finished.output
    assert f"rollout {rollout_id}: completed" in finished.output
