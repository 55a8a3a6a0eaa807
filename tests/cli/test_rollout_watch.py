"""`edgefleet rollout watch` follows a rollout to its end, and its exit code says how it ended."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cloud.cli import app
from cloud.cli.client import Exit
from cloud.security.tables import Role
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
